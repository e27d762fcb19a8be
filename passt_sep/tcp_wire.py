"""TCP on the wire: parse the guest's segments, build ours, no state.

:mod:`passt_sep.tcp` decides what a connection sends; this module holds
the header layout it needs: :func:`parse_tcp` for the guest's segments,
:class:`FrameTemplate` for the frames of one connection (constant header
bytes and checksum sums computed once), the SYN options we send, and the
reset that answers a segment of no connection.  Checksums are
:mod:`passt_sep.packet`'s.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .packet import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_TCP,
    IPV4_HLEN,
    IPV6_HLEN,
    Drop,
    Inbound,
    checksum,
    checksum_fold,
    ones_sum,
    pseudo_header_sum,
)

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
OPT_EOL, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERM, OPT_TIMESTAMP = 0, 1, 2, 3, 4, 8

TCP_HLEN = 20
MASK = 0xFFFFFFFF                        # sequence numbers are 32 bits
MAX_WSCALE = 14                          # RFC 7323 2.3
IP_DF, TTL = 0x4000, 64                  # our IPv4 frames: don't fragment, the usual TTL

_TCP = struct.Struct("!HHIIHHHH")
_TCP_VARIABLE = struct.Struct("!IIHH")   # seq, ack, offset+flags, window (at offset 4)
_TCP_VARIABLE_CSUM = struct.Struct("!IIHHH")   # the same and the checksum
_IPV4_VARIABLE = struct.Struct("!HHHBBH")  # total length to checksum (at offset 2)
_U16 = struct.Struct("!H")
_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TIMESTAMPS = struct.Struct("!II")
# MSS; SACK-permitted and timestamps; NOP and window scale: the kinds and
# lengths as strings, the values as numbers
_LINUX_SYN = struct.Struct("!2sH4sII3sB")
# a frame without options whole, from the template's constant parts (s) and
# the fields of the frame: IPv4's total length and checksum, IPv6's payload
# length; sequence and acknowledgement numbers, offset and flags, window,
# checksum; the urgent pointer zero (x)
_SEGMENT4 = struct.Struct("!16sH6sH12sIIHHH2x")
_SEGMENT6 = struct.Struct("!18sH38sIIHHH2x")
_ACK_FIELDS = struct.Struct("!IIHH")     # a bare ACK's seq, ack, offset+flags, window
DATA_OFFSET = TCP_HLEN << 10             # the offset field of a header without options
# the guest's common frame from the Ethernet source on, IPv4 without options
# or IPv6 without extension headers, and the TCP header: what the parsers
# check and what a segment holds, the rest skipped (x)
_FRAME4 = struct.Struct("!6s3sxHxxHxB2x4s4sHHIIHH4x")
_FRAME6 = struct.Struct("!6sHIHBx16s16sHHIIHH4x")
_HEAD4 = struct.pack("!HB", ETH_P_IP, 0x45)         # ethertype, IPv4 without options
L4_OFFSET4, L4_OFFSET6 = ETH_HLEN + IPV4_HLEN, ETH_HLEN + IPV6_HLEN
# constants of parse_tcp_frame, folded: Python does not fold module names
_SHORTEST4, _SHORTEST6 = L4_OFFSET4 + TCP_HLEN, L4_OFFSET6 + TCP_HLEN
_ETHERTYPE4_HIGH, _ETHERTYPE6_HIGH = ETH_P_IP >> 8, ETH_P_IPV6 >> 8
_new_tuple = tuple.__new__
Frame = bytes | bytearray                # what FrameTemplate makes


class TcpSegment(NamedTuple):
    """One parsed guest segment; ``window`` is the raw (unscaled) field."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: memoryview
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamp: tuple[int, int] | None = None


def _valid_flags(flags: int) -> bool:
    """What parse_tcp takes: no SYN with FIN or RST; SYN, RST or ACK."""
    return not (flags & SYN and flags & (FIN | RST)) and bool(flags & (SYN | RST | ACK))


_VALID_FLAGS = tuple(_valid_flags(flags) for flags in range(0x40))


def parse_tcp_frame(frame: memoryview, verify: bool = False
                    ) -> tuple[bytes, bytes, bytes, TcpSegment] | None:
    """The guest's commonest frame, parsed in one unpack: IPv4 without
    options, not a fragment, or IPv6 without extension headers, carrying
    TCP.  Returns its Ethernet source, IP source and destination, and the
    segment, as ``packet.parse_ethernet``, ``packet.parse_ip_frame`` and
    :func:`parse_tcp` would.  None for any other frame, and for one that
    any of their checks would drop: they take it then, and drop it with
    their reason.  ``verify``: as for parse_tcp."""
    size = len(frame)
    if size >= _SHORTEST4 and frame[12] == _ETHERTYPE4_HIGH:
        (mac, head, total, frag, proto, src, dst, sport, dport, seq, ack, offset_flags,
         window) = _FRAME4.unpack_from(frame, 6)
        if (head != _HEAD4 or proto != IPPROTO_TCP or frag & 0x3FFF
                or total > size - ETH_HLEN):
            return None
        l4, end = L4_OFFSET4, ETH_HLEN + total
    elif size >= _SHORTEST6 and frame[12] == _ETHERTYPE6_HIGH:
        (mac, ethertype, version, length, proto, src, dst, sport, dport, seq, ack,
         offset_flags, window) = _FRAME6.unpack_from(frame, 6)
        if (ethertype != ETH_P_IPV6 or version >> 28 != 6 or proto != IPPROTO_TCP
                or length > size - L4_OFFSET6):
            return None
        l4, end = L4_OFFSET6, L4_OFFSET6 + length
    else:
        return None
    hlen = offset_flags >> 10 & 0x3C
    flags = offset_flags & 0x3F
    if hlen < TCP_HLEN or l4 + hlen > end or not _VALID_FLAGS[flags] or not sport or not dport:
        return None
    if verify and checksum(frame[l4:end], pseudo_header_sum(src, dst, IPPROTO_TCP, end - l4)
                           ) not in (0, 0xFFFF):
        return None
    payload = frame[l4 + hlen:end]
    if hlen == TCP_HLEN:
        return mac, src, dst, _new_tuple(TcpSegment, (sport, dport, seq, ack, flags, window,
                                                      payload, None, None, False, None))
    return mac, src, dst, TcpSegment(sport, dport, seq, ack, flags, window, payload,
                                     *_parse_options(frame[l4 + TCP_HLEN:l4 + hlen]))


def parse_tcp(inb: Inbound, verify: bool = False) -> TcpSegment:
    """The guest's TCP segment.  ``verify`` checks the checksum (passt's
    stream; the tap device already did).  Malformed: :class:`Drop`."""
    data = inb.l4
    if len(data) < TCP_HLEN:
        raise Drop("tcp_short")
    sport, dport, seq, ack, offset_flags, window, _csum, _urg = _TCP.unpack_from(data)
    hlen = (offset_flags >> 12) * 4
    if hlen < TCP_HLEN:
        raise Drop("tcp_offset")
    if hlen > len(data):
        raise Drop("tcp_truncated")
    flags = offset_flags & 0x3F
    if flags & SYN and flags & (FIN | RST):
        raise Drop("tcp_flags")
    if not flags & (SYN | RST | ACK):
        raise Drop("tcp_no_ack")
    if not sport or not dport:
        raise Drop("tcp_port_zero")
    if verify and checksum(data, pseudo_header_sum(inb.src, inb.dst, IPPROTO_TCP,
                                                   len(data))) not in (0, 0xFFFF):
        raise Drop("tcp_checksum")
    payload = data[hlen:]
    if hlen == TCP_HLEN:            # the common segment: built in C, no Python __new__
        return _new_tuple(TcpSegment, (sport, dport, seq, ack, flags, window, payload,
                                       None, None, False, None))
    return TcpSegment(sport, dport, seq, ack, flags, window, payload,
                      *_parse_options(data[TCP_HLEN:hlen]))


def _parse_options(data: memoryview) -> tuple[int | None, int | None, bool,
                                              tuple[int, int] | None]:
    """MSS, window scale, SACK-permitted, timestamps.  Like Linux, a
    malformed option ends the parsing but does not drop the segment.
    Linux's own SYN (every connection of a Linux guest) is read in one
    unpack: a fifth of the general loop's work."""
    if len(data) == _LINUX_SYN.size:
        mss_kind, mss, sack_ts_kinds, tsval, tsecr, wscale_kind, shift = \
            _LINUX_SYN.unpack_from(data)
        if (mss_kind == b"\x02\x04" and sack_ts_kinds == b"\x04\x02\x08\x0a"
                and wscale_kind == b"\x01\x03\x03"):
            return mss or None, min(shift, MAX_WSCALE), True, (tsval, tsecr)
    mss = wscale = timestamp = None
    sack_permitted = False
    offset, end = 0, len(data)
    while offset < end:
        kind = data[offset]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            offset += 1
            continue
        if offset + 1 >= end:
            break
        size = data[offset + 1]
        if size < 2 or offset + size > end:
            break
        if kind == OPT_MSS and size == 4:
            mss = (data[offset + 2] << 8 | data[offset + 3]) or None
        elif kind == OPT_WSCALE and size == 3:
            wscale = min(data[offset + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERM and size == 2:
            sack_permitted = True
        elif kind == OPT_TIMESTAMP and size == 10:
            timestamp = _TIMESTAMPS.unpack_from(data, offset + 2)
        offset += size
    return mss, wscale, sack_permitted, timestamp


class FrameTemplate:
    """The Ethernet, IP and TCP headers of frames from one address/port to
    another: the constant bytes and their checksum sums are computed once,
    each frame fills in lengths, sequence numbers, flags and checksums.
    ``partial``: for a link that completes TCP checksums (pasta's tap, with
    segmentation offload), the checksum field holds only the
    pseudo-header's sum, and no byte of the segment is summed here.

    With ``partial``, the commonest frames have paths of their own: a bare
    ACK (``ack``) is a prepared frame with its numbers and window packed
    in, and a frame without options (``segment``: data, a FIN) its headers
    packed in one call from the constant parts; ``build`` makes any other.
    Frames are new objects: one handed to the link is never changed later
    (a link may keep it queued)."""

    __slots__ = ("prefix", "l4", "v6", "ip_sum", "pseudo_sum", "partial", "head", "middle",
                 "tail", "ack_frame")

    def __init__(self, dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes,
                 sport: int, dport: int, partial: bool = False) -> None:
        self.v6 = len(src) == 16
        if self.v6:
            eth = _ETH.pack(dst_mac, src_mac, ETH_P_IPV6)
            ip = _IPV6.pack(0x60000000, 0, IPPROTO_TCP, TTL, src, dst)
            self.ip_sum = 0
        else:
            eth = _ETH.pack(dst_mac, src_mac, ETH_P_IP)
            ip = _IPV4.pack(0x45, 0, 0, 0, IP_DF, TTL, IPPROTO_TCP, 0, src, dst)
            self.ip_sum = ones_sum(ip)
        self.l4 = len(eth) + len(ip)
        ports = struct.pack("!HH", sport, dport)
        self.prefix = eth + ip + ports + bytes(TCP_HLEN - 4)
        self.pseudo_sum = checksum_fold(ones_sum(src + dst) + IPPROTO_TCP)
        # what _SEGMENT4 or _SEGMENT6 take as they are: before the first
        # length, between it and the next field, after the IP header
        self.head = self.prefix[:ETH_HLEN + (4 if self.v6 else 2)]
        self.middle = self.prefix[ETH_HLEN + 4:ETH_HLEN + 10]
        self.tail = self.prefix[ETH_HLEN + (6 if self.v6 else 12):self.l4 + 4]
        self.partial = True               # the prepared ACK's checksum is partial
        self.ack_frame = bytes(self.segment(0, 0, ACK, 0))
        self.partial = partial

    def build(self, seq: int, ack: int, flags: int, window: int,
              payload: bytes | memoryview = b"", options: bytes = b"") -> bytearray:
        """A whole frame; ``window`` is the 16-bit field, ``options`` a
        multiple of 4 bytes long.  The sums are folded in line: both addends
        are below 0x10000, so one step is enough (a frame per segment: this
        is the hot path)."""
        frame = bytearray(self.prefix)
        if options:
            frame += options
        if payload:
            frame += payload
        l4 = self.l4
        l4_len = len(frame) - l4
        if self.v6:
            _U16.pack_into(frame, ETH_HLEN + 4, l4_len)
        else:
            total = l4_len + IPV4_HLEN
            ip_sum = self.ip_sum + total
            _IPV4_VARIABLE.pack_into(frame, ETH_HLEN + 2, total, 0, IP_DF, TTL, IPPROTO_TCP,
                                     ~((ip_sum & 0xFFFF) + (ip_sum >> 16)) & 0xFFFF)
        offset_flags = (TCP_HLEN + len(options)) << 10 | flags
        if self.partial:
            pseudo = self.pseudo_sum + l4_len
            _TCP_VARIABLE_CSUM.pack_into(frame, l4 + 4, seq, ack, offset_flags, window,
                                         (pseudo & 0xFFFF) + (pseudo >> 16))
            return frame
        _TCP_VARIABLE.pack_into(frame, l4 + 4, seq, ack, offset_flags, window)
        with memoryview(frame) as view:
            total = ones_sum(view[l4:]) + self.pseudo_sum + l4_len
        _U16.pack_into(frame, l4 + 16, ~checksum_fold(total) & 0xFFFF)
        return frame

    def ack(self, seq: int, ack: int, window: int) -> Frame:
        """A bare ACK: with ``partial``, the prepared one with ``seq``,
        ``ack`` and ``window`` packed in."""
        if not self.partial:
            return self.build(seq, ack, ACK, window)
        frame = bytearray(self.ack_frame)
        _ACK_FIELDS.pack_into(frame, self.l4 + 4, seq, ack, DATA_OFFSET | ACK, window)
        return frame

    def segment(self, seq: int, ack: int, flags: int, window: int,
                payload: bytes | memoryview = b"") -> Frame:
        """A frame without options (data, an ACK, a FIN): with ``partial``,
        its headers in one pack (the sums folded in line as in ``build``)."""
        if not self.partial:
            return self.build(seq, ack, flags, window, payload)
        l4_len = TCP_HLEN + len(payload)
        pseudo = self.pseudo_sum + l4_len
        if self.v6:
            return _SEGMENT6.pack(self.head, l4_len, self.tail, seq, ack, DATA_OFFSET | flags,
                                  window, (pseudo & 0xFFFF) + (pseudo >> 16)) + payload
        total = l4_len + IPV4_HLEN
        ip_sum = self.ip_sum + total
        return _SEGMENT4.pack(self.head, total, self.middle,
                              ~((ip_sum & 0xFFFF) + (ip_sum >> 16)) & 0xFFFF, self.tail,
                              seq, ack, DATA_OFFSET | flags, window,
                              (pseudo & 0xFFFF) + (pseudo >> 16)) + payload


def build_tcp_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, sport: int,
                    dport: int, seq: int, ack: int, flags: int, window: int,
                    payload: bytes | memoryview = b"", options: bytes = b"",
                    partial: bool = False) -> bytearray:
    """One Ethernet/IPv4-or-IPv6/TCP frame with correct checksums (the
    pseudo-header's sum only, with ``partial``: see FrameTemplate)."""
    return FrameTemplate(dst_mac, src_mac, src, dst, sport, dport, partial).build(
        seq, ack, flags, window, payload, options)


def syn_options(mss: int, wscale: int | None) -> bytes:
    """MSS, and window scale behind a NOP when we scale (RFC 7323 1.3)."""
    options = struct.pack("!BBH", OPT_MSS, 4, min(mss, 0xFFFF))
    if wscale is None:
        return options
    return options + bytes((OPT_NOP, OPT_WSCALE, 3, wscale))


def rst_for_unknown(seg: TcpSegment, inb: Inbound, our_mac: bytes,
                    partial: bool = False) -> bytearray | None:
    """RFC 9293 3.10.7.1: the reset that answers a segment of no connection;
    never one for a RST.  ``partial``: as for FrameTemplate."""
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        seq, ack, flags = seg.ack, 0, RST
    else:
        length = len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
        seq, ack, flags = 0, (seg.seq + length) & MASK, RST | ACK
    return build_tcp_frame(inb.eth.src, our_mac, inb.dst, inb.src, seg.dport, seg.sport,
                           seq, ack, flags, 0, partial=partial)
