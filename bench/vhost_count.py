"""Work per TCP frame to the guest on the vhost-user path, in-process.

A VhostUserLink set up as QEMU would (features, guest RAM in a memfd,
the receive ring) and a guest driver played on bytes (tests/vhost_guest.py):
it posts receive buffers as Linux's virtio-net does with mergeable buffers
(one descriptor each, ``--buffer`` bytes) and takes them back, outside what
is measured.  Frames of ``tcp_wire.FrameTemplate`` (``--payload`` bytes of
data) go through ``send_tcp``; per frame it prints the wall time and the
Python bytecodes, Python calls and C calls, with the functions that take
most:

    .venv/bin/python bench/vhost_count.py [--payload N] [--buffer N] [--v6] [--tx] [--backlog]
                                          [--batch]

``--batch``: a round's frames in one ``send_tcp_frames``, as tcp_io hands
over a peek's segments.

``--backlog``: twice as many frames a round as the ring holds, as when a
guest is slower than its peer: half wait, and go as buffers come back.

``--tx``: the other way, frames the guest sends (each in one readable
descriptor, as Linux's virtio-net sends one without fragments) taken off
the transmit ring by ``_transmitted``, the handlers left out.

Root is not needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]     # this checkout's passt_sep

from rr_count import Tally  # noqa: E402
from vhost_guest import NUM, Guest, LinkWithRing  # noqa: E402

from passt_sep import tcp_wire  # noqa: E402
from passt_sep import vhost_user as vu  # noqa: E402
from passt_sep.tcp_wire import ACK, PSH  # noqa: E402
from passt_sep.worker.vhost_io import VhostUserLink  # noqa: E402

BATCHED = False


def frames(payload: int, v6: bool, count: int) -> list[bytes]:
    src, dst = (bytes(15) + b"\1", bytes(15) + b"\2") if v6 else (b"\xc0\0\2\1", b"\xc0\0\2\2")
    template = tcp_wire.FrameTemplate(b"\2" * 6, b"\4" * 6, src, dst, 80, 40000, partial=True)
    data = os.urandom(payload)
    return [bytes(template.segment(1000 + i * payload, 1, ACK | PSH, 0xFFFF, data))
            for i in range(count)]


def run(link: VhostUserLink, guest: Guest, batch: list[bytes], rounds: int,
        tally: Tally | None) -> float:
    """Seconds in send_tcp (and the round's end) for ``rounds`` batches; a
    batch bigger than the ring waits in part, and goes as the guest gives
    buffers back (``_flush_pending``, as on its kicks; counted too)."""
    send, loop = link.send_tcp, link.loop

    def send_all() -> None:
        if BATCHED:
            link.send_tcp_frames(batch)
            return
        for frame in batch:
            send(frame)

    spent = 0.0
    for _ in range(rounds):
        guest.used()
        start = time.perf_counter()
        if tally is None:
            send_all()
            loop.poll_once(0)
        else:
            tally.counted(send_all)
        spent += time.perf_counter() - start
        while link.pending:
            guest.used()
            start = time.perf_counter()
            if tally is None:
                link._flush_pending()
            else:
                tally.counted(link._flush_pending)
            spent += time.perf_counter() - start
    return spent


def run_tx(rig: LinkWithRing, batch: list[bytes], rounds: int, tally: Tally | None) -> float:
    """Seconds in taking ``rounds`` batches of frames from the guest."""
    link, spent = rig.link, 0.0
    link.on_frame = lambda frame, now: None
    for _ in range(rounds):
        rig.sender.used(again=False)
        for index, frame in enumerate(batch):
            rig.sender.send(index, frame)
        start = time.perf_counter()
        if tally is None:
            link._transmitted(0.0)
        else:
            tally.counted(link._transmitted, 0.0)
        spent += time.perf_counter() - start
    return spent


def main_tx(args: argparse.Namespace) -> int:
    """The other way: frames the guest sends, each its own buffer."""
    rig = LinkWithRing(args.buffer)
    batch = [bytes(vu.HDR_LEN) + frame for frame in frames(args.payload, args.v6, NUM // 2)]
    rounds = max(1, args.frames // len(batch))
    run_tx(rig, batch, max(1, rounds // 10), None)
    spent = run_tx(rig, batch, rounds, None)
    n = rounds * len(batch)
    print(f"{len(batch[0])}-byte frames from the guest: {spent / n * 1e6:.2f} us per frame "
          f"(wall, {n} frames, {len(batch)} a round)")
    tally = Tally()
    counted = max(1, rounds // 10)
    run_tx(rig, batch, counted, tally)
    tally.report(counted * len(batch), "frame")
    rig.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload", type=int, default=65454)
    parser.add_argument("--buffer", type=int, default=4096)
    parser.add_argument("--v6", action="store_true")
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--tx", action="store_true", help="frames from the guest instead")
    parser.add_argument("--backlog", action="store_true",
                        help="twice as many frames a round as the ring holds")
    parser.add_argument("--batch", action="store_true",
                        help="a round's frames in one send_tcp_frames, as a peek's go")
    args = parser.parse_args()
    global BATCHED
    BATCHED = args.batch
    if args.tx:
        return main_tx(args)
    rig = LinkWithRing(args.buffer)
    link, guest = rig.link, rig.guest
    size = len(frames(args.payload, args.v6, 1)[0]) + vu.HDR_LEN
    per_batch = max(1, NUM // 2 // -(-size // args.buffer)) * (4 if args.backlog else 1)
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
    rig.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
