"""Spliced loopback connections: the I/O side of ``passt_sep.tcp_splice``."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from ..flow import SPLICE_TCP, FlowSection, FlowTable, SpliceKey
from ..fwd import is_loopback
from ..nspolicy import LOOPBACK as LOOPBACK_ADDRESS
from ..system.log import Logger
from ..system.nssource import LOOPBACK, NsSource, NsSourceError
from ..tcp_splice import SplicePair
from .loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Loop, accept_ready, close_socket

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
CHUNK = 1 << 20


class Spliced:
    """Socket ``a`` (accepted on the host) joined to ``b`` (made in the
    namespace, connecting)."""

    def __init__(self, loop: Loop, a: socket.socket, b: socket.socket, on_close) -> None:
        self.loop, self.a, self.b = loop, a, b
        self.on_close = on_close
        self.state = SplicePair()
        self.pipes = (os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC),
                      os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
        self.closed = False
        self.hung: set[int] = set()
        loop.add_fd(a.fileno(), 0, self._event)
        loop.add_fd(b.fileno(), EPOLLOUT, self._event)

    def _event(self, fd: int, events: int, now: float) -> None:
        if events & EPOLLERR and self._socket(fd).getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.close(reset=True)
            return
        if not self.state.connected:
            if fd != self.b.fileno():
                if events & EPOLLHUP:  # the host side gave up first
                    self.close(reset=True)
                return
            self.state.connected = True
        if events & EPOLLHUP:
            self._hung_up(fd)
        try:
            self._move(0, self.a, self.b)
            self._move(1, self.b, self.a)
        except OSError as exc:
            self.close(reset=exc.errno in (errno.ECONNRESET, errno.EPIPE))
            return
        if self.state.finished:
            self.close()
            return
        self._interest()

    def _socket(self, fd: int) -> socket.socket:
        return self.a if fd == self.a.fileno() else self.b

    def _hung_up(self, fd: int) -> None:
        """The peer closed both ways; what it sent may still wait in the
        receive queue.  epoll reports a hang-up whatever the interest, so
        the socket leaves the loop (no spinning while the pipe is full) and
        is read when the other side drains the pipe."""
        if fd not in self.hung:
            self.hung.add(fd)
            self.loop.remove_fd(fd)

    def _move(self, index: int, src: socket.socket, dst: socket.socket) -> None:
        way = self.state.ways[index]
        read_end, write_end = self.pipes[index]
        while True:
            moved = False
            if way.want_read():
                try:
                    way.read(os.splice(src.fileno(), write_end, CHUNK, flags=SPLICE_FLAGS))
                    moved = True
                except BlockingIOError:
                    pass
            if way.want_write():
                try:
                    count = os.splice(read_end, dst.fileno(), way.pending, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    count = 0
                if way.wrote(count):
                    dst.shutdown(socket.SHUT_WR)
                moved = moved or count > 0
            elif way.wrote(0):
                dst.shutdown(socket.SHUT_WR)
            if not moved:
                return

    def _interest(self) -> None:
        for fd_sock, into, out_of in ((self.a, 0, 1), (self.b, 1, 0)):
            if fd_sock.fileno() in self.hung:
                continue
            events = (EPOLLIN if self.state.ways[into].want_read() else 0) | \
                     (EPOLLOUT if self.state.ways[out_of].want_write() else 0)
            self.loop.modify_fd(fd_sock.fileno(), events)

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.a, self.b):
            self.loop.remove_fd(sock.fileno())
            close_socket(sock, reset)
        for pipe in self.pipes:
            for fd in pipe:
                os.close(fd)
        self.on_close(self)


@dataclass(frozen=True)
class Landing:
    """Where a connection (or datagram) from the host itself lands in the
    namespace: on the namespace's own address, so that it stays inside the
    namespace (and can be spliced) but never reaches a service bound to the
    namespace's loopback, which trusts only the namespace; that service
    sees the namespace's address as the peer.  With ``--host-lo-to-ns-lo``,
    what comes from the host's loopback lands on the namespace's loopback,
    from it."""

    own: dict[int, bytes]           # the namespace's address, per family
    host_lo_to_ns_lo: bool = False

    def address(self, family: int, from_loopback: bool) -> bytes | None:
        """The namespace's address to connect to; None if it has none of
        that family (the connection is refused, never sent to loopback)."""
        if from_loopback and self.host_lo_to_ns_lo:
            return LOOPBACK_ADDRESS[family]
        return self.own.get(family)


class LocalSplicer:
    """pasta's fast path for forwarded ports: a connection whose peer is the
    host itself (loopback, or the host's own address, which the namespace
    also holds) is joined to a socket made inside the namespace by the ns
    socket source, connecting where ``Landing`` says, instead of becoming
    frames."""

    def __init__(self, loop: Loop, source: NsSource, landing: Landing, log: Logger,
                 flows: FlowTable) -> None:
        self.loop, self.source, self.log = loop, source, log
        self.landing = landing
        self.own_addresses = set(landing.own.values())
        self.active: FlowSection[Spliced] = flows.section(SPLICE_TCP)

    def __call__(self, sock: socket.socket, port: int, peer: bytes) -> bool:
        """``peer``: IPv4 as such, also on a dual-stack listener; the
        namespace's side is of its family."""
        from_loopback = is_loopback(peer)
        if not (from_loopback or peer in self.own_addresses):
            return False
        family = socket.AF_INET if len(peer) == 4 else socket.AF_INET6
        address = self.landing.address(family, from_loopback)
        if address is None:
            self.loop.counters.add("splice_no_address")
            close_socket(sock, reset=True)
            return True
        if self.active.full:
            self.loop.counters.add("splice_flows_full")
            close_socket(sock, reset=True)
            return True
        try:
            inner = socket.socket(fileno=self.source.connect(family, address, port))
        except (NsSourceError, OSError) as exc:
            self.loop.counters.add("splice_source_error")
            self.log.ratelimited("splice", 4, f"no socket in the namespace: {exc}")
            sock.close()
            return True
        sock.setblocking(False)
        inner.setblocking(False)
        self.loop.counters.add("splice_connections")
        track(self.active, self.loop, sock, inner)
        return True


class NamespaceListeners:
    """pasta's ``-T``: connections accepted on the namespace's loopback are
    joined to the same (or translated) port on the host's loopback.  The
    worker lives in the host's namespace, so the host side is its own
    socket; the listeners come from the broker (static ports) or from the
    ns socket source (``auto``)."""

    def __init__(self, loop: Loop, log: Logger, flows: FlowTable) -> None:
        self.loop, self.log = loop, log
        self.listeners: dict[int, tuple[socket.socket, int]] = {}
        self.active: FlowSection[Spliced] = flows.section(SPLICE_TCP)

    def add(self, fd: int, target: int) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self.listeners[fd] = (sock, target)
        self.loop.add_fd(fd, EPOLLIN, self._accept)

    def remove(self, fd: int) -> None:
        entry = self.listeners.pop(fd, None)
        if entry is not None:
            self.loop.remove_fd(fd)
            entry[0].close()

    def _accept(self, fd: int, events: int, now: float) -> None:
        listener, target = self.listeners[fd]
        accept_ready(self.loop, self.log, fd, listener, "splice",
                     lambda inner, _address: self._join(inner, listener.family, target))

    def _join(self, inner: socket.socket, family: int, target: int) -> None:
        if self.active.full:
            self.loop.counters.add("splice_flows_full")
            close_socket(inner, reset=True)
            return
        inner.setblocking(False)
        try:
            outer = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self.loop.counters.add("splice_socket_error")
            self.log.ratelimited("splice_socket", 4, f"no host socket: {exc.strerror}")
            inner.close()
            return
        code = outer.connect_ex((LOOPBACK[family], target))
        if code not in (0, errno.EINPROGRESS):
            outer.close()
            close_socket(inner, reset=True)
            return
        self.loop.counters.add("splice_connections")
        # Spliced waits for its second socket, the one connecting, to be writable
        track(self.active, self.loop, inner, outer)


def track(flows: FlowSection[Spliced], loop: Loop, a: socket.socket, b: socket.socket) -> None:
    """Splice ``a`` to ``b`` as a flow of the table, named by ``a``'s fd
    (the caller found the table with room), until both are closed."""
    key = SpliceKey(SPLICE_TCP, a.fileno())
    flows.add(key, Spliced(loop, a, b, lambda _spliced: flows.remove(key)))
