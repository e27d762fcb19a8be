"""TCP translation between the guest's segments and host sockets, no I/O.

Theory of operation
-------------------
passt-sep has no TCP stack (passt's design).  Each guest connection is
paired with one kernel TCP socket on the host, and what one side can observe
of the other is mirrored: sequence numbers are ours towards the guest,
acknowledgements follow what the socket took, windows follow what the
socket and the guest can take.  This module decides; ``tcp_wire.py``
parses and builds the headers, ``worker/tcp_io.py`` does the syscalls.
Everything is driven by method calls that pass ``now``; nothing here reads
a clock or touches a socket.

Directions
    Outbound: the guest's SYN makes the I/O layer open a non-blocking socket
    and ``connect()`` it (``TcpConn.from_guest_syn``, state CONNECTING).  When
    the socket connects, the guest gets our SYN-ACK (``on_connected``,
    SYN_RCVD); when it fails, a RST (``on_connect_failed``).  The guest's
    ACK of the SYN-ACK makes the flow ESTABLISHED.
    Inbound: a connection accepted on a forwarded port (``-t``) becomes a SYN
    to the guest (``TcpConn.for_accepted``, SYN_SENT), from the peer's
    address as the guest sees it.  The guest's SYN-ACK makes it ESTABLISHED;
    its RST, or no answer after a few SYN retries, closes the socket with
    RST.

Guest to host
    In-order payload, with what the socket already has trimmed off the
    front, goes to the socket (``Actions.to_socket``).  The guest is
    acknowledged exactly what the socket accepted (``on_socket_accepted``),
    so nothing waits in this process: what the socket refused the guest
    sends again.  The window we advertise is the payload the socket's send
    buffer can still take, estimated from the kernel's own accounting
    (``free`` of ``sndbuf``, SO_MEMINFO) with room for the kernel's
    per-packet overhead: a write the socket refuses costs the guest a
    retransmission timeout, so the estimate errs low.  A write shorter than
    1 KiB, with half the buffer left, needs no measurement
    (``on_socket_took``): the last one less what was written since, each
    write charged its overhead, errs low too.  Too little room is
    advertised as none (receiver-side silly-window avoidance) and a window
    update follows when the socket drains (``on_socket_writable``).
    Segments beyond ``rcv_nxt`` are dropped (we keep no reassembly queue)
    and answered with a duplicate ACK so that the guest retransmits the gap
    at once.

Delayed ACK
    As passt does (its ACK_TO_TAP_DUE and ACK_INTERVAL), the ACK of a
    short write answered from the estimated room (``on_socket_took``) is
    owed (``ack_due``) rather than sent: a request's answer usually follows
    within a fraction of a millisecond and carries it, as every frame to
    the guest carries ``rcv_nxt``, so a request/response exchange costs one
    frame to the guest, not two.  When none does, the I/O layer asks
    ``on_ack_due`` within ``ACK_DELAY``, which sends the bare ACK with the
    window as it stands then (``_window_field``: none rather than less
    than a segment).  Everything else is acknowledged at once as before: a
    write of SMALL_WRITE or more or of a whole segment (bulk: the sender's
    pace is our ACKs), one the socket refused in part, one that leaves less
    than half the buffer (the window the guest must hear about), a FIN,
    data out of order, and a second short write while an ACK is owed (two
    segments unacknowledged, Linux's rule: a sender with Nagle waits for
    our ACK, and its loss probe would fire sooner).

Host to guest
    Data stays in the socket's receive queue until the guest acknowledges
    it.  The I/O layer peeks at it (``MSG_PEEK`` with ``SO_PEEK_OFF``, so
    each peek continues where the last one ended), at most ``send_budget()``
    bytes: the guest's window minus what is in flight.  ``on_socket_data``
    cuts it into segments of the guest's MSS.  Bytes the guest acknowledges
    are reported in ``Actions.acked`` and the I/O layer discards them from
    the socket (``MSG_TRUNC``).  Retransmission never needs a copy: it
    rewinds (``snd_nxt = snd_una``; ``Actions.retransmit`` tells the I/O layer
    to set the peek offset back to 0) and the data is peeked again, after
    three duplicate ACKs (once per window: NewReno's ``recover`` point) or
    when the retransmission timer expires.  Until ``recover`` is reached
    one segment at a time goes out, each after the ACK of the one before:
    the guest usually holds the rest already, and its ACK then jumps ahead
    (``snd_nxt`` follows it).  Invariant: the socket's peek offset is
    ``snd_nxt - snd_una``.

Windows and options
    Our SYN/SYN-ACK carries MSS (the MTU's) and window scale (``OUR_WSCALE``,
    only if the guest offered scaling, or in our own SYN).  The guest's MSS
    and scale come from its SYN or SYN-ACK (defaults 536 / 1220 bytes, no
    scaling).  No timestamps, no SACK: we never announce them, so the guest
    never uses them.  The guest's MSS becomes the socket's TCP_MAXSEG and its
    window the socket's TCP_WINDOW_CLAMP (``Actions.window_clamp``), as passt
    does: the socket then offers its peer no more than the guest can take,
    and data waits at the sender rather than in the socket's receive queue.
    The clamp follows the window in steps of a quarter (a syscall per ACK
    would cost more than the precision is worth) and never goes below
    ``MIN_CLAMP``: a clamp shrunk to a zero window makes Linux's receive
    window grow back slowly from a few KiB once the guest reads again.

Ending
    A guest FIN in order becomes ``shutdown(SHUT_WR)`` (``shutdown_write``);
    the socket's end of file (a peek returning 0) becomes a FIN to the guest
    once all data before it was sent.  When the guest's FIN was passed on
    and our FIN is acknowledged, the flow is CLOSED (``closed``: the socket
    can be closed) and lingers briefly to acknowledge a retransmitted FIN
    rather than reset it.  A guest RST in the window closes the socket with
    SO_LINGER 0 so its peer sees a reset (``reset``); a socket error becomes
    a RST to the guest (``on_socket_error``).

Time
    Each input's ``Actions.deadline`` (and ``next_deadline()``) says when
    ``on_timer`` wants to run: SYN and SYN-ACK retries, retransmission with
    exponential back-off (RST after ``MAX_RETRIES``; the FIN's timeout is
    its retransmission schedule), zero-window probes, the inactivity limit
    (2 h, like passt) and the end of the closed state's linger.

States: CONNECTING, SYN_RCVD (outbound handshake), SYN_SENT (inbound
handshake), ESTABLISHED (with the half-close flags ``guest_fin``,
``sock_eof``/``fin_sent``/``fin_acked``), CLOSED.
"""

from __future__ import annotations

import enum

# hashlib's own BLAKE2s, without hashlib, which loads OpenSSL's libcrypto
# at import (some 5 ms of every start, and its pages in every process)
from _blake2 import blake2s
from dataclasses import dataclass, field

from .netparams import Network
from .packet import IPV4_HLEN, IPV6_HLEN, Inbound
from .tcp_wire import (
    ACK,
    FIN,
    MASK,
    PSH,
    RST,
    SYN,
    TCP_HLEN,
    Frame,
    FrameTemplate,
    TcpSegment,
    syn_options,
)

HALF = 0x80000000
OUR_WSCALE = 7
MAX_WINDOW = 0xFFFF << OUR_WSCALE        # about 8 MiB
RCV_SEGMENTS = 256                       # a tap's queue holds 500 to 1000 frames
SKB_OVERHEAD = 1024                      # kernel bytes per packet beyond its payload
SMALL_WRITE = 1024                       # a write in one skb: its room may be estimated
DEFAULT_MSS4, DEFAULT_MSS6 = 536, 1220   # RFC 9293 3.7.1, RFC 8200 5
MIN_MSS = 48                             # Linux's TCP_MIN_SND_MSS
DUP_ACK_THRESHOLD = 3
TSO_MAX_PAYLOAD = 0xFFFF - IPV4_HLEN - TCP_HLEN   # an IPv4 packet's limit (IPv6's is larger)
SYN_TIMEOUT = 1.0                        # first SYN / SYN-ACK retry, doubling
SYN_RETRIES = 3
ACK_TIMEOUT = 1.0                        # first data retransmission, doubling
ACK_DELAY = 0.010                        # an owed ACK goes out this late at the latest
MAX_RTO = 60.0
MAX_RETRIES = 8
INACTIVITY = 7200.0
LINGER = 2.0
MIN_CLAMP = 0x10000                      # TCP_WINDOW_CLAMP floor, bytes
CLAMP_STEP = 4                           # re-clamp on a change of a quarter or more
ACK_PSH = ACK | PSH


def seq_lt(a: int, b: int) -> bool:
    """a before b in 32-bit sequence space (RFC 1982)."""
    return (a - b) & MASK >= HALF


def isn_for(secret: bytes, local: bytes, lport: int, remote: bytes, rport: int,
            now: float) -> int:
    """RFC 6528: ISN = M + F(localip, localport, remoteip, remoteport, key),
    M a 4-microsecond clock, F a keyed hash (BLAKE2s, 16-byte secret)."""
    digest = blake2s(local + lport.to_bytes(2, "big") + remote + rport.to_bytes(2, "big"),
                             key=secret, digest_size=4).digest()
    return (int(now * 250_000) + int.from_bytes(digest, "big")) & MASK


class State(enum.Enum):
    __hash__ = object.__hash__    # members are singletons; Enum's hash runs Python code

    CONNECTING = "connecting"     # outbound: guest SYN seen, socket connecting
    SYN_RCVD = "syn_rcvd"         # outbound: our SYN-ACK sent, waiting for the ACK
    SYN_SENT = "syn_sent"         # inbound: our SYN sent, waiting for the SYN-ACK
    ESTABLISHED = "established"   # data both ways, half-closes by flags
    CLOSED = "closed"             # done; lingers until next_deadline()


@dataclass(slots=True)
class Actions:
    """A TcpConn's answer to one input: frames for the guest, operations on
    the socket and the timer.  The I/O layer carries them out in this order,
    all of them before the connection's next input: send ``frames``; count
    ``drop`` (a counter's name); on ``reset`` close the socket with RST and
    forget the flow (nothing below applies); write ``to_socket``; set
    ``window_clamp`` as the socket's TCP_WINDOW_CLAMP; discard ``acked``
    bytes from its receive queue; on ``retransmit`` set its
    peek offset to 0; ``shutdown_write``; on ``closed`` close the socket
    (the flow lingers); on ``forget`` drop the flow; call ``on_timer`` at
    ``deadline`` (None: no timer).  Then come the inputs these operations
    make: what the write took (``on_socket_took``, or where that answers
    None ``on_socket_accepted`` with the send buffer measured;
    ``on_socket_error`` if it failed), and with ``send_more``, once that is
    carried out too, peeks within ``send_budget()`` (``on_socket_data``,
    ``on_socket_eof``).  With ``to_socket`` the input is not done until the
    write's answer, and the timer comes with that answer (``deadline`` is
    None here: computing it twice per segment of guest data would cost the
    hot path a call).  ``on_socket_took`` answers with our ACK or with no
    frame at all: then the ACK is owed (``ack_due``), and unless a frame
    of a later input carries it, ``on_ack_due`` is to be called within
    ACK_DELAY.

    Each connection answers every input with the same object, emptied: it
    is valid until the connection's next input (a new one per input cost
    5% of a data/ACK exchange).  But ``on_socket_took`` and
    ``on_socket_data``, two of the three inputs of a request/response
    exchange, answer with a second object of the connection's, which
    never holds more than ``frames`` and ``deadline``: it is emptied by
    emptying its frames, without ``clear`` (a call and some 20 bytecodes
    each).  ``unusual`` is set with any of ``drop``,
    ``reset``, ``window_clamp``, ``retransmit``, ``shutdown_write``,
    ``closed`` and ``forget``: without it neither ``clear`` nor the I/O
    layer looks at them (most inputs only move data and ACKs)."""

    frames: list[Frame] = field(default_factory=list)
    to_socket: memoryview | None = None
    acked: int = 0
    send_more: bool = False
    deadline: float | None = None
    unusual: bool = False
    retransmit: bool = False
    shutdown_write: bool = False
    reset: bool = False
    closed: bool = False
    forget: bool = False
    drop: str | None = None
    window_clamp: int | None = None

    def clear(self) -> None:
        """Empty again, for the next input (cheaper than a new object)."""
        self.frames.clear()
        self.to_socket = self.deadline = None
        self.acked = 0
        self.send_more = False
        if self.unusual:
            self.drop = self.window_clamp = None
            self.retransmit = self.shutdown_write = self.reset = self.closed = False
            self.forget = self.unusual = False


class TcpConn:
    """One guest connection, driven by its inputs, each answered with one
    :class:`Actions`:

    - the guest: ``on_guest_segment``;
    - the socket: ``on_connected`` and ``on_connect_failed`` (outbound),
      ``on_socket_took`` and ``on_socket_accepted`` (what a write of
      ``to_socket`` took, without and with the send buffer measured),
      ``on_socket_writable`` (its send buffer drained), ``on_socket_data``
      (bytes peeked), ``on_socket_eof`` and ``on_socket_error``;
    - the clock: ``on_timer``, and ``on_ack_due`` (ACK_DELAY after an ACK
      became owed: the bare ACK, unless a frame carried it since).

    A flow begins with ``from_guest_syn`` (nothing to send until the socket
    connects) or ``for_accepted`` (our SYN, in its Actions).  The I/O layer
    may also ask, which changes nothing: ``send_budget()`` (how much to peek
    next), ``next_deadline()``, ``state``, ``socket_full`` (the window we
    offer is closed: watch the socket for room) and ``ack_due`` (an ACK is
    owed to the guest: see the module's docstring).

    Sequence numbers: ``snd_*`` count our bytes towards the guest
    (``snd_max`` the highest ever sent, ``snd_nxt`` where the next peek
    continues), ``rcv_nxt`` the guest's next byte we expect."""

    __slots__ = (
        "state", "tx", "guest_addr", "guest_port", "peer_addr", "peer_port", "mtu_mss",
        "isn", "snd_una", "snd_nxt", "snd_max", "rcv_nxt", "guest_mss", "snd_mss",
        "guest_wscale", "our_wscale", "guest_window", "rcv_window", "socket_full",
        "dup_acks", "recover", "retries", "rto", "rtx_deadline", "last_activity",
        "guest_fin", "sock_eof", "fin_seq", "fin_sent", "fin_acked", "pending",
        "linger_until", "clamp", "sock_free", "sock_buf", "ack_due", "actions", "quick",
    )

    def __init__(self, state: State, *, guest_mac: bytes, guest_addr: bytes, guest_port: int,
                 peer_addr: bytes, peer_port: int, net: Network, isn: int, now: float,
                 tso: bool = False) -> None:
        v6 = len(guest_addr) == 16
        self.state = state
        self.tx = FrameTemplate(guest_mac, net.our_mac, peer_addr, guest_addr, peer_port,
                                guest_port, tso)
        self.guest_addr, self.guest_port = guest_addr, guest_port
        self.peer_addr, self.peer_port = peer_addr, peer_port
        self.mtu_mss = net.mtu - (IPV6_HLEN if v6 else IPV4_HLEN) - TCP_HLEN
        self.isn = isn
        self.snd_una = isn                      # our SYN: sent now or once connected
        self.snd_nxt = self.snd_max = (isn + 1) & MASK
        self.rcv_nxt = 0
        self.guest_mss = DEFAULT_MSS6 if v6 else DEFAULT_MSS4
        self.snd_mss = max(min(self.guest_mss, self.mtu_mss), MIN_MSS)
        self.guest_wscale = 0                   # shift for the guest's window fields
        self.our_wscale = OUR_WSCALE            # 0 once we know the guest does not scale
        self.guest_window = 0                   # bytes
        self.rcv_window = 0xFFFF                # bytes the socket can take
        self.socket_full = False                # advertise no window
        self.dup_acks = 0
        self.recover = isn                      # fast retransmit once per window
        self.retries = 0
        self.rto = SYN_TIMEOUT
        self.rtx_deadline: float | None = None
        self.last_activity = now
        self.guest_fin = False                  # the guest's FIN passed on in order
        self.sock_eof = False                   # the socket reached end of file...
        self.fin_seq = 0                        # ...at this sequence number
        self.fin_sent = False
        self.fin_acked = False
        self.pending = (0, False)               # to_socket length, FIN behind it
        self.linger_until = 0.0
        self.clamp = 0                          # the socket's TCP_WINDOW_CLAMP, 0: unset
        self.sock_free = 0                      # the send buffer's free bytes, at least
        self.sock_buf = 0                       # its size, as last measured
        self.ack_due = False                    # rcv_nxt not yet sent to the guest
        self.actions = Actions()                # every input's answer, reused...
        self.quick = Actions()                  # ...but those of frames and deadline only

    @property
    def tso(self) -> bool:
        """The link completes checksums and splits big frames (pasta's
        tap): every frame carries a partial checksum (FrameTemplate), and
        data frames hold as many segments as an IP packet does."""
        return self.tx.partial

    @tso.setter
    def tso(self, value: bool) -> None:
        self.tx.partial = value

    # -- opening -------------------------------------------------------------------
    @classmethod
    def from_guest_syn(cls, seg: TcpSegment, inb: Inbound, net: Network, isn: int,
                       now: float, tso: bool = False) -> TcpConn:
        """The guest's SYN: a flow waiting for the host socket to connect."""
        conn = cls(State.CONNECTING, guest_mac=inb.eth.src, guest_addr=inb.src,
                   guest_port=seg.sport, peer_addr=inb.dst, peer_port=seg.dport, net=net,
                   isn=isn, now=now, tso=tso)
        conn._take_syn_options(seg)
        conn.rcv_nxt = (seg.seq + 1) & MASK
        conn.guest_window = seg.window          # never scaled in a SYN
        return conn

    @classmethod
    def for_accepted(cls, *, guest_mac: bytes, guest_addr: bytes, guest_port: int,
                     peer_addr: bytes, peer_port: int, net: Network, isn: int, free: int,
                     sndbuf: int, now: float, tso: bool = False) -> tuple[TcpConn, Actions]:
        """An accepted host connection: the flow, and the SYN for the guest."""
        conn = cls(State.SYN_SENT, guest_mac=guest_mac, guest_addr=guest_addr,
                   guest_port=guest_port, peer_addr=peer_addr, peer_port=peer_port, net=net,
                   isn=isn, now=now, tso=tso)
        actions = conn.actions
        conn._set_room(free, sndbuf)
        conn.rtx_deadline = now + conn.rto
        actions.frames.append(conn._syn_frame(SYN))
        return conn, conn._done(actions)

    def on_connected(self, free: int, sndbuf: int, now: float) -> Actions:
        """The host socket connected: SYN-ACK to the guest.  ``free`` of
        ``sndbuf``: the socket's send buffer, for our first window."""
        actions = self.actions
        actions.clear()
        self.state = State.SYN_RCVD
        self._set_room(free, sndbuf)
        self.rtx_deadline = now + self.rto
        actions.frames.append(self._syn_frame(SYN | ACK))
        return self._done(actions)

    def on_connect_failed(self, now: float) -> Actions:
        """The host refused or is unreachable: RST for the guest's SYN, and
        the flow is done."""
        actions = self.actions
        actions.clear()
        self.state = State.CLOSED
        actions.frames.append(self.tx.build(0, self.rcv_nxt, RST | ACK, 0))
        actions.forget = actions.unusual = True
        return self._done(actions)

    def _take_syn_options(self, seg: TcpSegment) -> None:
        if seg.mss:
            self.guest_mss = seg.mss
        self.snd_mss = max(min(self.guest_mss, self.mtu_mss), MIN_MSS)
        if seg.wscale is None:
            self.guest_wscale = self.our_wscale = 0
        else:
            self.guest_wscale = seg.wscale

    def _syn_frame(self, flags: int) -> bytearray:
        """Our SYN or SYN-ACK: window never scaled, MSS from the MTU."""
        wscale = self.our_wscale if self.our_wscale else None
        return self.tx.build(self.isn, self.rcv_nxt if flags & ACK else 0, flags,
                             min(self.rcv_window, 0xFFFF), b"",
                             syn_options(self.mtu_mss, wscale))

    # -- frames --------------------------------------------------------------------------
    def _window_field(self) -> int:
        if self.socket_full:
            return 0
        return min(self.rcv_window >> self.our_wscale, 0xFFFF)

    def _ack(self) -> Frame:
        self.ack_due = False
        return self.tx.ack(self.snd_nxt, self.rcv_nxt, self._window_field())

    def _rst(self) -> bytearray:
        return self.tx.build(self.snd_nxt, self.rcv_nxt, RST | ACK, 0)

    def _done(self, actions: Actions) -> Actions:
        """``actions`` with the timer the input leaves."""
        actions.deadline = self.next_deadline()
        return actions

    # -- the guest's segments -----------------------------------------------------------
    def on_guest_segment(self, seg: TcpSegment, now: float) -> Actions:
        actions = self.actions
        actions.clear()
        self.last_activity = now
        if not (self.state is State.ESTABLISHED and self._predicted(seg, actions, now)):
            _GUEST_HANDLERS[self.state](self, seg, actions, now)
        if actions.to_socket is None:      # else on_socket_accepted's answer has it
            actions.deadline = self.next_deadline()
        return actions

    def _predicted(self, seg: TcpSegment, actions: Actions, now: float) -> bool:
        """Header prediction (Van Jacobson's, as in BSD and Linux): the
        common segment of an established flow, in order, with ACK (and PSH)
        only, the same non-zero window, and new data or a new ACK, no FIN
        either way.  It needs none of the general path's checks, which it
        would pass through unchanged; False, with nothing changed, sends
        every other segment there."""
        if (seg.flags & ~PSH != ACK or seg.seq != self.rcv_nxt or self.guest_fin
                or self.sock_eof or not self.guest_window
                or seg.window << self.guest_wscale != self.guest_window):
            return False
        ack, snd_una = seg.ack, self.snd_una
        advance = (ack - snd_una) & MASK
        size = len(seg.payload)
        if advance > (self.snd_max - snd_una) & MASK or not (advance or size):
            return False
        if advance:
            self._acknowledged(ack, advance, actions, now)
        if size:
            actions.to_socket = seg.payload
            self.pending = (size, False)
        return True

    def _seg_connecting(self, seg: TcpSegment, actions: Actions, now: float) -> None:
        """Nothing to answer before the socket connects; a retransmitted SYN
        waits too.  A RST for the SYN aborts the connect."""
        if seg.flags & RST and seg.seq == self.rcv_nxt:
            self._reset_by_guest(actions)

    def _seg_syn_rcvd(self, seg: TcpSegment, actions: Actions, now: float) -> None:
        flags = seg.flags
        if flags & RST:
            if seg.seq == self.rcv_nxt:
                self._reset_by_guest(actions)
            return
        if flags & SYN:
            if not flags & ACK and seg.seq == (self.rcv_nxt - 1) & MASK:
                actions.frames.append(self._syn_frame(SYN | ACK))   # ours was lost
            return
        if seg.ack != self.snd_nxt:
            actions.frames.append(self.tx.build(seg.ack, 0, RST, 0))
            return
        self._established(seg.window << self.guest_wscale, actions)
        self._seg_established(seg, actions, now)

    def _seg_syn_sent(self, seg: TcpSegment, actions: Actions, now: float) -> None:
        flags = seg.flags
        acceptable = bool(flags & ACK) and seg.ack == self.snd_nxt
        if flags & RST:
            if acceptable:
                self._reset_by_guest(actions)
            return
        if flags & ACK and not acceptable:
            actions.frames.append(self.tx.build(seg.ack, 0, RST, 0))
            return
        if not (flags & SYN and acceptable):
            return
        self._take_syn_options(seg)
        self.rcv_nxt = (seg.seq + 1) & MASK
        self._established(seg.window, actions)   # a SYN-ACK's window is never scaled
        actions.frames.append(self._ack())

    def _established(self, window: int, actions: Actions) -> None:
        self.state = State.ESTABLISHED
        self.snd_una = self.snd_nxt
        self.recover = self.snd_nxt
        self.guest_window = window
        self.rtx_deadline = None
        self.retries = 0
        self.rto = ACK_TIMEOUT
        actions.send_more = True
        self._mirror_window(actions)

    def _mirror_window(self, actions: Actions) -> None:
        """The guest's window as the socket's clamp, when it moved enough."""
        clamp = min(max(self.guest_window, MIN_CLAMP), MAX_WINDOW)
        if self.clamp and abs(clamp - self.clamp) * CLAMP_STEP < self.clamp:
            return
        self.clamp = actions.window_clamp = clamp
        actions.unusual = True

    def _seg_established(self, seg: TcpSegment, actions: Actions, now: float) -> None:
        flags = seg.flags
        if flags & RST:
            if (seg.seq - self.rcv_nxt) & MASK <= MAX_WINDOW:
                self._reset_by_guest(actions)
            return
        if flags & SYN:
            actions.frames.append(self._ack())   # RFC 5961 4.2 challenge, or our ACK was lost
            return
        if not self._process_ack(seg, actions, now):
            return
        self._process_data(seg, actions, now)
        if self.sock_eof:
            self._maybe_fin(actions.frames, now)
        if self.guest_fin:
            self._check_closed(actions, now)

    def _seg_closed(self, seg: TcpSegment, actions: Actions, now: float) -> None:
        """Lingering: acknowledge a retransmitted FIN, reset stray data."""
        if seg.flags & (RST | SYN):
            return
        if seg.flags & FIN:
            actions.frames.append(self._ack())
        elif len(seg.payload):
            actions.frames.append(self.tx.build(seg.ack, 0, RST, 0))

    def _reset_by_guest(self, actions: Actions) -> None:
        self.state = State.CLOSED
        actions.reset = actions.forget = actions.unusual = True

    def _process_ack(self, seg: TcpSegment, actions: Actions, now: float) -> bool:
        """Take the guest's acknowledgement and window; False: drop the segment
        (it acknowledges what we never sent)."""
        advance = (seg.ack - self.snd_una) & MASK
        outstanding = (self.snd_max - self.snd_una) & MASK
        if advance > outstanding:
            if advance < HALF:
                actions.frames.append(self._ack())
                actions.drop = "tcp_ack_unsent"
                actions.unusual = True
                return False
            return True                               # an old ACK: only the data counts
        window = seg.window << self.guest_wscale
        if advance:
            self._acknowledged(seg.ack, advance, actions, now)
        elif (outstanding and not len(seg.payload) and not seg.flags & FIN
              and window == self.guest_window):
            self.dup_acks += 1
            if self.dup_acks == DUP_ACK_THRESHOLD and not seq_lt(self.snd_una, self.recover):
                self._rewind(actions, now)
        if window > self.guest_window:
            actions.send_more = True
        if window != self.guest_window:
            self.guest_window = window
            self._mirror_window(actions)
        if not window and self.snd_max == self.snd_una and self.rtx_deadline is None:
            self.rtx_deadline = now + self.rto    # probe the zero window
        return True

    def _acknowledged(self, ack: int, advance: int, actions: Actions, now: float) -> None:
        if self.sock_eof and ack == (self.fin_seq + 1) & MASK:
            self.fin_sent = self.fin_acked = True
            advance -= 1
        actions.acked = advance
        # seq_lt in line: this runs for every acknowledgement
        if (ack - self.recover) & MASK < HALF:
            self.recover = ack                        # not in recovery: keep up
        self.snd_una = ack
        if (self.snd_nxt - ack) & MASK >= HALF:
            self.snd_nxt = ack                        # sent before a rewind: not again
        self.dup_acks = self.retries = 0
        self.rto = ACK_TIMEOUT
        self.rtx_deadline = now + self.rto if self.snd_max != ack else None
        actions.send_more = True

    def _process_data(self, seg: TcpSegment, actions: Actions, now: float) -> None:
        payload = seg.payload
        fin = 1 if seg.flags & FIN else 0
        behind = (self.rcv_nxt - seg.seq) & MASK
        if not len(payload) and not fin:
            if behind:   # a zero-window probe or keep-alive: it needs our window
                actions.frames.append(self._ack())
            return
        if behind >= HALF:
            ahead = (seg.seq - self.rcv_nxt) & MASK
            actions.drop = ("tcp_out_of_window" if ahead > max(self.rcv_window, 0xFFFF)
                            else "tcp_out_of_order")
            actions.unusual = True
            actions.frames.append(self._ack())       # a duplicate ACK: resend the gap
            return
        if behind >= len(payload) + fin or self.guest_fin:
            actions.frames.append(self._ack())       # all old: acknowledge again
            return
        if behind < len(payload):
            actions.to_socket = payload[behind:]
            self.pending = (len(payload) - behind, bool(fin))
            return
        self._guest_fin(actions, now)

    def _guest_fin(self, actions: Actions, now: float) -> None:
        self.guest_fin = True
        self.rcv_nxt = (self.rcv_nxt + 1) & MASK
        actions.shutdown_write = actions.unusual = True
        actions.frames.append(self._ack())
        self._check_closed(actions, now)

    def _check_closed(self, actions: Actions, now: float) -> None:
        if self.guest_fin and self.fin_acked and self.state is State.ESTABLISHED:
            self.state = State.CLOSED
            self.linger_until = now + LINGER
            self.rtx_deadline = None
            actions.closed = actions.unusual = True

    # -- the socket's side -----------------------------------------------------------
    def on_socket_accepted(self, accepted: int, free: int, sndbuf: int, now: float) -> Actions:
        """The socket took ``accepted`` bytes of ``to_socket`` and has
        ``free`` bytes of ``sndbuf`` left: acknowledge what it took (and the
        FIN behind it, if all of it went), advertise the room."""
        actions = self.actions
        actions.clear()
        length, fin = self.pending
        self.pending = (0, False)
        self.ack_due = False                # this ACK carries any owed one
        self.rcv_nxt = (self.rcv_nxt + accepted) & MASK
        self._set_room(free, sndbuf)
        if accepted < length:
            self.socket_full = True
        if fin and accepted == length:
            self._guest_fin(actions, now)
        else:
            actions.frames.append(self.tx.ack(self.snd_nxt, self.rcv_nxt,
                                              self._window_field()))
        actions.deadline = self.next_deadline()
        return actions

    def on_socket_took(self, accepted: int, now: float) -> Actions | None:
        """What a write of ``to_socket`` took, its send buffer not measured:
        as ``on_socket_accepted``, the room estimated from the last
        measurement less what the writes since took, each charged a whole
        skb's overhead (a write shorter than SMALL_WRITE and a segment
        starts one skb at most), so that the estimate only ever errs low:
        the socket frees room, it never takes more than that.  None, with
        nothing changed, when the estimate will not do: measure and call
        ``on_socket_accepted``.  That is when the socket refused part of the
        write, the guest's FIN goes with it, the write was not short (bulk:
        the window must follow the buffer as the kernel grows it, which it
        does only for a socket that fills up; and a larger write's charge
        would be a guess), or less than half the buffer would be left.  A
        request/response exchange so measures once in many; a bulk
        transfer after each write.  The ACK is owed (``ack_due``, no frame
        in the Actions), unless one was owed already: then it goes now
        (see the module's docstring).  The window it would advertise
        shrinks only by the write's charge, half the buffer left: nothing
        the guest needs to hear at once."""
        free, sndbuf = self.sock_free - accepted - SKB_OVERHEAD, self.sock_buf
        if (self.pending != (accepted, False) or accepted >= SMALL_WRITE
                or accepted >= self.snd_mss or free < sndbuf >> 1):
            return None
        # _set_room in line.  The room was not too little at the last
        # measurement (or the estimate would be under half the buffer), but
        # it is less now; too little, under both a segment and half the
        # buffer as _set_room has it (a small buffer, or 64 KiB segments
        # with the buffer just over half free), closes the window: measure
        segment = min(self.guest_mss, self.mtu_mss)
        room = free * segment // (segment + SKB_OVERHEAD)
        if room < segment and room < sndbuf >> 1:
            return None
        self.sock_free = free
        self.rcv_window = window = min(room, MAX_WINDOW, segment * RCV_SEGMENTS)
        actions = self.quick
        actions.frames.clear()
        self.pending = (0, False)
        self.rcv_nxt = (self.rcv_nxt + accepted) & MASK
        if self.ack_due:                    # two segments unacknowledged: ACK now
            self.ack_due = False
            window >>= self.our_wscale
            actions.frames.append(self.tx.ack(self.snd_nxt, self.rcv_nxt,
                                              window if window < 0xFFFF else 0xFFFF))
        else:
            self.ack_due = True             # the answer's data will carry it
        # next_deadline in line: established (data went to the socket)
        rtx, idle = self.rtx_deadline, self.last_activity + INACTIVITY
        actions.deadline = idle if rtx is None or idle < rtx else rtx
        return actions

    def on_socket_writable(self, free: int, sndbuf: int) -> Actions:
        """The socket drained: a window update once the room is worth it."""
        actions = self.actions
        actions.clear()
        was_full = self.socket_full
        self._set_room(free, sndbuf)
        if was_full and not self.socket_full and self.state is State.ESTABLISHED:
            actions.frames.append(self._ack())
        return self._done(actions)

    def _set_room(self, free: int, sndbuf: int) -> None:
        """The window from the send buffer's ``free`` bytes in the kernel's
        accounting, which counts an skb's overhead too: each of the guest's
        segments may take an skb of its own, so a segment's share of it is
        payload (nearly all for 64 KiB segments, 60% for 1460 bytes).  The
        socket takes one skb beyond its limit, so the estimate errs low, yet
        it fills the buffer nearly to that limit, which the kernel's
        autotuning needs to grow it (a buffer kept half empty stayed small:
        a 100 MiB upload took 25 s instead of 0.5 s).
        Never more segments than the tap's queue holds either: what
        overflows it is lost before we read it.  Receiver-side silly-window
        avoidance (RFC 9293 3.8.6.2.2): less room than a segment or half
        the buffer is advertised as none.  A smaller window would be of no
        use and would not reopen: a sender cannot cut a segment it built to
        fit one (Linux's, up to 64 KiB each, waited for its probe timer,
        200 ms, at every such window), and nothing tells it of room a
        socket never refused a write for, where a closed window is
        reopened as the socket drains (``on_socket_writable``)."""
        self.sock_free, self.sock_buf = free, sndbuf
        segment = min(self.guest_mss, self.mtu_mss)
        room, buffer = free * segment // (segment + SKB_OVERHEAD), sndbuf // 2
        self.rcv_window = min(room, MAX_WINDOW, segment * RCV_SEGMENTS)
        self.socket_full = room < min(segment, buffer)

    def send_budget(self) -> int:
        """How many new bytes may be peeked and sent to the guest now."""
        if self.state is not State.ESTABLISHED or self.fin_sent:
            return 0
        in_flight = (self.snd_nxt - self.snd_una) & MASK
        budget = self.guest_window - in_flight
        if (self.snd_nxt - self.recover) & MASK >= HALF:      # seq_lt, in line
            budget = min(budget, self.snd_mss - in_flight)    # recovering: one segment
        if self.sock_eof:
            budget = min(budget, (self.fin_seq - self.snd_nxt) & MASK)
        return budget if budget > 0 else 0

    def on_socket_data(self, data: memoryview, now: float) -> Actions:
        """Segments for bytes just peeked (at most ``send_budget()``, at
        least one); PSH on the last."""
        actions = self.quick
        actions.frames.clear()
        self.ack_due = False                # these frames carry rcv_nxt
        idle = self.snd_max == self.snd_una
        size = len(data)
        window = 0 if self.socket_full else self.rcv_window >> self.our_wscale
        if window > 0xFFFF:
            window = 0xFFFF
        segment, ack, seq = self.tx.segment, self.rcv_nxt, self.snd_nxt
        frames = actions.frames
        if size <= self.snd_mss:                      # one segment: no slicing
            frames.append(segment(seq, ack, ACK_PSH, window, data))
            self.snd_nxt = nxt = (seq + size) & MASK
        else:
            self.snd_nxt = nxt = self._segments(frames, data, seq, ack, window)
        if (self.snd_max - nxt) & MASK >= HALF:       # seq_lt, in line
            self.snd_max = nxt
        if idle or self.rtx_deadline is None:
            self.rtx_deadline = now + self.rto
        self.last_activity = now
        if self.sock_eof:
            self._maybe_fin(frames, now)
            actions.deadline = self.next_deadline()
            return actions
        # next_deadline in line: not closed (the budget was not 0), last
        # active now, a retransmission due
        rtx, idle = self.rtx_deadline, now + INACTIVITY
        actions.deadline = rtx if rtx < idle else idle
        return actions

    def _segments(self, frames: list[Frame], data: memoryview, seq: int, ack: int,
                  window: int) -> int:
        """Frames for ``data``, more than one segment, at ``seq``; PSH on
        the last.  Returns the sequence number after them."""
        step, size, segment = self._frame_payload(), len(data), self.tx.segment
        start = 0
        while size - start > step:
            frames.append(segment(seq, ack, ACK, window, data[start:start + step]))
            seq = (seq + step) & MASK
            start += step
        frames.append(segment(seq, ack, ACK_PSH, window, data[start:] if start else data))
        return (seq + size - start) & MASK

    def _frame_payload(self) -> int:
        """Payload per frame: one segment; with ``tso``, as many whole
        segments as one IP packet holds, when our segments are the MTU's
        (the link tells the kernel to cut them there: see
        ``worker.guest.TapLink``)."""
        if not self.tx.partial or self.snd_mss != self.mtu_mss:
            return self.snd_mss
        return TSO_MAX_PAYLOAD // self.snd_mss * self.snd_mss

    def on_socket_eof(self, now: float) -> Actions:
        """A peek at ``snd_nxt`` found end of file: FIN once the guest can
        take it."""
        actions = self.actions
        actions.clear()
        if not self.sock_eof and self.state is not State.CLOSED:
            self.sock_eof = True
            self.fin_seq = self.snd_nxt
            self._maybe_fin(actions.frames, now)
        return self._done(actions)

    def _maybe_fin(self, frames: list[Frame], now: float) -> None:
        in_flight = (self.snd_nxt - self.snd_una) & MASK
        if (self.sock_eof and not self.fin_sent and self.state is State.ESTABLISHED
                and self.snd_nxt == self.fin_seq and self.guest_window > in_flight):
            frames.append(self.tx.segment(self.fin_seq, self.rcv_nxt, FIN | ACK,
                                          self._window_field()))
            self.ack_due = False
            self.fin_sent = True
            self.snd_nxt = (self.fin_seq + 1) & MASK
            if seq_lt(self.snd_max, self.snd_nxt):
                self.snd_max = self.snd_nxt
            if self.rtx_deadline is None or not in_flight:
                self.rtx_deadline = now + self.rto

    def on_socket_error(self, now: float) -> Actions:
        """The socket failed or its peer reset: RST to the guest, and the
        flow is done."""
        if self.state is State.CONNECTING:
            return self.on_connect_failed(now)
        actions = self.actions
        actions.clear()
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            actions.frames.append(self._rst())
        actions.forget = actions.unusual = True
        return self._done(actions)

    # -- time -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        if self.state is State.CLOSED:
            return self.linger_until
        idle, rtx = self.last_activity + INACTIVITY, self.rtx_deadline
        return idle if rtx is None or idle < rtx else rtx

    def on_timer(self, now: float) -> Actions:
        """The deadline came (or an earlier one: then nothing is due)."""
        actions = self.actions
        actions.clear()
        self._expire(actions, now)
        return self._done(actions)

    def on_ack_due(self) -> Frame | None:
        """ACK_DELAY after an ACK became owed (or sooner: the I/O layer
        sweeps owed ACKs together): the bare ACK, with the window as it
        stands, if no frame carried it since; None if one did, or the flow
        is no longer established."""
        if not self.ack_due or self.state is not State.ESTABLISHED:
            return None
        return self._ack()

    def _expire(self, actions: Actions, now: float) -> None:
        if self.state is State.CLOSED:
            actions.forget = actions.unusual = now >= self.linger_until
            return
        if now >= self.last_activity + INACTIVITY:
            self._give_up(actions, "tcp_inactive")
            return
        if self.rtx_deadline is None or now < self.rtx_deadline:
            return
        self.rtx_deadline = None
        if self.state is State.ESTABLISHED:
            self._retransmit_timeout(actions, now)
        elif self.state is not State.CONNECTING:
            self._handshake_timeout(actions, now)

    def _handshake_timeout(self, actions: Actions, now: float) -> None:
        self.retries += 1
        if self.retries > SYN_RETRIES:
            self._give_up(actions, "tcp_handshake_timeout")
            return
        actions.frames.append(self._syn_frame(SYN if self.state is State.SYN_SENT
                                              else SYN | ACK))
        self.rto = min(self.rto * 2, MAX_RTO)
        self.rtx_deadline = now + self.rto

    def _retransmit_timeout(self, actions: Actions, now: float) -> None:
        if self.snd_max == self.snd_una:
            if not self.guest_window:
                # zero-window probe: an old sequence number makes the guest answer
                self.ack_due = False
                actions.frames.append(self.tx.ack((self.snd_una - 1) & MASK, self.rcv_nxt,
                                                  self._window_field()))
                self.rto = min(self.rto * 2, MAX_RTO)
                self.rtx_deadline = now + self.rto
            return
        self.retries += 1
        if self.retries > MAX_RETRIES:
            self._give_up(actions, "tcp_retransmit_limit")
            return
        self.rto = min(self.rto * 2, MAX_RTO)
        self._rewind(actions, now)
        self.rtx_deadline = now + self.rto

    def _rewind(self, actions: Actions, now: float) -> None:
        """Go back to the first unacknowledged byte; the I/O layer peeks again."""
        self.snd_nxt = self.snd_una
        if not self.fin_acked:
            self.fin_sent = False
        self.recover = self.snd_max
        self.dup_acks = 0
        actions.retransmit = actions.send_more = actions.unusual = True
        self._maybe_fin(actions.frames, now)

    def _give_up(self, actions: Actions, reason: str) -> None:
        if self.state is not State.SYN_SENT:
            actions.frames.append(self._rst())
        self.state = State.CLOSED
        actions.reset = actions.forget = actions.unusual = True
        actions.drop = reason


_GUEST_HANDLERS = {
    State.CONNECTING: TcpConn._seg_connecting,
    State.SYN_RCVD: TcpConn._seg_syn_rcvd,
    State.SYN_SENT: TcpConn._seg_syn_sent,
    State.ESTABLISHED: TcpConn._seg_established,
    State.CLOSED: TcpConn._seg_closed,
}
