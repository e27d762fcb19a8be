"""TCP flows on host sockets: the I/O side of :mod:`passt_sep.tcp`.

The sans-IO :class:`~passt_sep.tcp.TcpConn` decides; this module turns its
:class:`~passt_sep.tcp.Actions` into syscalls, in the order that class
documents, one input at a time: what the syscalls find (how much a write
took, bytes peeked, an error) is the connection's next input, given only
once the Actions before it are carried out whole.  Only socket, connect,
setsockopt, getsockopt, recvfrom, sendto, accept4, shutdown, close,
epoll_ctl, fcntl and ioctl(FIONBIO) (Python's ``setblocking``) are used,
all listed in ``seccomp/worker.*``.

Sockets are edge-triggered: data the guest has not acknowledged stays in
the socket's receive queue, so a level-triggered socket would look
readable for ever.  After each edge, and whenever the guest acknowledges
data or opens its window, ``_pump`` peeks as much as ``send_budget()``
allows into one buffer shared by every flow.  EPOLLOUT matters only while a
connect is in progress or the socket refused guest data; after a connect
it stays asked for until an EPOLLOUT comes alone (see ``_connect_done``).

ACKs owed to the guest (``TcpConn.ack_due``: a short write's, which the
answer's data usually carries) are swept by one timer for all flows, not
moved onto each flow's own: a flow that comes to owe one joins the queue
``owing`` unless it is there already, the timer is armed ACK_DELAY ahead
while the queue is not empty, and when it fires each flow in the queue is
asked ``on_ack_due``.  An owed ACK so goes out ACK_DELAY late at the most,
and a busy flow costs the queue an append once per ACK_DELAY, not per
exchange.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import functools
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .. import tcp, tcp_wire
from ..flow import FlowKey, FlowSection
from ..fwd import unmapped
from ..packet import IPPROTO_TCP, Inbound, parse_ethernet, parse_ip_frame
from ..tcp import State
from ..tcp_wire import ACK, RST, SYN
from .context import WorkerContext
from .loop import (
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    EPOLLRDHUP,
    Timer,
    accept_ready,
    close_socket,
)
from .outbound import DEFAULT_OUTBOUND

SO_PEEK_OFF = 42
SO_MEMINFO = 55
_MEMINFO = struct.Struct("=9I")           # SK_MEMINFO_* (linux/sock_diag.h)
MEMINFO_SNDBUF, MEMINFO_WMEM_QUEUED = 3, 5
EPOLLET = 1 << 31
SOCKET_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLET
HANGUP = EPOLLRDHUP | EPOLLHUP
READABLE = EPOLLIN | HANGUP
IN_OUT = EPOLLIN | EPOLLOUT
PEEK_BUFFER = 1 << 19
SHORT_ANSWER = 1 << 14              # a peek that drains the socket: the loop stays awake
WRITE_FAILED = -1                   # what _write returns when the socket failed
SYN_ACK = SYN | ACK
WINDOW_RECHECK = 0.002              # first look at a full socket's room, doubling
WINDOW_RECHECK_MAX = 0.1
MAXSEG_RANGE = range(88, 32768)     # what Linux takes for TCP_MAXSEG
# flow timers come due at multiples of this (a power of two: exact in a
# float), so that those of many flows share a wakeup: every connection has
# one to retransmit its SYN-ACK (the linger's end is the sweep's)
TIMER_GRAIN = 1 / 32
NO_TIMER = float("inf")
# plain ints: socket's MSG_* are enum flags, and each | of them builds a
# new enum member in Python code (a microsecond per call on the hot path)
SEND_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
PEEK_FLAGS = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
DISCARD_FLAGS = int(socket.MSG_TRUNC | socket.MSG_DONTWAIT)
OUTBOUND_TYPE = int(socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)


def _on_grain(deadline: float) -> float:
    """The first multiple of TIMER_GRAIN at or after ``deadline``."""
    return -(-deadline // TIMER_GRAIN) * TIMER_GRAIN


# pasta: (accepted socket, target port, peer address) -> taken (spliced instead)
Divert = Callable[[socket.socket, int, bytes], bool]


@dataclass(frozen=True)
class TcpListener:
    """A ``-t`` forwarded port: a bound, listening, non-blocking socket from
    the broker; a connection from peer P becomes a SYN to the guest's
    ``target_port`` from P as the guest sees it."""

    fd: int
    family: int
    port: int
    target_port: int


class Flow:
    """A TcpConn and its socket; ``sock`` is None once closed (lingering).
    ``drained``: the last peek found the socket's queue empty, so until a
    new edge (or a rewind) there is nothing to peek however the window grows;
    a new flow starts so, its socket not yet registered: registering an
    edge-triggered socket that has data raises the first edge (a peek at
    the handshake's end would only fail, a syscall and an exception).
    ``peek_off``: the socket's SO_PEEK_OFF is on.  Off, every peek starts
    at the front of the receive queue: right while nothing is in flight
    (a request's answer, as a rule), so the option is set only before the
    first peek behind bytes in flight (most short connections never set it).
    ``tracked``: in the flow table (a flag, not a lookup, on every event).
    ``sooner``: a deadline at or before it needs ``timer`` moved (it comes
    due at the next multiple of TIMER_GRAIN); infinite without a timer.
    ``fallback``: ``--clat``, an inbound IPv6 connection offered to the guest
    over IPv6: the IPv4 address it is offered from instead if the guest
    refuses it (a service listening on IPv4 only).  ``owing``: in the
    handler's queue of flows that owed an ACK (it may be paid since)."""

    __slots__ = ("conn", "sock", "key", "timer", "sooner", "recheck", "recheck_delay",
                 "want_out", "asks_out", "drained", "peek_off", "tracked", "fallback",
                 "owing")

    def __init__(self, conn: tcp.TcpConn, sock: socket.socket, key: FlowKey) -> None:
        self.conn, self.key = conn, key
        self.sock: socket.socket | None = sock
        self.timer: Timer | None = None
        self.sooner = NO_TIMER
        self.recheck: Timer | None = None
        self.recheck_delay = WINDOW_RECHECK
        self.want_out = self.asks_out = False
        self.drained = True
        self.peek_off = False
        self.tracked = False
        self.fallback: bytes | None = None
        self.owing = False


class TcpHandler:
    """Every TCP flow of the worker.  The loop calls ``on_guest_segment`` for
    the guest's TCP frames; sockets and timers call back on their own."""

    def __init__(self, ctx: WorkerContext, listeners: list[TcpListener], secret: bytes,
                 divert: Divert | None = None, tso: bool = False) -> None:
        """``divert``: pasta's splice of connections from the host itself;
        ``tso``: the link takes frames beyond the MTU (pasta's tap)."""
        self.loop, self.net, self.addrmap, self.log = ctx.loop, ctx.net, ctx.addrmap, ctx.log
        self.tso = tso
        # None without -o/--outbound-if*: nothing to bind, and prepare's
        # look at the socket's family (an IntEnum made in Python) is saved
        self.outbound = None if ctx.outbound == DEFAULT_OUTBOUND else ctx.outbound
        self.send_frame, self.guest_mac = ctx.link.send_tcp, ctx.guest_mac
        self.send_frames = ctx.link.send_tcp_frames
        self.secret = secret
        self.verify = ctx.config.verify_checksums
        self.flows: FlowSection[Flow] = ctx.flows.section(IPPROTO_TCP)
        self.find = self.flows.finder()
        self.buffer = bytearray(PEEK_BUFFER)
        self.view = memoryview(self.buffer)
        self.listeners: dict[int, tuple[socket.socket, TcpListener]] = {}
        self.divert = divert
        # closed flows, oldest first, each until its linger_until: every one
        # lingers tcp.LINGER, so one timer for the oldest sweeps them all
        self.lingering: deque[Flow] = deque()
        self.sweep: Timer | None = None
        # flows that owed the guest an ACK, each once; swept by one timer
        self.owing: deque[Flow] = deque()
        self.ack_sweep: Timer | None = None
        for listener in listeners:
            self.add_listener(listener)

    def active_flows(self) -> int:
        """Flows not yet closed (lingering ones do not hold the worker up)."""
        return sum(1 for key in self.flows if self._alive(key))

    def reset_all(self) -> None:
        """The guest is gone (passt mode, waiting for the next one): reset
        every flow towards its peer, nobody is left to answer for them."""
        for flow in [self.flows.get(key) for key in list(self.flows)]:
            if flow is not None:
                self._forget(flow, reset=True)

    def _alive(self, key: FlowKey) -> bool:
        flow = self.flows.get(key)
        return flow is not None and flow.conn.state is not State.CLOSED

    # -- the guest's segments -------------------------------------------------------
    def on_guest_segment(self, inb: Inbound, now: float) -> None:
        """A TCP frame from the guest; :class:`~passt_sep.packet.Drop` if malformed."""
        seg = tcp_wire.parse_tcp(inb, self.verify)
        # a plain tuple finds a FlowKey (equal, same hash) without FlowKey's
        # __new__ in Python; a new flow makes its FlowKey
        flow = self.find((IPPROTO_TCP, inb.src, seg.sport, inb.dst, seg.dport))
        if flow is not None and flow.fallback is None and seg.flags & SYN_ACK != SYN:
            self._handle(flow, flow.conn.on_guest_segment(seg, now), now)
            return                      # the common segment: no SYN, no --clat retry
        key = FlowKey(IPPROTO_TCP, inb.src, seg.sport, inb.dst, seg.dport)
        self._unusual_segment(seg, inb, key, flow, now)

    def on_segment(self, seg: tcp_wire.TcpSegment, src: bytes, dst: bytes, frame: memoryview,
                   now: float) -> None:
        """A TCP frame from the guest, parsed already (``tcp_wire.parse_tcp_frame``):
        as on_guest_segment; the records of the frame that the unusual
        segment needs are made only for it."""
        flow = self.find((IPPROTO_TCP, src, seg.sport, dst, seg.dport))
        if flow is not None and flow.fallback is None and seg.flags & SYN_ACK != SYN:
            self._handle(flow, flow.conn.on_guest_segment(seg, now), now)
            return
        key = FlowKey(IPPROTO_TCP, src, seg.sport, dst, seg.dport)
        self._unusual_segment(seg, parse_ip_frame(parse_ethernet(frame)), key, flow, now)

    def _unusual_segment(self, seg: tcp_wire.TcpSegment, inb: Inbound, key: FlowKey,
                         flow: Flow | None, now: float) -> None:
        """A SYN, a segment for no flow, or one for a ``--clat`` flow that
        may fall back to IPv4."""
        syn = seg.flags & SYN_ACK == SYN
        if flow is not None and syn and flow.conn.state is State.CLOSED:
            self._forget(flow)            # a new connection on a lingering flow's ports
            flow = None
        if flow is None:
            if syn:
                self._open_outbound(seg, inb, key, now)
            else:
                self.loop.counters.add("tcp_no_flow")
                self._refuse(seg, inb)
            return
        if flow.fallback is not None and seg.flags & RST and self._refused_syn(flow, seg):
            self._fall_back_to_ipv4(flow, now)
            return
        self._handle(flow, flow.conn.on_guest_segment(seg, now), now)

    def _refuse(self, seg: tcp_wire.TcpSegment, inb: Inbound) -> None:
        reply = tcp_wire.rst_for_unknown(seg, inb, self.net.our_mac, partial=self.tso)
        if reply is not None:
            self.send_frame(reply)

    def _open_outbound(self, seg: tcp_wire.TcpSegment, inb: Inbound, key: FlowKey,
                       now: float) -> None:
        if self.flows.full:
            self.loop.counters.add("tcp_flows_full")
            self._refuse(seg, inb)
            return
        host = self.addrmap.to_host(inb.dst, seg.dport)   # --clat: IPv4 may leave as IPv6
        family = socket.AF_INET6 if len(host) == 16 else socket.AF_INET
        try:
            # _socket.socket, the C type socket.socket derives from: the
            # latter's __init__ and close() run Python code per connection,
            # for makefile()'s reference counts (never used here)
            sock = _socket.socket(family, OUTBOUND_TYPE)
        except OSError:
            self.loop.counters.add("tcp_socket_error")     # out of fds, most likely
            self._refuse(seg, inb)
            return
        try:
            if self.outbound is not None:
                self.outbound.prepare(sock)
        except OSError as exc:
            sock.close()
            self.loop.counters.add("tcp_bind_error")
            self.log.ratelimited("tcp_bind", 4, f"cannot bind outbound socket: {exc.strerror}")
            self._refuse(seg, inb)
            return
        if seg.mss in MAXSEG_RANGE:       # before the connect: our SYN's MSS follows it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, seg.mss)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # the guest segmented
        isn = tcp.isn_for(self.secret, inb.dst, seg.dport, inb.src, seg.sport, now)
        conn = tcp.TcpConn.from_guest_syn(seg, inb, self.net, isn, now, self.tso)
        flow = Flow(conn, sock, key)
        flow.want_out = flow.asks_out = True
        self._track(flow, SOCKET_EVENTS | EPOLLOUT)
        code = sock.connect_ex((socket.inet_ntop(family, host), seg.dport))
        if code not in (0, errno.EINPROGRESS):
            self._connect_failed(flow, now)

    def _track(self, flow: Flow, events: int) -> None:
        """Into the table, and its socket into the loop: the socket's events
        come with the flow bound, no lookup by fd."""
        assert flow.sock is not None
        self.flows.add(flow.key, flow)
        flow.tracked = True
        self.loop.add_fd(flow.sock.fileno(), events, functools.partial(self._socket_event, flow))

    # -- carrying out Actions -------------------------------------------------------------
    def _handle(self, flow: Flow, actions: tcp.Actions, now: float) -> None:
        """One input's Actions, then the inputs its syscalls make, each
        carried out whole before the next: what the socket took of a write,
        then, with ``send_more``, the peeks.  The timer follows the last
        input's deadline (an earlier one is out of date by then)."""
        send_more = actions.send_more
        written = self._apply(flow, actions)
        if written is not None and flow.sock is not None:
            answer = flow.conn.on_socket_took(written, now) if written > 0 else None
            if answer is None:                  # failed, or the room must be measured
                actions = self._written(flow, written, now)
            else:                               # our ACK, and its window estimated
                actions = answer
                self.loop.stay_awake(now)       # a short write: likely a request
                if answer.frames:
                    self.send_frame(answer.frames[0])
                elif not flow.owing:            # the ACK owed instead
                    self._owe_ack(flow, now)
        if send_more and flow.sock is not None and not flow.drained:
            actions = self._pump(flow, now) or actions
        if flow.sock is not None:         # else forgotten, or lingering: swept
            deadline = actions.deadline
            if deadline is None or deadline <= flow.sooner:     # rarely: most keep the timer
                self._schedule(flow, deadline)

    def _apply(self, flow: Flow, actions: tcp.Actions) -> int | None:
        """Carry out one Actions value but its timer, in the order it
        documents.  Returns what a write of ``to_socket`` took
        (WRITE_FAILED: the socket failed), the connection's next input, or
        None without a write.  Of the socket's operations the guest's data
        goes first: the peer may be waiting for it (a request), and the
        rest is bookkeeping that can follow while it answers.  Acknowledged
        bytes are discarded with each acknowledgement: kept at the head of
        the receive queue, a few KiB of small segments can hold the whole
        receive buffer in the kernel's accounting (their skbs' truesize)
        and close the socket's window to its peer for good."""
        for frame in actions.frames:
            self.send_frame(frame)
        unusual = actions.unusual
        if unusual:
            if actions.drop is not None:
                self.loop.counters.add(actions.drop)
            if actions.reset:
                self._forget(flow, reset=True)
                return None
        written = None
        sock = flow.sock
        if sock is not None:
            if actions.to_socket is not None:
                written = self._write(sock, actions.to_socket)
                if written == WRITE_FAILED:
                    return written
            if unusual and actions.window_clamp is not None:
                self._clamp_window(sock, actions.window_clamp)
            if actions.acked:
                self._discard(sock, actions.acked)
            if unusual:
                self._socket_ends(flow, sock, actions)
        if unusual and actions.forget:
            self._forget(flow)
        return written

    def _socket_ends(self, flow: Flow, sock: socket.socket, actions: tcp.Actions) -> None:
        """The rest of an unusual Actions' socket operations, in order:
        rewind the peek, shut the socket for writing, close it."""
        if actions.retransmit:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            flow.drained, flow.peek_off = False, True
            self.loop.counters.add("tcp_retransmit")
        if actions.shutdown_write:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if actions.closed:
            self._close_socket(flow)
            self._linger(flow)

    @staticmethod
    def _clamp_window(sock: socket.socket, clamp: int) -> None:
        """Best effort, like passt: a socket that cannot take it still works."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, clamp)
        except OSError:
            pass

    def _write(self, sock: socket.socket, data: memoryview) -> int:
        """Guest data to the socket: how much it took, WRITE_FAILED if it failed."""
        try:
            written = sock.send(data, SEND_FLAGS)
        except BlockingIOError:
            written = 0
        except OSError:
            return WRITE_FAILED
        if written < len(data):
            self.loop.counters.add("tcp_socket_full")
        return written

    def _written(self, flow: Flow, written: int, now: float) -> tcp.Actions:
        """The outcome of a write, the connection's next input, carried out,
        the send buffer measured (``_handle`` answers the common write with
        ``on_socket_took``, its room estimated)."""
        sock = flow.sock
        assert sock is not None
        if written == WRITE_FAILED:
            return self._socket_error(flow, now)
        conn = flow.conn
        actions = conn.on_socket_accepted(written, *self._room(sock), now)
        if conn.socket_full:
            self._want_out(flow)
        if actions.shutdown_write:                # the guest's FIN went along
            self._apply(flow, actions)
        else:                                     # else it holds just our ACK
            for frame in actions.frames:
                self.send_frame(frame)
        return actions

    @staticmethod
    def _room(sock: socket.socket) -> tuple[int, int]:
        """(free, size) of the socket's send buffer as the kernel counts it,
        overhead included (SO_MEMINFO: sk_sndbuf - sk_wmem_queued): the
        window we offer the guest follows from it."""
        try:
            info = _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))
        except OSError:
            return 0, 0
        sndbuf = info[MEMINFO_SNDBUF]
        return max(sndbuf - info[MEMINFO_WMEM_QUEUED], 0), sndbuf

    def _discard(self, sock: socket.socket, count: int) -> None:
        """Drop acknowledged bytes from the receive queue without copying them
        (MSG_TRUNC); the peek offset moves back by as much (docs/design.md §6)."""
        while count > 0:
            try:
                got = sock.recv_into(self.view, min(count, PEEK_BUFFER), DISCARD_FLAGS)
            except OSError:
                return
            if got <= 0:
                return
            count -= got

    # -- socket events -------------------------------------------------------------------
    def _socket_event(self, flow: Flow, fd: int, events: int, now: float) -> None:
        """Most events are data and nothing else on a connected socket (a
        connecting one waits for EPOLLOUT, ``want_out``), EPOLLOUT along if
        still asked for (``asks_out``): straight to the peek."""
        if events | EPOLLOUT == IN_OUT and not flow.want_out and flow.sock is not None:
            actions = self._pump(flow, now, False)
        else:
            actions = self._other_event(flow, events, now)
        if actions is not None and flow.sock is not None:
            deadline = actions.deadline
            if deadline is None or deadline <= flow.sooner:     # rarely: most keep the timer
                self._schedule(flow, deadline)

    def _other_event(self, flow: Flow, events: int, now: float) -> tcp.Actions | None:
        """A connect's outcome, an error, room to write, a hang-up; the
        peek's Actions to schedule by, if it peeked."""
        if flow.sock is None:
            return None
        if flow.conn.state is State.CONNECTING:
            self._connect_done(flow, events, now)
            return None
        if events & EPOLLERR and flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._socket_error(flow, now)
            return None
        if events & EPOLLOUT:
            if flow.want_out:
                self._window_update(flow, now)
            elif not events & READABLE:
                self._stop_out(flow)          # room back, wanted no longer: stop asking
        if events & READABLE and flow.sock is not None:
            return self._pump(flow, now, bool(events & HANGUP))
        return None

    def _connect_done(self, flow: Flow, events: int, now: float) -> None:
        """The connect's outcome, from the events alone: a connect that
        failed (refused, unreachable, timed out) left an error and a closed
        socket, EPOLLERR and EPOLLHUP; else EPOLLOUT says it is done.  A
        reset that comes later is an error event of its own.  EPOLLOUT
        stays asked for (``asks_out``): the data events carry it along,
        and a connection that never fills its socket (a request and its
        answer) needs no epoll_ctl to drop it; an EPOLLOUT of its own, room
        back after the socket was full, does (``_other_event``).  Data or
        the peer's FIN that came with the connect are peeked once the
        guest acknowledges our SYN-ACK: this event was their edge."""
        sock = flow.sock
        assert sock is not None
        if events & (EPOLLERR | EPOLLHUP):
            self._connect_failed(flow, now)
            return
        if not events & EPOLLOUT:
            return                          # not done yet
        flow.want_out = False
        if events & READABLE:
            flow.drained = False
        self._handle(flow, flow.conn.on_connected(*self._room(sock), now), now)

    def _connect_failed(self, flow: Flow, now: float) -> None:
        self.loop.counters.add("tcp_connect_failed")
        self._apply(flow, flow.conn.on_connect_failed(now))      # forgets the flow

    def _socket_error(self, flow: Flow, now: float) -> tcp.Actions:
        self.loop.counters.add("tcp_socket_error")
        actions = flow.conn.on_socket_error(now)
        self._apply(flow, actions)                                 # forgets the flow
        return actions

    def _want_out(self, flow: Flow) -> None:
        if not flow.want_out and flow.sock is not None:
            flow.want_out = flow.asks_out = True
            # even if asked for already: the epoll_ctl reports the room
            # there is now (a window may wait for room the socket never
            # refused a write for: no EPOLLOUT edge would come)
            self.loop.modify_fd(flow.sock.fileno(), SOCKET_EVENTS | EPOLLOUT)

    def _stop_out(self, flow: Flow) -> None:
        if flow.asks_out and flow.sock is not None:
            flow.asks_out = False
            self.loop.modify_fd(flow.sock.fileno(), SOCKET_EVENTS)

    def _window_update(self, flow: Flow, now: float) -> None:
        """Offer the guest the room the socket has again.  The socket says
        "writable" before the room is worth a window (and not at all when it
        never refused a write), so while it is too little, look again soon."""
        sock = flow.sock
        if sock is None:
            return
        self._handle(flow, flow.conn.on_socket_writable(*self._room(sock)), now)
        if flow.sock is None:
            return
        if flow.conn.socket_full:
            if flow.recheck is None:
                flow.recheck = self.loop.call_at(now + flow.recheck_delay,
                                                 functools.partial(self._recheck, flow))
                flow.recheck_delay = min(flow.recheck_delay * 2, WINDOW_RECHECK_MAX)
            return
        flow.recheck_delay = WINDOW_RECHECK
        flow.want_out = False
        self._stop_out(flow)

    def _recheck(self, flow: Flow, now: float) -> None:
        flow.recheck = None
        if flow.tracked:
            self._window_update(flow, now)

    def _pump(self, flow: Flow, now: float, until_empty: bool = True) -> tcp.Actions | None:
        """Peek new socket data and send it while the guest's window allows,
        each peek an input whose Actions are carried out before the next;
        the last of them, None without any.  Without ``until_empty`` (an
        EPOLLIN edge, no hang-up), a short peek ends it: the queue was
        drained and what arrives later raises a new edge, so the peek that
        would only fail with EAGAIN is saved (one syscall and one exception
        per request/response).  A hang-up, or a call not caused by an edge,
        peeks until EAGAIN or end of file, which has no edge of its own once
        this one is consumed."""
        conn, sock, view = flow.conn, flow.sock, self.view
        assert sock is not None
        flow.drained = False
        actions = None
        while (budget := conn.send_budget()) > 0:
            wanted = min(budget, PEEK_BUFFER)
            if not flow.peek_off and conn.snd_nxt != conn.snd_una:   # bytes in flight
                sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF,
                                (conn.snd_nxt - conn.snd_una) & tcp_wire.MASK)
                flow.peek_off = True
            try:
                size = sock.recv_into(view, wanted, PEEK_FLAGS)
            except BlockingIOError:
                flow.drained = True
                break
            except OSError:
                return self._socket_error(flow, now)
            if not size:
                actions = conn.on_socket_eof(now)
                self._apply(flow, actions)
                break
            actions = conn.on_socket_data(view[:size], now)
            self.send_frames(actions.frames)      # all it holds but the deadline
            if size < wanted and not until_empty:
                flow.drained = True
                if size <= SHORT_ANSWER:        # likely the answer to a request
                    self.loop.stay_awake(now)
                break
        return actions

    # -- timers and the end of flows --------------------------------------------------
    def _schedule(self, flow: Flow, deadline: float | None) -> None:
        """Move the flow's timer to an earlier ``deadline`` (None: cancel
        it).  One loop timer per flow, moved only when the deadline comes
        earlier (the callers' test, ``sooner``); a timer that fires early
        just schedules the next one.  It fires up to TIMER_GRAIN late:
        TCP's deadlines are a second or more away, and timers due together
        cost one wakeup of the loop, not one each with a timerfd read and
        re-arm."""
        if flow.timer is not None:
            flow.timer.cancel()
        if deadline is None:
            flow.timer, flow.sooner = None, NO_TIMER
            return
        deadline = _on_grain(deadline)
        flow.timer = self.loop.call_at(deadline, functools.partial(self._on_timer, flow))
        flow.sooner = deadline - TIMER_GRAIN

    def _on_timer(self, flow: Flow, now: float) -> None:
        flow.timer, flow.sooner = None, NO_TIMER
        if not flow.tracked:
            return
        actions = flow.conn.on_timer(now)
        if actions.retransmit and flow.sock is not None:
            self.loop.counters.add("tcp_retransmit_timeout")
        self._handle(flow, actions, now)

    def _owe_ack(self, flow: Flow, now: float) -> None:
        """Into the queue of flows that owe an ACK, the sweep armed if it
        is not (see the module's docstring)."""
        flow.owing = True
        self.owing.append(flow)
        if self.ack_sweep is None:
            self.ack_sweep = self.loop.call_at(now + tcp.ACK_DELAY, self._send_owed_acks)

    def _send_owed_acks(self, now: float) -> None:
        """The ACKs still owed by the flows in the queue, which empties:
        those paid since by a frame, and those closed, send nothing.  A
        flow that fails (a bug: the loop carries on) leaves the rest to
        the next sweep, not queued for ever."""
        self.ack_sweep = None
        owing, send = self.owing, self.send_frame
        try:
            while owing:
                flow = owing.popleft()
                flow.owing = False
                if flow.sock is not None:
                    frame = flow.conn.on_ack_due()
                    if frame is not None:
                        send(frame)
        finally:
            if owing:
                self.ack_sweep = self.loop.call_at(now + tcp.ACK_DELAY, self._send_owed_acks)

    def _linger(self, flow: Flow) -> None:
        """Closed: the flow stays in the table until its ``linger_until``
        to acknowledge a retransmitted FIN, in the queue of lingering flows
        instead of on a timer of its own."""
        self._schedule(flow, None)
        self.lingering.append(flow)
        if self.sweep is None:
            self._sweep_at(flow.conn.linger_until)

    def _sweep_at(self, deadline: float) -> None:
        self.sweep = self.loop.call_at(_on_grain(deadline), self._sweep)

    def _sweep(self, now: float) -> None:
        """Forget the flows whose linger is over (those forgotten since,
        by a reset or a new SYN on their ports, just leave the queue)."""
        self.sweep = None
        lingering, flows = self.lingering, self.flows
        while lingering:
            flow = lingering[0]
            if flow.conn.linger_until > now:
                self._sweep_at(flow.conn.linger_until)
                return
            lingering.popleft()
            if flow.tracked:
                flow.tracked = False
                flows.remove(flow.key)

    def _close_socket(self, flow: Flow, reset: bool = False) -> None:
        sock = flow.sock
        if sock is None:
            return
        flow.sock = None
        self.loop.remove_fd(sock.fileno())
        if flow.recheck is not None:
            flow.recheck.cancel()
            flow.recheck = None
        close_socket(sock, reset)

    def _forget(self, flow: Flow, reset: bool = False) -> None:
        self._close_socket(flow, reset)
        self._schedule(flow, None)
        if flow.tracked:
            flow.tracked = False
            self.flows.remove(flow.key)

    # -- inbound: forwarded ports -----------------------------------------------------
    def remove_listener(self, fd: int) -> None:
        """Stop forwarding a port: close its listener (flows stay)."""
        entry = self.listeners.pop(fd, None)
        if entry is not None:
            self.loop.remove_fd(fd)
            entry[0].close()

    def add_listener(self, listener: TcpListener) -> None:
        sock = socket.socket(fileno=listener.fd)
        sock.setblocking(False)            # before the sandbox: ioctl(FIONBIO)
        self.listeners[listener.fd] = (sock, listener)
        self.loop.add_fd(listener.fd, EPOLLIN, self._accept)

    def _accept(self, fd: int, events: int, now: float) -> None:
        sock, listener = self.listeners[fd]
        accept_ready(self.loop, self.log, fd, sock, "tcp",
                     lambda accepted, address: self._inbound(accepted, listener, address, now))

    def _inbound(self, sock: socket.socket, listener: TcpListener, address: tuple,
                 now: float) -> None:
        # an IPv4 peer of a dual-stack listener as the IPv4 address it is
        peer = unmapped(socket.inet_pton(listener.family, address[0].split("%")[0]))
        if self.divert is not None and self.divert(sock, listener.target_port, peer):
            return                                  # taken by the loopback splice path
        params = self.net.ipv6 if len(peer) == 16 else self.net.ipv4
        # --clat: an IPv6 peer may reach the guest's IPv4 services too
        as_ipv4 = self.addrmap.to_ipv4_guest(peer) if len(peer) == 16 and self.net.ipv4 else None
        if params is None and as_ipv4 is not None:
            params, seen, as_ipv4 = self.net.ipv4, as_ipv4, None
        elif params is None:
            self._reject(sock, "tcp_no_family")
            return
        else:
            seen = self.addrmap.to_guest(peer, address[1])
        self._offer(sock, params.addr, listener.target_port, seen, address[1], now, as_ipv4)

    def _offer(self, sock: socket.socket, guest: bytes, guest_port: int, seen: bytes,
               peer_port: int, now: float, fallback: bytes | None = None) -> None:
        """A SYN to the guest for an accepted connection from ``seen``."""
        key = FlowKey(IPPROTO_TCP, guest, guest_port, seen, peer_port)
        old = self.flows.get(key)
        if old is not None and old.conn.state is State.CLOSED:
            self._forget(old)
        elif old is not None:
            self._reject(sock, "tcp_flow_exists")
            return
        if self.flows.full:
            self._reject(sock, "tcp_flows_full")
            return
        try:
            self._tune_accepted(sock)
        except OSError:               # reset by its peer already, say
            self._reject(sock, "tcp_accepted_gone")
            return
        isn = tcp.isn_for(self.secret, seen, peer_port, guest, guest_port, now)
        free, sndbuf = self._room(sock)
        conn, actions = tcp.TcpConn.for_accepted(
            guest_mac=self.guest_mac(), guest_addr=guest, guest_port=guest_port,
            peer_addr=seen, peer_port=peer_port, net=self.net, isn=isn,
            free=free, sndbuf=sndbuf, now=now, tso=self.tso)
        flow = Flow(conn, sock, key)
        flow.fallback = fallback
        self._track(flow, SOCKET_EVENTS)
        self._handle(flow, actions, now)

    def _tune_accepted(self, sock: socket.socket) -> None:
        """Non-blocking and tuned, only once it is to be offered: a refused
        connection costs no more than its reset."""
        fd = sock.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # the guest segments

    @staticmethod
    def _refused_syn(flow: Flow, seg: tcp_wire.TcpSegment) -> bool:
        """The guest's RST answers our SYN (RFC 9293 3.10.7.3)."""
        conn = flow.conn
        return conn.state is State.SYN_SENT and bool(seg.flags & ACK) and seg.ack == conn.snd_nxt

    def _fall_back_to_ipv4(self, flow: Flow, now: float) -> None:
        """``--clat``: the guest refused the connection over IPv6: offer it
        again over IPv4, from the peer's IPv4 view, on the same socket."""
        sock, seen = flow.sock, flow.fallback
        assert sock is not None and seen is not None and self.net.ipv4 is not None
        self.loop.remove_fd(sock.fileno())
        flow.sock = None
        self._forget(flow)
        self.loop.counters.add("tcp_clat_ipv4_retry")
        self._offer(sock, self.net.ipv4.addr, flow.conn.guest_port, seen, flow.conn.peer_port,
                    now)

    def _reject(self, sock: socket.socket, reason: str) -> None:
        """Refuse an accepted connection: its peer sees a reset."""
        self.loop.counters.add(reason)
        close_socket(sock, reset=True)


def new_secret() -> bytes:
    """The per-process key of the ISN hash (RFC 6528)."""
    return os.urandom(16)
