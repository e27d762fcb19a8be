"""Loopback UDP between the host and the namespace, socket to socket (pasta).

A datagram that a forwarded port's bound socket receives from its own
side's loopback never becomes a frame: it leaves from a socket connected
to the other side's loopback at the target port, and what comes back on
that socket is sent from the bound socket to the original peer.  One
connected socket per (bound socket, peer), closed after the UDP flow
timeout: each such pair is a flow of the worker's flow table, admitted
under its one cap.  ``-U`` ports (bound in the
namespace, replies from the host) and ``-u`` ports reached from the
host's loopback (the namespace's socket made by the ns socket source)
both go through here.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from .. import udp
from ..flow import SPLICE_UDP, FlowSection, FlowTable, SpliceKey
from ..fwd import text_family, unmapped_text
from ..system.log import Logger
from ..system.nssource import LOOPBACK, NsSourceError
from .loop import EPOLLIN, Loop

RECV_SIZE = 65536
DATAGRAMS_PER_WAKEUP = 64
SWEEP_INTERVAL = 10.0

# (family, target port) -> fd of a socket connected to the other side's loopback
MakeConnected = Callable[[int, int], int]


@dataclass
class _Pair:
    """A relayed flow's entry in the table."""

    key: SpliceKey
    bound: socket.socket
    relay: socket.socket
    last_used: float


def connect_host_loopback(family: int, port: int) -> int:
    """``-U``: the host's side is the worker's own namespace."""
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.connect((LOOPBACK[family], port))
    except OSError:
        sock.close()
        raise
    return sock.detach()


class UdpRelay:
    def __init__(self, loop: Loop, log: Logger, flows: FlowTable,
                 timeout: float = udp.DEFAULT_TIMEOUT) -> None:
        self.loop, self.log, self.timeout = loop, log, timeout
        self.bound: dict[int, tuple[socket.socket, int, MakeConnected]] = {}
        self.pairs: FlowSection[_Pair] = flows.section(SPLICE_UDP)
        self.by_relay: dict[int, _Pair] = {}          # the pairs' index by relay socket
        self.buffer = bytearray(RECV_SIZE)
        self.view = memoryview(self.buffer)
        self.sweep_timer = None

    # -- bound sockets of our own (-U, and -U auto) ------------------------------------
    def add(self, fd: int, target: int, make: MakeConnected) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self.bound[fd] = (sock, target, make)
        self.loop.add_fd(fd, EPOLLIN, self._bound_readable)

    def remove(self, fd: int) -> None:
        entry = self.bound.pop(fd, None)
        if entry is None:
            return
        for pair in [p for p in self.pairs.values() if p.key.fd == fd]:
            self._close(pair)
        self.loop.remove_fd(fd)
        entry[0].close()

    def _bound_readable(self, fd: int, events: int, now: float) -> None:
        sock, target, make = self.bound[fd]
        for _ in range(DATAGRAMS_PER_WAKEUP):
            try:
                size, peer = sock.recvfrom_into(self.buffer)
            except BlockingIOError:
                return
            except OSError:
                self.loop.counters.add("udp_splice_recv_error")
                continue
            self.forward(sock, peer, self.view[:size], target, make, now)

    # -- both ------------------------------------------------------------------------
    def forward(self, bound: socket.socket, peer: tuple, payload: memoryview, target: int,
                make: MakeConnected, now: float) -> None:
        """One datagram from ``peer`` on ``bound``: out of the pair's relay."""
        key = SpliceKey(SPLICE_UDP, bound.fileno(), peer)
        pair = self.pairs.get(key) or self._open(key, bound, target, make, now)
        if pair is None:
            return
        pair.last_used = now
        try:
            pair.relay.send(payload)
            self.loop.counters.add("udp_splice_datagrams")
        except BlockingIOError:
            self.loop.counters.add("udp_splice_full")
        except OSError:
            self.loop.counters.add("udp_splice_send_error")

    def _open(self, key: SpliceKey, bound: socket.socket, target: int, make: MakeConnected,
              now: float) -> _Pair | None:
        """A new pair, unless the flow table (shared by every protocol) is full."""
        if self.pairs.full:
            self.loop.counters.add("udp_splice_flows_full")
            return None
        try:
            relay = socket.socket(fileno=make(text_family(unmapped_text(key.peer[0])), target))
        except (OSError, NsSourceError) as exc:
            self.loop.counters.add("udp_splice_socket_error")
            self.log.ratelimited("udp_splice", 4, f"no socket for loopback UDP: {exc}")
            return None
        relay.setblocking(False)
        pair = _Pair(key, bound, relay, now)
        self.pairs.add(key, pair)
        self.by_relay[relay.fileno()] = pair
        self.loop.add_fd(relay.fileno(), EPOLLIN, self._relay_readable)
        if self.sweep_timer is None:
            self.sweep_timer = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        return pair

    def _relay_readable(self, fd: int, events: int, now: float) -> None:
        pair = self.by_relay.get(fd)
        if pair is None:
            return
        for _ in range(DATAGRAMS_PER_WAKEUP):
            try:
                size = pair.relay.recv_into(self.buffer)
            except BlockingIOError:
                return
            except OSError:          # ECONNREFUSED: nothing listens at the target
                self.loop.counters.add("udp_splice_refused")
                return
            pair.last_used = now
            try:
                pair.bound.sendto(self.view[:size], pair.key.peer)
            except OSError:
                self.loop.counters.add("udp_splice_send_error")

    def _close(self, pair: _Pair) -> None:
        self.pairs.remove(pair.key)
        self._close_relay(pair)

    def _close_relay(self, pair: _Pair) -> None:
        self.by_relay.pop(pair.relay.fileno(), None)
        self.loop.remove_fd(pair.relay.fileno())
        pair.relay.close()

    def _sweep(self, now: float) -> None:
        self.sweep_timer = None
        for pair in self.pairs.expire(now, self.timeout):
            self._close_relay(pair)
        if self.pairs:
            self.sweep_timer = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
