"""Work per TCP connection in the worker, counted in-process: the
connection-rate benchmark's cycle (connect, 1-byte request, response,
close) on pasta's path without a namespace, like ``rr_count``: a TapLink
on a SEQPACKET socketpair whose other end plays a Linux guest, and a
loopback peer that echoes and closes.  Only the worker's loop rounds are
counted, timer expiries included (each connection's last timers come due
while later ones run: connections go on for ``--seconds`` before the
count starts, and as long again while it runs):

    .venv/bin/python bench/conn_count.py [--v6] [--seconds S]

prints Python bytecodes, Python calls, C calls and syscalls per
connection, and the functions with the most bytecodes.  Root is not needed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from glue import (  # noqa: E402
    GUEST_MAC,
    LINUX_SYN_OPTIONS,
    NET,
    Server,
    gateway,
    guest_addr,
    readable,
)
from rr_count import Tally, guest_segments, tap_path  # noqa: E402

from passt_sep import tcp_wire  # noqa: E402
from passt_sep.tap import VNET_HDR_SIZE  # noqa: E402
from passt_sep.tcp_wire import ACK, FIN, MASK, PSH, SYN, TcpSegment  # noqa: E402

Round = Callable[[float], None]
FIRST_PORT, PORTS = 20000, 40000


class Bench:
    """The worker's tap path and a peer that echoes one byte and closes."""

    def __init__(self, v6: bool) -> None:
        self.loop, self.tap, self.ends = tap_path("conn_count", 4096)
        self.server = Server(v6=v6)
        self.server.sock.listen(512)
        self.me, self.peer_addr = guest_addr(v6), gateway(v6)
        self.port, self.seq, self.ack = FIRST_PORT, 0, 0
        self.connections = 0

    def send(self, flags: int, payload: bytes = b"", window: int = 502,
             options: bytes = b"") -> None:
        frame = tcp_wire.build_tcp_frame(NET.our_mac, GUEST_MAC, self.me, self.peer_addr,
                                         self.port, self.server.port, self.seq, self.ack, flags,
                                         window, payload, options)
        self.seq = (self.seq + len(payload) + bool(flags & (SYN | FIN))) & MASK
        self.tap.send(bytes(VNET_HDR_SIZE) + bytes(frame))

    def wait(self, rounds: Round, flags: int) -> TcpSegment:
        """Rounds until a segment of this connection with ``flags`` comes."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            rounds(0.1)
            for seg in guest_segments(self.tap):
                if seg.dport == self.port and seg.flags & flags == flags:
                    return seg
        raise SystemExit(f"no segment with flags {flags:#x} from the handler")

    def connection(self, rounds: Round) -> None:
        """A Linux guest's connect, send, receive and close, the peer's
        echo and close."""
        self.port = FIRST_PORT + (self.port + 1 - FIRST_PORT) % PORTS
        self.seq, self.ack = self.port * 7919 & MASK, 0
        self.send(SYN, window=64240, options=LINUX_SYN_OPTIONS)
        syn_ack = self.wait(rounds, SYN | ACK)
        self.ack = (syn_ack.seq + 1) & MASK
        self.send(ACK)
        self.send(ACK | PSH, b"x")
        rounds(0.1)
        peer = self.server.accept()
        try:
            while not readable(peer):
                rounds(0.1)
            peer.send(peer.recv(1))
            reply = self.wait(rounds, PSH | ACK)
            self.ack = (reply.seq + len(reply.payload)) & MASK
            self.send(FIN | ACK)                 # the reply's ACK rides on the FIN
            self.wait(rounds, ACK)
            peer.recv(1)
        finally:
            peer.close()
            self.server.accepted.clear()
        fin = self.wait(rounds, FIN | ACK)
        self.ack = (fin.seq + 1) & MASK
        self.send(ACK)
        rounds(0)
        self.connections += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v6", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    bench = Bench(args.v6)
    # the first connections are counted too (then forgotten), to run as many per second
    warm_up, tally = Tally(), Tally()
    for current in (warm_up, tally):
        start, end = bench.connections, time.monotonic() + args.seconds
        while time.monotonic() < end:
            bench.connection(functools.partial(current.counted, bench.loop.poll_once))
    tally.report(bench.connections - start, f"connection ({'IPv6' if args.v6 else 'IPv4'})")
    bench.server.close()
    for end_ in bench.ends:
        end_.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
