"""pasta's ``auto`` forwarding, the I/O side of ``passt_sep.procnet``.

Every second both sides' tables (``/proc/net/tcp{,6}`` or ``udp{,6}``,
fds the broker opened in each namespace) are read again.  Inward
(``-t auto``, ``-u auto``): a port the namespace listens on (TCP) or has
bound (UDP) gets a socket on the host, feeding the translator (and the
splice path for the host's own loopback).  Outward (``-T auto``,
``-U auto``): a port the host listens on or has bound gets a socket on the
namespace's loopback, made by the ns socket source, joined to the host's
loopback.  Our own sockets show in those tables too and are never
forwarded back; a port that cannot be bound is left alone until it goes
away on the other side.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import procnet
from ..system.log import Logger
from ..system.nssource import NsSourceError
from ..system.portsock import bound_socket
from .loop import Loop

SCAN_INTERVAL = 1.0
READ_CHUNK = 65536

Open = Callable[[int, int], int]       # (family, port) -> fd, registered where it serves
OpenDual = Callable[[int], int]        # port -> fd of one socket for both families
Close = Callable[[int], None]


@dataclass
class AutoDirection:
    """One direction of ``auto`` for one protocol.

    ``seen_on``: the side whose tables are followed; ``open``/``close``:
    make and drop our socket on the other side; ``ours``: ports our own
    sockets hold on ``seen_on`` (never forwarded back); ``known``: what
    the first scan sees without reading the tables (reading /proc/net/tcp
    walks the kernel's whole socket hash: milliseconds, on the way to a
    ready namespace): nothing, in a namespace we just created, where
    nothing of anyone else's can listen yet; on the host, the listeners the
    netlink helper found; ``open_dual``: one socket for both families'
    port (the host's dual-stack wildcard socket), tried first when both
    are enabled, before one socket per family."""

    seen_on: str
    open: Open
    close: Close
    ours: Callable[[], set[int]]
    forwarded: dict[int, list[int]] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)
    known: frozenset[int] | None = None
    open_dual: OpenDual | None = None

    def follow(self, seen: set[int]) -> tuple[set[int], set[int]]:
        self.refused &= seen
        return procnet.plan(self.forwarded, seen, self.ours(), self.refused)


class AutoForwarding:
    def __init__(self, loop: Loop, log: Logger, tables: dict[str, list[int]], udp: bool,
                 families: list[int], directions: list[AutoDirection]) -> None:
        self.loop, self.log, self.tables, self.udp = loop, log, tables, udp
        self.families, self.directions = families, directions
        self.scan(0.0)

    def scan(self, now: float) -> None:
        for direction in self.directions:
            known, direction.known = direction.known, None
            seen = set(known) if known is not None else self._listening(direction.seen_on)
            start, stop = direction.follow(seen)
            for port in sorted(stop):
                for fd in direction.forwarded.pop(port):
                    direction.close(fd)
            for port in sorted(start):
                self._open(direction, port)
        self.loop.call_later(SCAN_INTERVAL, self.scan)

    def _listening(self, side: str) -> set[int]:
        ports: set[int] = set()
        for fd in self.tables.get(side, ()):
            try:
                ports |= procnet.listening_ports(_read_all(fd), self.udp)
            except OSError:
                self.loop.counters.add("auto_table_error")
        return ports

    def _open(self, direction: AutoDirection, port: int) -> None:
        fds = self._open_dual(direction, port) or self._open_each(direction, port)
        if fds:
            direction.forwarded[port] = fds
            self.log.debug(f"auto: forwarding {'UDP' if self.udp else 'TCP'} port {port}")
        else:
            direction.refused.add(port)

    def _open_dual(self, direction: AutoDirection, port: int) -> list[int]:
        """The one socket for both families, if both are on and it can be
        bound; else none, and the caller opens one per family (which
        reports what is wrong)."""
        if direction.open_dual is None or len(self.families) < 2:
            return []
        try:
            return [direction.open_dual(port)]
        except OSError:
            return []

    def _open_each(self, direction: AutoDirection, port: int) -> list[int]:
        fds = []
        for family in self.families:
            try:
                fds.append(direction.open(family, port))
            except (OSError, NsSourceError) as exc:
                self.loop.counters.add("auto_bind_error")
                self.log.ratelimited("auto", 4, f"auto forwarding of port {port}: {exc}")
        return fds


def host_socket(family: int, kind: int, port: int, dual: bool = False) -> int:
    """A socket on the host's wildcard address at ``port``: listening (TCP)
    or bound (UDP); ``dual``, an AF_INET6 one taking IPv4 too."""
    return bound_socket(family, kind, port, dual=dual).detach()


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
