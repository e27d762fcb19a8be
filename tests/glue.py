"""The worker's I/O glue driven without root: the real Loop and handlers,
loopback sockets as the host's peers, and a guest that speaks bytes.

A :class:`Rig` holds the loop and the other end of the guest's link (a
:class:`Frames` sink collecting every frame a handler sends to the guest);
:class:`TcpGuest` plays one TCP connection of the guest on bytes: it
numbers its segments, takes ours in order and checks each (addresses,
ports, checksums).  Nothing here needs a privilege: 127.0.0.1 and ::1
sockets, an epoll and a timerfd.

The guest reaches the host's loopback through the gateway's address, as
with passt's default mapping (``--map-host-loopback`` the gateway).
"""

from __future__ import annotations

import array
import fcntl
import ipaddress
import os
import select
import socket
import termios
import time
from collections.abc import Callable, Iterable

from passt_sep import packet, tcp, tcp_wire, udp
from passt_sep.flow import FlowKey, FlowTable
from passt_sep.fwd import AddressMap
from passt_sep.handoff import WorkerConfig
from passt_sep.netparams import IPv4Params, IPv6Params, Network
from passt_sep.packet import IPPROTO_TCP, Inbound
from passt_sep.ports import Mode
from passt_sep.system.log import Logger
from passt_sep.tcp import SYN, TcpSegment
from passt_sep.worker.context import GuestMac, WorkerContext
from passt_sep.worker.icmp_io import EchoHandler
from passt_sep.worker.loop import Loop
from passt_sep.worker.tcp_io import TcpHandler, TcpListener
from passt_sep.worker.udp_io import UdpHandler, UdpListener


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


GUEST_MAC = bytes.fromhex("020000000001")
GUEST4, GATEWAY4 = ip("198.51.100.2"), ip("198.51.100.1")
GUEST6, GATEWAY6 = ip("2001:db8:1::2"), ip("fe80::1")
NET = Network(ipv4=IPv4Params(GUEST4, 24, GATEWAY4), ipv6=IPv6Params(GUEST6, 64, GATEWAY6))
ADDRMAP = AddressMap.build(gateway4=GATEWAY4, gateway6=GATEWAY6, no_map_gw=False,
                           map_host_loopback=None, map_guest_addr=None, host_addr4=None,
                           host_addr6=None)
# MSS 1460, SACK permitted, timestamps, window scale 7: a Linux guest's SYN
LINUX_SYN_OPTIONS = bytes.fromhex("020405b4" "0402" "080a0000000700000000" "01030307")
GUEST_WSCALE = 7
WAIT = 2.0            # seconds a wait for the kernel may take before the test fails


def loopback(v6: bool) -> str:
    return "::1" if v6 else "127.0.0.1"


def family(v6: bool) -> int:
    return socket.AF_INET6 if v6 else socket.AF_INET


def guest_addr(v6: bool) -> bytes:
    return GUEST6 if v6 else GUEST4


def gateway(v6: bool) -> bytes:
    """The address the guest uses for the host's loopback."""
    return GATEWAY6 if v6 else GATEWAY4


def inbound(frame: bytes) -> Inbound:
    return packet.parse_ip_frame(packet.parse_ethernet(frame))


def queued(sock: socket.socket) -> int:
    """Bytes in a socket's receive queue (SIOCINQ, which is FIONREAD)."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def pattern(size: int) -> bytes:
    """Bytes that say where they are: each 4-byte word is its own offset / 4,
    so a byte out of place shows."""
    return b"".join(i.to_bytes(4, "big") for i in range((size + 3) // 4))[:size]


class Frames:
    """The guest's end of the link: every frame a handler sends, in order."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes | bytearray) -> None:
        self.frames.append(bytes(frame))

    send_tcp = send

    def send_tcp_frames(self, frames: list[bytes | bytearray]) -> None:
        self.frames.extend(bytes(frame) for frame in frames)

    def __len__(self) -> int:
        return len(self.frames)

    def take(self) -> list[bytes]:
        taken, self.frames = self.frames, []
        return taken


class Rig:
    """A real Loop, the frame sink, and the handlers under test built on them."""

    def __init__(self) -> None:
        self.loop = Loop()
        self.frames = Frames()
        self.log = Logger("test")
        self.closers: list[Callable[[], None]] = []

    def context(self, max_flows: int = 16, mac: bytes | None = GUEST_MAC,
                **flags: bool) -> WorkerContext:
        """passt's view (checksums verified), the frames to our sink; the
        guest's MAC known (``mac``) or still to learn (None)."""
        config = WorkerConfig(mode=Mode.PASST, max_flows=max_flows, **flags)
        return WorkerContext(self.loop, self.log, config, NET, self.frames, ADDRMAP,
                             FlowTable(max_flows), guest_mac=GuestMac(mac))

    def tcp(self, max_flows: int = 16, listeners: Iterable[TcpListener] = ()) -> TcpHandler:
        handler = TcpHandler(self.context(max_flows), list(listeners), bytes(16))
        self.closers.append(lambda: _close_tcp(handler))
        return handler

    def udp(self, max_flows: int = 16, listeners: Iterable[UdpListener] = (),
            timeout: float = udp.DEFAULT_TIMEOUT) -> UdpHandler:
        handler = UdpHandler(self.context(max_flows), list(listeners), timeout=timeout)
        self.closers.append(lambda: _close_all(handler.sockets.values()))
        return handler

    def echo(self, max_flows: int = 16) -> EchoHandler:
        handler = EchoHandler(self.context(max_flows))
        self.closers.append(lambda: _close_all(handler.sockets.values()))
        return handler

    def run_until(self, done: Callable[[], object], what: str) -> None:
        """Poll the loop until ``done()``; fail after WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.loop.poll_once(0.01)

    def settle(self, rounds: int = 5) -> None:
        """A few rounds of the loop, so that anything already on its way is
        handled: before asserting that nothing (more) came."""
        for _ in range(rounds):
            self.loop.poll_once(0.005)

    def close(self) -> None:
        for closer in self.closers:
            closer()
        self.loop.epoll.close()
        os.close(self.loop.timerfd)


def _close_tcp(handler: TcpHandler) -> None:
    handler.reset_all()
    _close_all(sock for sock, _ in handler.listeners.values())


def _close_all(sockets: Iterable[socket.socket]) -> None:
    for sock in list(sockets):
        sock.close()


class Server:
    """A listening TCP socket on the host's loopback: the guest's peer."""

    def __init__(self, v6: bool = False, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(family(v6), socket.SOCK_STREAM)
        if rcvbuf is not None:                  # inherited by what it accepts
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((loopback(v6), 0))
        self.sock.listen(8)
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def accept(self) -> socket.socket:
        """The next connection, blocking for at most WAIT seconds."""
        self.sock.settimeout(WAIT)
        conn, _ = self.sock.accept()
        conn.settimeout(WAIT)
        self.accepted.append(conn)
        return conn

    def waiting(self) -> bool:
        """A connection is ready to accept."""
        return readable(self.sock)

    def close(self) -> None:
        _close_all([self.sock, *self.accepted])


class TcpGuest:
    """One TCP connection of the guest, on bytes.  ``seq`` is the next
    sequence number it sends, ``ack`` the next byte it expects from us;
    ``data`` holds what it received in order.  ``window`` is its window
    field (scaled by GUEST_WSCALE once the handshake offered scaling)."""

    ISN = 1000

    def __init__(self, rig: Rig, handler: TcpHandler, v6: bool = False, port: int = 40000,
                 peer_port: int = 0, window: int = 0xFFFF) -> None:
        self.rig, self.handler = rig, handler
        self.addr, self.peer = guest_addr(v6), gateway(v6)
        self.port, self.peer_port = port, peer_port
        self.seq, self.ack = self.ISN, 0
        self.window = window
        self.peer_isn = 0
        self.data = bytearray()
        self.fin = False

    # -- what the guest sends ----------------------------------------------------------
    def send(self, flags: int, payload: bytes = b"", *, seq: int | None = None,
             ack: int | None = None, window: int | None = None, options: bytes = b"") -> None:
        """One segment to the handler, numbered from ``seq`` unless given."""
        number = self.seq if seq is None else seq
        frame = tcp_wire.build_tcp_frame(NET.our_mac, GUEST_MAC, self.addr, self.peer, self.port,
                                    self.peer_port, number & tcp.MASK,
                                    (self.ack if ack is None else ack) & tcp.MASK, flags,
                                    self.window if window is None else window, payload, options)
        if seq is None:
            self.seq += len(payload) + bool(flags & (SYN | tcp.FIN))
        self.handler.on_guest_segment(inbound(bytes(frame)), time.monotonic())

    def connect(self) -> None:
        self.send(SYN, window=64240, options=LINUX_SYN_OPTIONS)

    def ack_through(self, offset: int, window: int | None = None) -> None:
        """Acknowledge our stream up to ``offset`` bytes of data."""
        self.send(tcp.ACK, ack=self.peer_isn + 1 + offset, window=window)

    # -- what it receives ----------------------------------------------------------------
    def take(self) -> list[TcpSegment]:
        """Our frames so far, checked, in order; data in sequence is kept."""
        segments = [self.check(frame) for frame in self.rig.frames.take()]
        for seg in segments:
            self._absorb(seg)
        return segments

    def wait(self, what: str, count: int = 1) -> list[TcpSegment]:
        """Run the loop until at least ``count`` frames came; take them."""
        self.rig.run_until(lambda: len(self.rig.frames) >= count, what)
        return self.take()

    def wait_data(self, size: int) -> list[TcpSegment]:
        """Run the loop until ``size`` bytes in all have come in order."""
        segments: list[TcpSegment] = []

        def enough() -> bool:
            segments.extend(self.take())
            return len(self.data) >= size
        self.rig.run_until(enough, f"{size} bytes for the guest")
        return segments

    def check(self, frame: bytes) -> TcpSegment:
        inb = inbound(frame)
        assert (inb.eth.dst, inb.eth.src) == (GUEST_MAC, NET.our_mac)
        assert (inb.src, inb.dst) == (self.peer, self.addr)
        seg = tcp_wire.parse_tcp(inb, verify=True)
        assert (seg.sport, seg.dport) == (self.peer_port, self.port)
        return seg

    def _absorb(self, seg: TcpSegment) -> None:
        if seg.flags & SYN:
            self.peer_isn = seg.seq
            self.ack = (seg.seq + 1) & tcp.MASK
            return
        if seg.seq == self.ack and seg.payload:
            self.data += seg.payload
            self.ack = (self.ack + len(seg.payload)) & tcp.MASK
        if seg.flags & tcp.FIN and (seg.seq + len(seg.payload)) & tcp.MASK == self.ack:
            self.fin = True
            self.ack = (self.ack + 1) & tcp.MASK

    def offset(self, seg: TcpSegment) -> int:
        """Where a segment of ours starts in our stream."""
        return (seg.seq - self.peer_isn - 1) & tcp.MASK

    # -- the host's side of it ------------------------------------------------------------
    def key(self) -> FlowKey:
        return FlowKey(IPPROTO_TCP, self.addr, self.port, self.peer, self.peer_port)

    def host_socket(self) -> socket.socket:
        """The handler's socket for this connection (to look at its queues)."""
        flow = self.handler.flows.get(self.key())
        assert flow is not None and flow.sock is not None
        return flow.sock
