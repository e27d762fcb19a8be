"""TCP flows on host sockets: the I/O side of ``passt_sep.tcp``.

Sockets are edge-triggered: data the guest has not acknowledged stays in
the socket's queue, so a level-triggered socket would look readable for
ever.  After each edge we peek as much as the guest's window allows; when
the guest opens its window or acknowledges data, ``_pump`` runs again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .. import tcp
from ..fwd import AddressMap
from ..log import Logger
from ..netparams import Network
from ..packet import Inbound
from .loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Loop, Timer

SO_PEEK_OFF = 42
SIOCOUTQ = 0x5411
WINDOW_RECHECK = 0.002
EPOLLET = 1 << 31
PEEK_BUFFER = 256 * 1024
SOCKET_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLET
LINGER_RESET = struct.pack("ii", 1, 0)

FlowKey = tuple[bool, int, bytes, int]  # (IPv6, guest port, peer as seen by guest, peer port)


@dataclass(frozen=True)
class TcpListener:
    """A ``-t`` forwarded port: listening socket from the broker."""

    fd: int
    family: int
    port: int
    target: int


class Flow:
    """A TcpConn and its socket, as the loop sees them."""

    __slots__ = ("conn", "sock", "key", "timer", "want_out", "pending")

    def __init__(self, conn: tcp.TcpConn, sock: socket.socket, key: FlowKey) -> None:
        self.conn, self.sock, self.key = conn, sock, key
        self.timer: Timer | None = None
        self.want_out = False
        self.pending: tcp.Segment | None = None   # payload the socket refused


class TcpHandler:
    def __init__(self, loop: Loop, net: Network, addrmap: AddressMap,
                 send_frame: Callable[[bytes], None], guest_mac: Callable[[], bytes],
                 log: Logger, max_flows: int, listeners: list[TcpListener],
                 secret: bytes, verify_checksums: bool = False) -> None:
        self.loop, self.net, self.addrmap, self.log = loop, net, addrmap, log
        self.send_frame, self.guest_mac = send_frame, guest_mac
        self.max_flows = max_flows
        self.secret = secret
        self.verify = verify_checksums
        self.flows: dict[FlowKey, Flow] = {}
        self.by_fd: dict[int, Flow] = {}
        self.buffer = bytearray(PEEK_BUFFER)
        self.view = memoryview(self.buffer)
        self.listeners: dict[int, tuple[socket.socket, TcpListener]] = {}
        for listener in listeners:
            self._add_listener(listener)

    def active_flows(self) -> int:
        return len(self.flows)

    # -- guest segments -------------------------------------------------------------
    def on_guest_segment(self, inb: Inbound, now: float) -> None:
        seg = tcp.parse_tcp(inb, self.verify)
        key = (inb.is_ipv6, seg.sport, inb.dst, seg.dport)
        flow = self.flows.get(key)
        if flow is None:
            self._unknown(seg, inb, key, now)
            return
        result = flow.conn.guest_segment(seg, now)
        self._apply(flow, result, seg, now)

    def _unknown(self, seg: tcp.Segment, inb: Inbound, key: FlowKey, now: float) -> None:
        if seg.flags & tcp.SYN and not seg.flags & tcp.ACK:
            self._open_outbound(seg, inb, key, now)
            return
        self.loop.counters.add("tcp_unknown_flow")
        reply = tcp.rst_for_unknown(seg, inb, self.net.our_mac)
        if reply is not None:
            self.send_frame(reply)

    def _open_outbound(self, seg: tcp.Segment, inb: Inbound, key: FlowKey, now: float) -> None:
        if len(self.flows) >= self.max_flows:
            self.loop.counters.add("tcp_flows_full")
            self._refuse(seg, inb)
            return
        family = socket.AF_INET6 if inb.is_ipv6 else socket.AF_INET
        host_dst = self.addrmap.to_host(inb.dst, seg.dport)
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC)
        except OSError:
            self.loop.counters.add("tcp_socket_error")  # fd limit, most likely
            self._refuse(seg, inb)
            return
        isn = tcp.isn_for(self.secret, inb.dst, seg.dport, inb.src, seg.sport, now)
        conn = tcp.TcpConn.from_guest_syn(seg, inb, self.net.our_mac, self.net.mtu, isn, now)
        flow = self._track(conn, sock, key)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex((socket.inet_ntop(family, host_dst), seg.dport))
        if code not in (0, errno.EINPROGRESS):
            self.send_frame(conn.socket_failed())
            self._close(flow)
            return
        flow.want_out = True
        self.loop.add_fd(sock.fileno(), SOCKET_EVENTS | EPOLLOUT, self._socket_event)

    def _refuse(self, seg: tcp.Segment, inb: Inbound) -> None:
        reply = tcp.rst_for_unknown(seg, inb, self.net.our_mac)
        if reply is not None:
            self.send_frame(reply)

    def _track(self, conn: tcp.TcpConn, sock: socket.socket, key: FlowKey) -> Flow:
        flow = Flow(conn, sock, key)
        self.flows[key] = flow
        self.by_fd[sock.fileno()] = flow
        return flow

    def _apply(self, flow: Flow, result: tcp.GuestResult, seg: tcp.Segment, now: float) -> None:
        for frame in result.frames:
            self.send_frame(frame)
        if result.reset:
            self._close(flow, reset=True)
            return
        if result.acked:
            self._discard(flow, result.acked)
        if result.rewind:
            self._rewind(flow)
        if result.to_socket is not None:
            self._write(flow, seg, result.to_socket)
        if result.shutdown_write:
            self._shutdown(flow)
        if result.established:
            self._arm_socket(flow)
        if flow.conn.state == tcp.CLOSED:
            self._close(flow)
            return
        if result.window_opened or result.established or result.rewind:
            self._pump(flow, now)
        self._schedule(flow)

    def _write(self, flow: Flow, seg: tcp.Segment, data: memoryview) -> None:
        try:
            written = flow.sock.send(data)
        except BlockingIOError:
            written = 0
        except OSError:
            self.send_frame(flow.conn.socket_reset())
            self._close(flow)
            return
        result = flow.conn.data_written(seg, written, *self._send_space(flow))
        for frame in result.frames:
            self.send_frame(frame)
        if result.shutdown_write:
            self._shutdown(flow)
        if flow.conn.socket_full and not flow.want_out:
            flow.want_out = True
            self.loop.modify_fd(flow.sock.fileno(), SOCKET_EVENTS | EPOLLOUT)

    @staticmethod
    def _send_space(flow: Flow) -> tuple[int, int]:
        """(free room, payload size) of the socket's send buffer: the window
        we offer the guest, so that it never sends more than the socket takes."""
        fd = flow.sock.fileno()
        try:
            queued = int.from_bytes(fcntl.ioctl(fd, SIOCOUTQ, b"\0\0\0\0"), "little")
            size = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) * 3 // 4
        except OSError:
            return 0, 0
        # SO_SNDBUF counts the kernel's overhead too: about 3/4 is payload
        return max(size - queued, 0), size

    def _discard(self, flow: Flow, count: int) -> None:
        """Drop acknowledged bytes from the socket's queue without copying."""
        while count > 0:
            chunk = min(count, PEEK_BUFFER)
            try:
                got = flow.sock.recv_into(self.view, chunk, socket.MSG_TRUNC | socket.MSG_DONTWAIT)
            except OSError:
                return
            if got <= 0:
                return
            count -= got

    def _rewind(self, flow: Flow) -> None:
        flow.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        self.loop.counters.add("tcp_retransmit")

    def _shutdown(self, flow: Flow) -> None:
        try:
            flow.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- socket events ---------------------------------------------------------------
    def _socket_event(self, fd: int, events: int, now: float) -> None:
        flow = self.by_fd.get(fd)
        if flow is None:
            return
        conn = flow.conn
        if conn.state == tcp.CONNECTING:
            self._connect_done(flow, now)
            return
        if events & EPOLLERR and not events & EPOLLIN:
            self._socket_failed(flow)
            return
        if events & EPOLLOUT and flow.want_out:
            self._window_update(flow)
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP):
            self._pump(flow, now)
        if flow.key in self.flows:
            self._schedule(flow)

    def _window_update(self, flow: Flow, now: float = 0.0) -> None:
        """Offer the guest the room the socket has again; while it is still
        too little, look again shortly (the socket's own "writable" comes
        sooner than a worthwhile window)."""
        if flow.key not in self.flows:
            return
        for frame in flow.conn.socket_writable(*self._send_space(flow)):
            self.send_frame(frame)
        if flow.conn.socket_full:
            self.loop.call_later(WINDOW_RECHECK, lambda later: self._window_update(flow, later))
            return
        flow.want_out = False
        self.loop.modify_fd(flow.sock.fileno(), SOCKET_EVENTS)

    def _connect_done(self, flow: Flow, now: float) -> None:
        error = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.send_frame(flow.conn.socket_failed())
            self._close(flow)
            return
        flow.want_out = False
        self.send_frame(flow.conn.socket_connected(now))
        self._arm_socket(flow)
        self._pump(flow, now)
        self._schedule(flow)

    def _arm_socket(self, flow: Flow) -> None:
        flow.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        fd = flow.sock.fileno()
        if fd in self.loop.callbacks:
            self.loop.modify_fd(fd, SOCKET_EVENTS)
        else:
            self.loop.add_fd(fd, SOCKET_EVENTS, self._socket_event)

    def _socket_failed(self, flow: Flow) -> None:
        self.send_frame(flow.conn.socket_reset())
        self._close(flow)

    def _pump(self, flow: Flow, now: float) -> None:
        """Peek new socket data into segments while the guest's window allows."""
        conn = flow.conn
        while conn.state == tcp.ESTABLISHED and not conn.fin_sent:
            budget = conn.send_budget()
            if budget <= 0:
                return
            try:
                size = flow.sock.recv_into(self.view, min(budget, PEEK_BUFFER),
                                           socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                self._socket_failed(flow)
                return
            frames = conn.socket_data(self.view[:size], now) if size else conn.socket_eof(now)
            for frame in frames:
                self.send_frame(frame)
            if not size:
                return

    # -- timers and closing ----------------------------------------------------------
    def _schedule(self, flow: Flow) -> None:
        deadline = flow.conn.deadline
        if flow.timer is not None:
            if deadline is not None and flow.timer.deadline == deadline:
                return
            flow.timer.cancel()
            flow.timer = None
        if deadline is not None:
            flow.timer = self.loop.call_at(deadline, lambda now, f=flow: self._timer(f, now))

    def _timer(self, flow: Flow, now: float) -> None:
        flow.timer = None
        if flow.key not in self.flows:
            return
        result = flow.conn.on_timer(now)
        for frame in result.frames:
            self.send_frame(frame)
        if result.reset:
            self._close(flow, reset=True)
            return
        if result.rewind:
            self._rewind(flow)
            self._pump(flow, now)
        self._schedule(flow)

    def _close(self, flow: Flow, reset: bool = False) -> None:
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        fd = flow.sock.fileno()
        self.by_fd.pop(fd, None)
        if flow.timer is not None:
            flow.timer.cancel()
        self.loop.remove_fd(fd)
        if reset:
            try:
                flow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
        flow.sock.close()

    # -- inbound (forwarded ports) ------------------------------------------------------
    def _add_listener(self, listener: TcpListener) -> None:
        sock = socket.socket(fileno=listener.fd)
        sock.setblocking(False)
        self.listeners[sock.fileno()] = (sock, listener)
        self.loop.add_fd(sock.fileno(), EPOLLIN, self._accept)

    def _accept(self, fd: int, events: int, now: float) -> None:
        sock, listener = self.listeners[fd]
        for _ in range(64):
            try:
                conn_sock, address = sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self.loop.counters.add("tcp_accept_error")
                self.log.ratelimited("tcp_accept", 4, f"accept failed: {exc.strerror}")
                return
            self._inbound(conn_sock, listener, address, now)

    def _inbound(self, sock: socket.socket, listener: TcpListener, address: tuple,
                 now: float) -> None:
        v6 = listener.family == socket.AF_INET6
        params = self.net.ipv6 if v6 else self.net.ipv4
        if params is None or len(self.flows) >= self.max_flows:
            self.loop.counters.add("tcp_flows_full" if params else "tcp_no_family")
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = socket.inet_pton(listener.family, address[0].split("%")[0])
        if v6 and peer[:12] == bytes(10) + b"\xff\xff":
            peer = peer[12:]
        seen_peer = self.addrmap.to_guest(peer, address[1])
        key = (v6, listener.target, seen_peer, address[1])
        if key in self.flows:
            sock.close()
            return
        isn = tcp.isn_for(self.secret, seen_peer, address[1], params.addr, listener.target, now)
        conn, syn = tcp.TcpConn.for_accepted(
            guest_addr=params.addr, guest_port=listener.target, peer_addr=seen_peer,
            peer_port=address[1], our_mac=self.net.our_mac, guest_mac=self.guest_mac(),
            mtu=self.net.mtu, isn=isn, now=now)
        flow = self._track(conn, sock, key)
        self.send_frame(syn)
        self._schedule(flow)


def new_secret() -> bytes:
    """The per-process key of the ISN hash (RFC 6528)."""
    return os.urandom(16)
