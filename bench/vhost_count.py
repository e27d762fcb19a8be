"""Work per TCP frame to the guest on the vhost-user path, in-process.

A VhostUserLink set up as QEMU would (features, guest RAM in a memfd,
the receive ring) and a guest driver played here: it posts receive
buffers as Linux's virtio-net does with mergeable buffers (one
descriptor each, ``--buffer`` bytes) and takes them back, outside what is
measured.  Frames of ``tcp_wire.FrameTemplate`` (``--payload`` bytes of
data) go through ``send_tcp``; per frame it prints the wall time and the
Python bytecodes, Python calls and C calls, with the functions that take
most:

    .venv/bin/python bench/vhost_count.py [--payload N] [--buffer N] [--v6]

Root is not needed.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]        # this checkout's passt_sep

from rr_count import Tally  # noqa: E402

from passt_sep import tcp_wire  # noqa: E402
from passt_sep import vhost_user as vu  # noqa: E402
from passt_sep.system.log import Logger  # noqa: E402
from passt_sep.tcp_wire import ACK, PSH  # noqa: E402
from passt_sep.worker.guest import Capture  # noqa: E402
from passt_sep.worker.loop import Loop  # noqa: E402
from passt_sep.worker.vhost_io import Mapping, VhostUserLink  # noqa: E402

MTU = 65520                       # what passt gives a guest
NUM = 256                         # QEMU's default receive ring
UVA, GPA = 0x7F0000000000, 0
DESC, AVAIL, USED, DATA = 0x0, 0x1000, 0x2000, 0x10000
FEATURES = vu.OFFERED & ~(1 << vu.F_PROTOCOL_FEATURES)


class Guest:
    """The driver's side of the receive ring: buffer ``i`` is descriptor ``i``."""

    def __init__(self, view: memoryview, buffer: int) -> None:
        self.view, self.buffer = view, buffer
        self.avail_idx = self.used_seen = 0
        for index in range(NUM):
            struct.pack_into("<QIHH", view, DESC + 16 * index, GPA + DATA + index * buffer,
                             buffer, 2, 0)
            self.offer(index)

    def offer(self, head: int) -> None:
        struct.pack_into("<H", self.view, AVAIL + 4 + 2 * (self.avail_idx % NUM), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.view, AVAIL + 2, self.avail_idx)

    def take_back(self) -> int:
        """Re-post every buffer used since last time; how many."""
        (used,) = struct.unpack_from("<H", self.view, USED + 2)
        taken = 0
        while self.used_seen != used:
            head, _ = struct.unpack_from("<II", self.view, USED + 4 + 8 * (self.used_seen % NUM))
            self.offer(head)
            self.used_seen = (self.used_seen + 1) & 0xFFFF
            taken += 1
        # as Linux does with event_idx: a kick when the device is past this
        struct.pack_into("<H", self.view, AVAIL + 4 + 2 * NUM, self.used_seen)
        return taken


def message(request: int, payload: bytes, fds: list[int] | None = None) -> vu.Message:
    return vu.Message(request, vu.VERSION, payload, fds or [])


def link_with_ring(buffer: int) -> tuple[VhostUserLink, Guest, list[object]]:
    """The link with guest RAM and an enabled receive ring; the guest, and
    what to keep alive."""
    loop = Loop()
    listener, other = socket.socketpair()
    link = VhostUserLink(loop, Capture(None), Logger("vhost_count"), listener.detach(), MTU)
    size = DATA + NUM * buffer
    size += -size % 4096
    fd = os.memfd_create("guest", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    mapping = Mapping(vu.RegionSpec(GPA, size, UVA, 0, fd))
    link._apply(vu.SET_FEATURES, link.backend.handle(
        message(vu.SET_FEATURES, struct.pack("<Q", FEATURES))))
    link._set_memory([mapping])
    guest = Guest(mapping.region.view, buffer)
    kick, call = (os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2))
    for request, payload, fds in (
            (vu.SET_VRING_NUM, struct.pack("<II", vu.RX, NUM), []),
            (vu.SET_VRING_BASE, struct.pack("<II", vu.RX, 0), []),
            (vu.SET_VRING_ADDR, struct.pack("<IIQQQQ", vu.RX, 0, UVA + DESC, UVA + USED,
                                            UVA + AVAIL, 0), []),
            (vu.SET_VRING_CALL, struct.pack("<Q", vu.RX), [call]),
            (vu.SET_VRING_KICK, struct.pack("<Q", vu.RX), [kick])):
        link._apply(request, link.backend.handle(message(request, payload, fds)))
    assert link.connected, "the receive ring did not start"
    return link, guest, [other, fd, kick]


def frames(payload: int, v6: bool, count: int) -> list[bytes]:
    src, dst = (bytes(15) + b"\1", bytes(15) + b"\2") if v6 else (b"\xc0\0\2\1", b"\xc0\0\2\2")
    template = tcp_wire.FrameTemplate(b"\2" * 6, b"\4" * 6, src, dst, 80, 40000, partial=True)
    data = os.urandom(payload)
    return [bytes(template.segment(1000 + i * payload, 1, ACK | PSH, 0xFFFF, data))
            for i in range(count)]


def run(link: VhostUserLink, guest: Guest, batch: list[bytes], rounds: int,
        tally: Tally | None) -> float:
    """Seconds in send_tcp (and the round's end) for ``rounds`` batches."""
    send, loop = link.send_tcp, link.loop
    spent = 0.0
    for _ in range(rounds):
        guest.take_back()
        start = time.perf_counter()
        if tally is None:
            for frame in batch:
                send(frame)
            loop.poll_once(0)
        else:
            tally.counted(lambda: [send(frame) for frame in batch])
        spent += time.perf_counter() - start
        if link.pending:
            raise SystemExit("frames left waiting: the batch is bigger than the ring")
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload", type=int, default=65454)
    parser.add_argument("--buffer", type=int, default=4096)
    parser.add_argument("--v6", action="store_true")
    parser.add_argument("--frames", type=int, default=20000)
    args = parser.parse_args()
    link, guest, _keep = link_with_ring(args.buffer)
    size = len(frames(args.payload, args.v6, 1)[0]) + vu.HDR_LEN
    per_batch = max(1, NUM // 2 // -(-size // args.buffer))
    batch = frames(args.payload, args.v6, per_batch)
    rounds = max(1, args.frames // per_batch)
    run(link, guest, batch, max(1, rounds // 10), None)         # warm up
    spent = run(link, guest, batch, rounds, None)
    n = rounds * per_batch
    print(f"{len(batch[0])}-byte frames into {args.buffer}-byte buffers: "
          f"{spent / n * 1e6:.2f} us per frame (wall, {n} frames, {per_batch} a round)")
    tally = Tally()
    counted = max(1, rounds // 10)
    run(link, guest, batch, counted, tally)
    tally.report(counted * per_batch, "frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
