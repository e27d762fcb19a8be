"""Write random and mutated frames to a network interface with an AF_PACKET
socket: from inside a pasta namespace, every frame written to its tap goes
to passt-sep's worker, as if the guest had sent it.

    python fuzz/flood.py IFNAME COUNT SEED

The frames are deterministic for a seed: one in ten is random bytes, the
others are mutations (``common.mutate``, with every target's dictionary)
of valid frames of every kind the guest sends (``common.frames()``: ARP,
IPv4 and IPv6 TCP, UDP, ICMP, NDP, DHCP, DHCPv6), from the interface's own
MAC address; all from 14 to 1514 bytes long, what any Ethernet device
takes (the kernel refuses the others before they reach the tap).

The tap's queue holds about a thousand frames and drops the rest without a
trace, and the worker reads slower than this writes: after every ``BATCH``
frames comes a probe, an ARP request for an address of its own, and the
next batch waits for the worker's answer.  So every frame reaches the
worker, in order, and a worker that stops answering is noticed at once:
then this prints ``worker stopped answering after N frames`` and exits 1.
Else it prints one line: ``sent N frames in B batches, S s`` (and how
many the kernel refused, if it did: it should not).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import time
from collections.abc import Iterator

if __package__ in (None, ""):  # run as a script: python fuzz/flood.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from fuzz.targets import TARGETS, load  # noqa: E402

RANDOM_SHARE = 0.1
ETH_HLEN, ETH_MAX = 14, 1514
BATCH = 500               # well under the tap's queue (1000 frames)
PROBE_TIMEOUT = 20.0
ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
_ARP = struct.Struct("!HHBBH6s4s6s4s")


def base_frames(mac: bytes) -> list[bytes]:
    """Every valid seed frame, sent from ``mac``."""
    return [frame[:6] + mac + frame[12:] for frame in common.frames().values()]


def dictionary() -> list[bytes]:
    tokens: set[bytes] = set()
    for name in TARGETS:
        tokens.update(load(name).DICTIONARY)
    return sorted(tokens)


def frames(count: int, seed: int, mac: bytes) -> Iterator[bytes]:
    rng = random.Random(seed)
    bases, tokens = base_frames(mac), dictionary()
    for _ in range(count):
        if rng.random() < RANDOM_SHARE:
            yield rng.randbytes(rng.randint(ETH_HLEN, ETH_MAX))
        else:
            frame = common.mutate(rng, rng.choice(bases), tokens)
            yield frame[:ETH_MAX].ljust(ETH_HLEN, b"\0")


def probe(mac: bytes, number: int) -> tuple[bytes, bytes]:
    """An ARP request from ``mac`` for 10.x.y.z (``number``), and that address:
    the worker answers for every address but the guest's."""
    target = (10 << 24 | number & 0xFFFFFF).to_bytes(4, "big")
    body = _ARP.pack(1, 0x0800, 6, 4, 1, mac, common.GUEST4, bytes(6), target)
    return b"\xff" * 6 + mac + ETH_P_ARP.to_bytes(2, "big") + body, target


def wait_answer(sock: socket.socket, target: bytes, deadline: float) -> bool:
    """The worker's ARP reply naming ``target``, before ``deadline``."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            frame, address = sock.recvfrom(2048)
        except TimeoutError:
            return False
        if address[2] == PACKET_OUTGOING or len(frame) < 42:
            continue
        _, _, _, _, op, _, sender, _, _ = _ARP.unpack_from(frame, 14)
        if op == 2 and sender == target:
            return True


def flood(ifname: str, count: int, seed: int) -> tuple[bool, str]:
    with open(f"/sys/class/net/{ifname}/address", encoding="ascii") as handle:
        mac = bytes.fromhex(handle.read().strip().replace(":", ""))
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    out.bind((ifname, 0))
    answers = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    answers.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)   # the batch's ARP answers too
    answers.bind((ifname, ETH_P_ARP))
    start = time.monotonic()
    sent = batches = refused = 0
    for frame in frames(count, seed, mac):
        try:
            out.send(frame)
        except OSError:
            refused += 1
        sent += 1
        if sent % BATCH == 0 or sent == count:
            batches += 1
            request, target = probe(mac, batches)
            out.send(request)
            if not wait_answer(answers, target, time.monotonic() + PROBE_TIMEOUT):
                return False, f"worker stopped answering after {sent} frames"
    report = f"sent {sent - refused} frames in {batches} batches, {time.monotonic() - start:.1f} s"
    return True, report + (f" ({refused} refused by the kernel)" if refused else "")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ok, report = flood(argv[0], int(argv[1]), int(argv[2]))
    print(report, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
