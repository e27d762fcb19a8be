"""Work per 1-byte TCP request/response in the worker, counted in-process.

pasta's path without a namespace: a TapLink on one end of a SEQPACKET
socketpair (the other end plays the guest's tap, virtio-net header and
all), GuestServices, a TcpHandler with ``tso``, and a loopback peer that
echoes.  Only the worker's loop rounds are counted (the guest's frames and
the echo are built and answered outside them):

    .venv/bin/python bench/rr_count.py [--v6] [--exchanges N]

prints Python bytecodes, Python calls, C calls and syscalls per exchange,
the functions with the most bytecodes, and the bytecodes split by phase:
each round's before and after the syscall that passes the payload on.
Root is not needed.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from glue import (  # noqa: E402
    ADDRMAP,
    GUEST_MAC,
    LINUX_SYN_OPTIONS,
    NET,
    Server,
    gateway,
    guest_addr,
    inbound,
)

from passt_sep import tcp_wire  # noqa: E402
from passt_sep.flow import FlowTable  # noqa: E402
from passt_sep.handoff import WorkerConfig  # noqa: E402
from passt_sep.packet import IPPROTO_TCP  # noqa: E402
from passt_sep.ports import Mode  # noqa: E402
from passt_sep.system.log import Logger  # noqa: E402
from passt_sep.tap import VNET_HDR_SIZE  # noqa: E402
from passt_sep.tcp_wire import ACK, MASK, PSH, SYN, TcpSegment  # noqa: E402
from passt_sep.worker.context import GuestMac, WorkerContext  # noqa: E402
from passt_sep.worker.guest import Capture, TapLink  # noqa: E402
from passt_sep.worker.loop import Loop  # noqa: E402
from passt_sep.worker.services import GuestServices  # noqa: E402
from passt_sep.worker.tcp_io import TcpHandler  # noqa: E402

SYSCALLS = {"epoll.poll", "readv", "writev", "socket.send", "socket.recv_into",
            "socket.getsockopt", "socket.setsockopt", "read", "write", "socket.connect_ex",
            "socket.shutdown", "socket.close", "epoll.register", "epoll.modify",
            "epoll.unregister"}     # not seen here: socket() and timerfd_settime (ctypes)


def tap_path(name: str, max_flows: int) -> tuple[Loop, socket.socket,
                                                 tuple[socket.socket, socket.socket]]:
    """The worker's loop with a TapLink, GuestServices and a TcpHandler
    (``tso``) on one end of a SEQPACKET socketpair; the guest's end, and
    both ends to keep open."""
    loop = Loop()
    worker_end, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    log = Logger(name)
    link = TapLink(loop, worker_end.fileno(), Capture(None), log, NET.mtu)
    config = WorkerConfig(mode=Mode.PASTA, max_flows=max_flows)
    ctx = WorkerContext(loop, log, config, NET, link, ADDRMAP, FlowTable(max_flows),
                        guest_mac=GuestMac(GUEST_MAC))
    link.start(GuestServices(ctx, None, tcp=TcpHandler(ctx, [], bytes(16), tso=True)))
    return loop, tap, (worker_end, tap)


def guest_segments(tap: socket.socket) -> list[TcpSegment]:
    """Our TCP segments waiting on the guest's end."""
    found = []
    while True:
        try:
            data = tap.recv(1 << 17, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return found
        inb = inbound(data[VNET_HDR_SIZE:])
        if inb.proto == IPPROTO_TCP:
            found.append(tcp_wire.parse_tcp(inb))


class Bench:
    """One established flow through the tap path, and its echoing peer."""

    def __init__(self, v6: bool) -> None:
        self.loop, self.tap, self.ends = tap_path("rr_count", 16)
        self.server = Server(v6=v6)
        self.me, self.peer_addr = guest_addr(v6), gateway(v6)
        self.seq, self.ack = 1000, 0
        self.send(SYN, window=64240, options=LINUX_SYN_OPTIONS)
        syn_ack = self.wait_segment()
        self.ack = (syn_ack.seq + 1) & MASK
        self.send(ACK)
        self.loop.poll_once(0.1)
        self.peer = self.server.accept()
        self.peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, flags: int, payload: bytes = b"", window: int = 0xFFFF,
             options: bytes = b"") -> None:
        frame = tcp_wire.build_tcp_frame(NET.our_mac, GUEST_MAC, self.me, self.peer_addr, 40000,
                                         self.server.port, self.seq, self.ack, flags, window,
                                         payload, options)
        self.seq += len(payload) + bool(flags & SYN)
        self.tap.send(bytes(VNET_HDR_SIZE) + bytes(frame))

    def wait_segment(self) -> TcpSegment:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            self.loop.poll_once(0.1)
            found = guest_segments(self.tap)
            if found:
                return found[-1]
        raise SystemExit("no answer from the handler")

    def exchange(self, rounds) -> None:
        """Request, the worker's round, the echo, the worker's round."""
        self.send(ACK | PSH, b"x")
        rounds(0.5)
        self.peer.send(self.peer.recv(1))
        rounds(0.5)
        reply = [seg for seg in guest_segments(self.tap) if len(seg.payload)]
        if not reply:
            raise SystemExit("no response reached the guest")
        self.ack = (reply[-1].seq + 1) & MASK


class Tally:
    """Python bytecodes and calls, C calls and syscalls of the loop rounds
    run through :meth:`counted`, by function."""

    # An exchange is two rounds, the request's and the response's; each
    # round's bytecodes are split at the syscall that passes the payload on
    # (the request's send to the socket, the response's write to the tap):
    # before it they are on the exchange's critical path, after it they
    # overlap the peer's (or the client's) turn, unless the CPU is short.
    MARKERS = (("socket.send", "request"), ("writev", "response"))

    def __init__(self) -> None:
        self.opcodes: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.phases: collections.Counter[str] = collections.Counter()
        self.on_path: collections.Counter[str] = collections.Counter()   # before the markers
        self.rounds = 0
        self.in_round = [0]                     # bytecodes so far in this round
        self.cut: int | None = None             # of them, before its marker

    def _trace(self, frame, event, arg):
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        name = f"{frame.f_code.co_filename.split('passt_sep/')[-1]}:{frame.f_code.co_name}"
        self.calls[name] += 1
        opcodes, in_round, on_path = self.opcodes, self.in_round, self.on_path

        def opcode(frame, event, arg):
            if event == "opcode":
                opcodes[name] += 1
                in_round[0] += 1
                if self.cut is None:
                    on_path[name] += 1
            return opcode
        return opcode

    def _profile(self, frame, event, arg):
        if event == "c_call":
            called = getattr(arg, "__qualname__", str(arg))
            self.calls["C " + called] += 1
            if self.cut is None and called == self.MARKERS[self.rounds % 2][0]:
                self.cut = self.in_round[0]

    def counted(self, run: Callable[..., object], *args: object) -> None:
        """``run(*args)`` (a loop round), counted."""
        self.in_round[0], self.cut = 0, None
        sys.settrace(self._trace)
        sys.setprofile(self._profile)
        try:
            run(*args)
        finally:
            sys.setprofile(None)
            sys.settrace(None)
        what = self.MARKERS[self.rounds % 2][1]
        cut = self.in_round[0] if self.cut is None else self.cut
        self.phases[f"{what}, before its {self.MARKERS[self.rounds % 2][0]}"] += cut
        self.phases[f"{what}, after it"] += self.in_round[0] - cut
        self.rounds += 1

    def report(self, n: int, what: str) -> None:
        """Per ``what`` (``n`` of them): the totals, the functions with the
        most bytecodes and the syscalls."""
        python = sum(v for k, v in self.calls.items() if not k.startswith("C "))
        c_calls = {k[2:]: v for k, v in self.calls.items()
                   if k.startswith("C ") and k[2:] not in ("setprofile", "settrace")}
        syscalls = sum(v for k, v in c_calls.items() if k in SYSCALLS)
        print(f"per {what}: {sum(self.opcodes.values()) / n:.0f} bytecodes, "
              f"{python / n:.1f} Python calls, {sum(c_calls.values()) / n:.1f} C calls, "
              f"{syscalls / n:.1f} syscalls")
        for name, count in self.opcodes.most_common(15):
            print(f"{count / n:8.1f}  {name}")
        for name, count in sorted(c_calls.items()):
            if name in SYSCALLS:
                print(f"{count / n:8.1f}  {name} (syscall)")
        print("bytecodes by phase (before the marker: on the critical path):")
        for phase, count in self.phases.items():
            print(f"{count / n:8.1f}  {phase}")
        print("on the critical path, by function:")
        for name, count in self.on_path.most_common(12):
            print(f"{count / n:8.1f}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v6", action="store_true")
    parser.add_argument("--exchanges", type=int, default=2000)
    args = parser.parse_args()
    bench = Bench(args.v6)
    for _ in range(200):
        bench.exchange(bench.loop.poll_once)
    tally = Tally()
    for _ in range(args.exchanges):
        bench.exchange(lambda timeout: tally.counted(bench.loop.poll_once, timeout))
    tally.report(args.exchanges, f"exchange ({'IPv6' if args.v6 else 'IPv4'})")
    bench.server.close()
    for end in bench.ends:
        end.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
