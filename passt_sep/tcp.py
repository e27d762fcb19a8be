"""TCP translation between the guest's segments and host sockets, no I/O.

Theory of operation
-------------------
passt-sep has no TCP stack.  Each guest connection is paired with one kernel
socket on the host, and each side's observable state is reflected to the
other (passt's design):

* Directions.  Outbound: the guest's SYN makes the I/O layer open a socket
  and ``connect()``; the guest gets SYN-ACK when the connection is made, RST
  when it fails.  Inbound: a connection accepted on a forwarded port (``-t``)
  becomes a SYN to the guest, from the peer's address as the guest sees it.

* Guest to host.  In-order payload is written to the socket; the guest is
  acknowledged exactly what the socket accepted, so nothing waits in this
  process: what the socket refused is retransmitted by the guest.  While the
  socket is full, the advertised window is zero; a window update follows
  when it drains.

* Host to guest.  Data stays in the socket's receive queue until the guest
  acknowledges it.  The I/O layer reads it with ``MSG_PEEK`` (SO_PEEK_OFF
  moves the offset past what was already sent), this module cuts it into
  segments within the guest's window and MSS, and bytes the guest
  acknowledges are then discarded from the socket (``acked``).  A
  retransmission rewinds: ``snd_nxt`` goes back to ``snd_una`` and the I/O
  layer resets the peek offset to 0 and peeks again.

* Ending.  A guest FIN in order becomes ``shutdown(SHUT_WR)``; the socket's
  end of file becomes a FIN to the guest once all data before it was sent.
  When both FINs are acknowledged the flow is closed.  RST travels both ways:
  a guest RST closes the socket with SO_LINGER 0 (the peer sees RST), a
  socket error becomes RST to the guest.

* Time.  Everything takes ``now``; ``deadline`` says when ``on_timer``
  wants to run: SYN retries towards the guest, retransmission of data and
  FIN with exponential back-off, and an inactivity limit.

States: CONNECTING (outbound, socket connecting), SYN_SENT (inbound, SYN
sent to the guest), ESTABLISHED, then half-closed flags ``guest_fin`` and
``fin_sent``/``fin_acked``, and CLOSED.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from .packet import IPPROTO_TCP, Drop, Inbound, checksum, ip_frame, pseudo_header_sum

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
OPT_END, OPT_NOP, OPT_MSS, OPT_WSCALE = 0, 1, 2, 3
TCP_HLEN = 20
OUR_WSCALE = 7
MAX_WINDOW = 0xFFFF << OUR_WSCALE            # about 8 MiB
DEFAULT_MSS4, DEFAULT_MSS6 = 536, 1220
ACK_TIMEOUT = 1.0                            # first retransmission
MAX_RETRIES = 8
SYN_TIMEOUT = 2.0
SYN_RETRIES = 3
INACTIVITY = 7200.0
DUP_ACK_THRESHOLD = 3
_TCP = struct.Struct("!HHIIBBHHH")

CONNECTING, SYN_SENT, ESTABLISHED, CLOSED = "CONNECTING", "SYN_SENT", "ESTABLISHED", "CLOSED"


@dataclass(frozen=True, slots=True)
class Segment:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    mss: int | None
    wscale: int | None
    payload: memoryview


def parse_tcp(inb: Inbound, verify: bool = False) -> Segment:
    """The guest's TCP segment; ``verify`` checks the checksum."""
    data = inb.l4
    if len(data) < TCP_HLEN:
        raise Drop("tcp_short")
    sport, dport, seq, ack, offset, flags, window, _csum, _urg = _TCP.unpack_from(data)
    hlen = (offset >> 4) * 4
    if hlen < TCP_HLEN or hlen > len(data):
        raise Drop("tcp_offset")
    if flags & SYN and flags & (FIN | RST):
        raise Drop("tcp_flags")
    if not flags & (SYN | RST | ACK):
        raise Drop("tcp_no_ack")
    if verify and checksum(data, pseudo_header_sum(inb.src, inb.dst, IPPROTO_TCP,
                                                   len(data))) not in (0, 0xFFFF):
        raise Drop("tcp_checksum")
    mss, wscale = _options(data[TCP_HLEN:hlen]) if flags & SYN else (None, None)
    return Segment(sport, dport, seq, ack, flags, window, mss, wscale, data[hlen:])


def _options(data: memoryview) -> tuple[int | None, int | None]:
    mss = wscale = None
    offset = 0
    while offset < len(data):
        kind = data[offset]
        if kind == OPT_END:
            break
        if kind == OPT_NOP:
            offset += 1
            continue
        if offset + 1 >= len(data) or data[offset + 1] < 2:
            raise Drop("tcp_option")
        length = data[offset + 1]
        if kind == OPT_MSS and length == 4 and offset + 4 <= len(data):
            mss = int.from_bytes(data[offset + 2:offset + 4], "big")
        elif kind == OPT_WSCALE and length == 3 and offset + 3 <= len(data):
            wscale = min(data[offset + 2], 14)
        offset += length
    return mss, wscale


def seq_lt(a: int, b: int) -> bool:
    """a < b in 32-bit sequence space."""
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, as a signed number."""
    value = (a - b) & 0xFFFFFFFF
    return value - (1 << 32) if value > 0x7FFFFFFF else value


def isn_for(secret: bytes, local: bytes, lport: int, remote: bytes, rport: int,
            now: float) -> int:
    """RFC 6528: a 4-microsecond clock plus a keyed hash of the 4-tuple."""
    digest = hashlib.blake2s(local + lport.to_bytes(2, "big") + remote
                             + rport.to_bytes(2, "big"), key=secret, digest_size=4).digest()
    return (int(now * 250_000) + int.from_bytes(digest, "big")) & 0xFFFFFFFF


def rst_for_unknown(seg: Segment, inb: Inbound, our_mac: bytes) -> bytes | None:
    """RFC 793 reset for a segment that belongs to no flow (never for RST)."""
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        seq, ack, flags = seg.ack, 0, RST
    else:
        length = len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
        seq, ack, flags = 0, (seg.seq + length) & 0xFFFFFFFF, RST | ACK
    return build_frame(inb.eth.src, our_mac, inb.dst, inb.src, seg.dport, seg.sport,
                       seq, ack, flags, 0)


def build_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, sport: int,
                dport: int, seq: int, ack: int, flags: int, window: int,
                payload: bytes | memoryview = b"", options: bytes = b"") -> bytes:
    """A whole Ethernet/IP/TCP frame with the checksum filled in."""
    hlen = TCP_HLEN + len(options)
    segment = bytearray(_TCP.pack(sport, dport, seq, ack, (hlen // 4) << 4, flags,
                                  min(window, 0xFFFF), 0, 0))
    segment += options
    segment += payload
    csum = checksum(segment, pseudo_header_sum(src, dst, IPPROTO_TCP, len(segment)))
    struct.pack_into("!H", segment, 16, csum)
    return ip_frame(dst_mac, src_mac, src, dst, IPPROTO_TCP, segment)


def syn_options(mss: int, scaling: bool = True) -> bytes:
    """MSS, then window scale padded with a NOP (RFC 7323: only if the
    other side offered it, or in our own SYN)."""
    options = struct.pack("!BBH", OPT_MSS, 4, mss)
    return options + bytes([OPT_NOP, OPT_WSCALE, 3, OUR_WSCALE]) if scaling else options


@dataclass
class GuestResult:
    """What the I/O layer must do after a guest segment."""

    frames: list[bytes] = field(default_factory=list)
    to_socket: memoryview | None = None    # in-order payload to write
    acked: int = 0                         # socket bytes to discard
    rewind: bool = False                   # reset the peek offset to 0
    shutdown_write: bool = False           # guest FIN reached in order
    reset: bool = False                    # close the socket with RST
    established: bool = False              # inbound handshake completed
    window_opened: bool = False            # more may be sent to the guest


@dataclass
class TimerResult:
    frames: list[bytes] = field(default_factory=list)
    rewind: bool = False
    reset: bool = False


class TcpConn:
    """One guest connection's state, driven by events with ``now``."""

    def __init__(self, *, guest_addr: bytes, guest_port: int, peer_addr: bytes, peer_port: int,
                 our_mac: bytes, guest_mac: bytes, mtu: int, isn: int, now: float) -> None:
        self.guest_addr, self.guest_port = guest_addr, guest_port
        self.peer_addr, self.peer_port = peer_addr, peer_port
        self.our_mac, self.guest_mac = our_mac, guest_mac
        self.v6 = len(guest_addr) == 16
        self.mtu_mss = mtu - (60 if self.v6 else 40)
        self.state = CONNECTING
        self.isn = isn
        self.snd_una = self.snd_nxt = (isn + 1) & 0xFFFFFFFF
        self.rcv_nxt = 0
        self.guest_mss = DEFAULT_MSS6 if self.v6 else DEFAULT_MSS4
        self.guest_wscale = 0
        self.guest_window = 0
        self.scaling = True             # until the guest's SYN says otherwise
        self.dup_acks = 0
        self.retries = 0
        self.guest_fin = False          # guest's FIN received (in order)
        self.eof_seen = False           # the socket reached end of file
        self.fin_sent = False
        self.fin_acked = False
        self.socket_full = False        # we advertise zero window
        self.socket_space = MAX_WINDOW  # room in the socket's send buffer
        self.last_activity = now
        self.deadline: float | None = None

    # -- frames ---------------------------------------------------------------------
    def _frame(self, flags: int, seq: int, payload: bytes | memoryview = b"",
               options: bytes = b"") -> bytes:
        return build_frame(self.guest_mac, self.our_mac, self.peer_addr, self.guest_addr,
                           self.peer_port, self.guest_port, seq, self.rcv_nxt, flags,
                           self.advertised_window(), payload, options)

    def _small(self, space: int, buffer: int) -> bool:
        """Receiver-side silly-window avoidance (RFC 1122 4.2.3.3): less room
        than a segment or a quarter of the buffer is advertised as none."""
        return space < min(self.guest_mss, self.mtu_mss, buffer // 4)

    def advertised_window(self) -> int:
        """The room the socket has, in the units of our window scale."""
        if self.socket_full:
            return 0
        room = min(self.socket_space, MAX_WINDOW)
        return room >> OUR_WSCALE if self.scaling else min(room, 0xFFFF)

    def ack_frame(self) -> bytes:
        return self._frame(ACK, self.snd_nxt)

    def _syn_flags_frame(self, flags: int) -> bytes:
        """Our SYN or SYN-ACK (windows in SYNs are never scaled)."""
        return build_frame(self.guest_mac, self.our_mac, self.peer_addr, self.guest_addr,
                           self.peer_port, self.guest_port, self.isn, self.rcv_nxt, flags,
                           0xFFFF, b"", syn_options(self.mtu_mss, self.scaling))

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def from_guest_syn(cls, seg: Segment, inb: Inbound, our_mac: bytes, mtu: int, isn: int,
                       now: float) -> TcpConn:
        conn = cls(guest_addr=inb.src, guest_port=seg.sport, peer_addr=inb.dst,
                   peer_port=seg.dport, our_mac=our_mac, guest_mac=inb.eth.src, mtu=mtu,
                   isn=isn, now=now)
        conn._take_syn_options(seg)
        conn.rcv_nxt = (seg.seq + 1) & 0xFFFFFFFF
        conn.guest_window = seg.window  # not scaled in a SYN
        return conn

    def _take_syn_options(self, seg: Segment) -> None:
        if seg.mss:
            self.guest_mss = seg.mss
        self.guest_wscale = seg.wscale if seg.wscale is not None else 0
        self.scaling = seg.wscale is not None

    def socket_connected(self, now: float) -> bytes:
        """The host connection is up: SYN-ACK to the guest."""
        self.state = ESTABLISHED
        self.last_activity = now
        return self._syn_flags_frame(SYN | ACK)

    def socket_failed(self) -> bytes:
        """The connection failed: RST to the guest."""
        self.state = CLOSED
        return self._frame(RST | ACK, self.snd_nxt)

    @classmethod
    def for_accepted(cls, *, guest_addr: bytes, guest_port: int, peer_addr: bytes,
                     peer_port: int, our_mac: bytes, guest_mac: bytes, mtu: int, isn: int,
                     now: float) -> tuple[TcpConn, bytes]:
        """An inbound connection: the flow and the SYN to send the guest."""
        conn = cls(guest_addr=guest_addr, guest_port=guest_port, peer_addr=peer_addr,
                   peer_port=peer_port, our_mac=our_mac, guest_mac=guest_mac, mtu=mtu,
                   isn=isn, now=now)
        conn.state = SYN_SENT
        conn.deadline = now + SYN_TIMEOUT
        return conn, conn._syn_flags_frame(SYN)

    # -- the guest's segments ------------------------------------------------------------
    def guest_segment(self, seg: Segment, now: float) -> GuestResult:
        result = GuestResult()
        self.last_activity = now
        if seg.flags & RST:
            return self._guest_reset(seg, result)
        if self.state == SYN_SENT:
            return self._handshake_reply(seg, result, now)
        if self.state == CONNECTING:
            return result  # the guest retransmits its SYN: wait for connect()
        if seg.flags & SYN:
            if seg.seq == (self.rcv_nxt - 1) & 0xFFFFFFFF and self.state == ESTABLISHED:
                result.frames.append(self._syn_flags_frame(SYN | ACK))  # SYN-ACK was lost
            return result
        self._process_ack(seg, result, now)
        self._process_data(seg, result)
        return result

    def _guest_reset(self, seg: Segment, result: GuestResult) -> GuestResult:
        if self.state != SYN_SENT and not self._in_window(seg.seq):
            return result  # a blind reset: ignore (RFC 5961 in spirit)
        self.state = CLOSED
        result.reset = True
        return result

    def _handshake_reply(self, seg: Segment, result: GuestResult, now: float) -> GuestResult:
        if not (seg.flags & SYN and seg.flags & ACK) or seg.ack != self.snd_nxt:
            result.frames.append(self._frame(RST, seg.ack))
            self.state = CLOSED
            result.reset = True
            return result
        self._take_syn_options(seg)
        self.rcv_nxt = (seg.seq + 1) & 0xFFFFFFFF
        self.guest_window = seg.window << self.guest_wscale
        self.state = ESTABLISHED
        self.deadline = None
        self.retries = 0
        result.established = True
        result.frames.append(self.ack_frame())
        return result

    def _in_window(self, seq: int) -> bool:
        return 0 <= seq_diff(seq, self.rcv_nxt) <= MAX_WINDOW

    def _process_ack(self, seg: Segment, result: GuestResult, now: float) -> None:
        if not seg.flags & ACK:
            return
        window = seg.window << self.guest_wscale
        advance = seq_diff(seg.ack, self.snd_una)
        in_flight = seq_diff(self.snd_nxt, self.snd_una)
        if advance > in_flight:
            result.frames.append(self.ack_frame())  # acknowledges what we never sent
            return
        if advance > 0:
            fin_part = 1 if self.fin_sent and seg.ack == self.snd_nxt else 0
            result.acked = advance - fin_part
            self.fin_acked = self.fin_acked or bool(fin_part)
            self.snd_una = seg.ack
            self.dup_acks = 0
            self.retries = 0
            self.deadline = now + ACK_TIMEOUT if seq_diff(self.snd_nxt, self.snd_una) > 0 else None
            result.window_opened = True
        elif (advance == 0 and in_flight > 0 and not len(seg.payload)
              and window == self.guest_window):
            self.dup_acks += 1
            if self.dup_acks == DUP_ACK_THRESHOLD:
                self._rewind()
                result.rewind = True
                result.window_opened = True
        if window > self.guest_window:
            result.window_opened = True
        self.guest_window = window
        if self.guest_fin and self.fin_acked:
            self.state = CLOSED

    def _process_data(self, seg: Segment, result: GuestResult) -> None:
        payload = seg.payload
        offset = seq_diff(self.rcv_nxt, seg.seq)
        fin = bool(seg.flags & FIN)
        if offset < 0:
            # a gap: the guest will retransmit; a duplicate ACK speeds it up
            result.frames.append(self.ack_frame())
            return
        if offset > len(payload) or (offset == len(payload) and not (fin and not self.guest_fin)):
            if len(payload) or fin:
                result.frames.append(self.ack_frame())  # all old: re-acknowledge
            return
        new = payload[offset:]
        if len(new):
            if self.guest_fin:
                return
            result.to_socket = new
            return  # acknowledged in data_written(), with what the socket took
        if fin and not self.guest_fin:
            self._guest_fin_in_order(result)

    def _guest_fin_in_order(self, result: GuestResult) -> None:
        self.guest_fin = True
        self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
        result.shutdown_write = True
        result.frames.append(self.ack_frame())
        if self.fin_acked:
            self.state = CLOSED

    def data_written(self, seg: Segment, written: int, space: int, buffer: int) -> GuestResult:
        """The socket took ``written`` bytes of the payload and has ``space``
        bytes of room left: acknowledge what it took, offer that room as the
        window (and acknowledge the FIN, which then means shutting the
        socket's write side, if the whole segment went through)."""
        result = GuestResult()
        self.rcv_nxt = (self.rcv_nxt + written) & 0xFFFFFFFF
        offset_end = seq_diff((seg.seq + len(seg.payload)) & 0xFFFFFFFF, self.rcv_nxt)
        self.socket_space = space
        self.socket_full = offset_end > 0 or self._small(space, buffer)
        if seg.flags & FIN and offset_end == 0 and not self.guest_fin:
            self._guest_fin_in_order(result)
        else:
            result.frames.append(self.ack_frame())
        return result

    def socket_writable(self, space: int, buffer: int) -> list[bytes]:
        """The socket drained: tell the guest once there is room again."""
        self.socket_space = space
        if not self.socket_full or self._small(space, buffer):
            return []
        self.socket_full = False
        return [self.ack_frame()]

    # -- the socket's data -------------------------------------------------------------
    def send_budget(self) -> int:
        """How many new bytes the guest's window allows now."""
        if self.state != ESTABLISHED or self.fin_sent:
            return 0
        return max(self.guest_window - seq_diff(self.snd_nxt, self.snd_una), 0)

    def socket_data(self, data: memoryview, now: float) -> list[bytes]:
        """Segments for freshly peeked bytes (at most ``send_budget()``)."""
        mss = max(min(self.guest_mss, self.mtu_mss), 64)
        frames = []
        for start in range(0, len(data), mss):
            chunk = data[start:start + mss]
            last = start + mss >= len(data)
            frames.append(self._frame(ACK | (PSH if last else 0), self.snd_nxt, chunk))
            self.snd_nxt = (self.snd_nxt + len(chunk)) & 0xFFFFFFFF
        if frames and self.deadline is None:
            self.deadline = now + ACK_TIMEOUT
        self.last_activity = now
        return frames

    def socket_eof(self, now: float) -> list[bytes]:
        """End of file from the socket, all data before it sent: FIN."""
        self.eof_seen = True
        if self.fin_sent or self.state != ESTABLISHED:
            return []
        self.fin_sent = True
        frame = self._frame(FIN | ACK, self.snd_nxt)
        self.snd_nxt = (self.snd_nxt + 1) & 0xFFFFFFFF
        if self.deadline is None:
            self.deadline = now + ACK_TIMEOUT
        return [frame]

    def socket_reset(self) -> bytes:
        """The socket failed or was reset: RST to the guest."""
        self.state = CLOSED
        return self._frame(RST | ACK, self.snd_nxt)

    # -- time ------------------------------------------------------------------------------
    def _rewind(self) -> None:
        self.snd_nxt = self.snd_una
        if self.fin_sent and not self.fin_acked:
            self.fin_sent = False

    def on_timer(self, now: float) -> TimerResult:
        result = TimerResult()
        if self.deadline is None or now < self.deadline:
            return result
        self.retries += 1
        if self.state == SYN_SENT:
            if self.retries > SYN_RETRIES:
                self.state = CLOSED
                result.reset = True
                return result
            result.frames.append(self._syn_flags_frame(SYN))
            self.deadline = now + SYN_TIMEOUT * (1 << self.retries)
            return result
        if seq_diff(self.snd_nxt, self.snd_una) <= 0 and not self.fin_sent:
            self.deadline = None
            return result
        if self.retries > MAX_RETRIES:
            result.frames.append(self.socket_reset())
            result.reset = True
            return result
        self._rewind()
        result.rewind = True
        self.deadline = now + ACK_TIMEOUT * (1 << min(self.retries, 6))
        return result

    def idle(self, now: float) -> bool:
        return now - self.last_activity > INACTIVITY
