"""pasta's ``auto`` forwarding, the I/O side of ``passt_sep.procnet``.

Every second both sides' TCP tables are read again (fds the broker opened
in each namespace).  ``-t auto``: a port the namespace listens on gets a
listener on the host, feeding the TCP translator (and, from the host's own
loopback, the splice path).  ``-T auto``: a port the host listens on gets
a listener on the namespace's loopback, made by the ns socket source and
joined to the host's loopback.  Our own listeners show in those tables
too and are never forwarded back; a port that cannot be bound is left
alone until its listener goes away.
"""

from __future__ import annotations

import os
import socket

from .. import procnet
from ..log import Logger
from ..nssource import NsSource, NsSourceError
from .loop import Loop
from .splice_io import NamespaceListeners
from .tcp_io import Listener, TcpHandler

SCAN_INTERVAL = 1.0
READ_CHUNK = 65536
LISTEN_BACKLOG = 128


class Side:
    """One direction of ``auto``: the ports we forward and their fds."""

    def __init__(self) -> None:
        self.forwarded: dict[int, list[int]] = {}
        self.refused: set[int] = set()       # could not be bound: retried once gone

    def follow(self, seen: set[int], ours: set[int]) -> tuple[set[int], set[int]]:
        self.refused &= seen
        return procnet.plan(self.forwarded, seen, ours, self.refused)


class AutoForwarding:
    def __init__(self, loop: Loop, log: Logger, tables: dict[str, list[int]],
                 families: list[int], *, tcp: TcpHandler | None,
                 outward: NamespaceListeners | None, source: NsSource | None,
                 static_host: set[int], static_ns: set[int]) -> None:
        self.loop, self.log, self.tables, self.families = loop, log, tables, families
        self.tcp, self.outward, self.source = tcp, outward, source
        self.static_host, self.static_ns = static_host, static_ns
        self.inward, self.outward_side = Side(), Side()
        self.scan(0.0)

    def scan(self, now: float) -> None:
        ns_seen, host_seen = self._listening("ns"), self._listening("host")
        if self.tcp is not None and ns_seen is not None:
            ours = self.static_ns | set(self.outward_side.forwarded)
            start, stop = self.inward.follow(ns_seen, ours)
            for port in sorted(stop):
                for fd in self.inward.forwarded.pop(port):
                    self.tcp.remove_listener(fd)
            for port in sorted(start):
                self._open(self.inward, port, self._host_listener)
        if self.outward is not None and self.source is not None and host_seen is not None:
            ours = self.static_host | set(self.inward.forwarded)
            start, stop = self.outward_side.follow(host_seen, ours)
            for port in sorted(stop):
                for fd in self.outward_side.forwarded.pop(port):
                    self.outward.remove(fd)
            for port in sorted(start):
                self._open(self.outward_side, port, self._ns_listener)
        self.loop.call_later(SCAN_INTERVAL, self.scan)

    def _listening(self, side: str) -> set[int] | None:
        fds = self.tables.get(side)
        if not fds:
            return None
        ports: set[int] = set()
        for fd in fds:
            try:
                ports |= procnet.listening_ports(_read_all(fd))
            except OSError:
                self.loop.counters.add("auto_table_error")
        return ports

    def _open(self, side: Side, port: int, make) -> None:
        fds = []
        for family in self.families:
            try:
                fds.append(make(family, port))
            except (OSError, NsSourceError) as exc:
                self.loop.counters.add("auto_bind_error")
                self.log.ratelimited("auto", 4, f"auto forwarding of port {port}: {exc}")
        if fds:
            side.forwarded[port] = fds
            self.log.debug(f"auto: forwarding port {port}")
        else:
            side.refused.add(port)

    def _host_listener(self, family: int, port: int) -> int:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        fd = sock.detach()
        assert self.tcp is not None
        self.tcp.add_listener(Listener(fd, family, port, port))
        return fd

    def _ns_listener(self, family: int, port: int) -> int:
        assert self.source is not None and self.outward is not None
        fd = self.source.listen(family, port)
        self.outward.add(fd, port)
        return fd


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)

