"""Ethernet, IPv4, IPv6, UDP and ICMP headers: parse and build, no I/O.

Every parser takes a ``bytes``/``memoryview`` and returns a small record
whose ``payload`` is a view into the input (no copy); records are read-only
by convention, not frozen (that costs a setattr call per field, per frame),
and the two of every frame (:class:`Ethernet`, :class:`Inbound`) are named
tuples built by ``tuple.__new__``: in C, with no ``__init__`` to run.
Malformed input raises :class:`Drop` with a short reason that the worker
counts.  Builders
return ``bytes`` with correct checksums.  Addresses are raw ``bytes`` (4 or
16 long) on this hot path; conversion to :mod:`ipaddress` objects happens at
the configuration boundary only.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

ETH_HLEN = 14
IPV4_HLEN = 20
IPV6_HLEN = 40
UDP_HLEN = 8

BROADCAST_MAC = b"\xff" * 6

# IPv6 extension headers we step over to find the upper-layer protocol.
_IPV6_EXT_HEADERS = frozenset({0, 43, 60})  # hop-by-hop, routing, dest opts
_IPV6_FRAGMENT = 44

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_new_tuple = tuple.__new__


class Drop(Exception):
    """A frame we do not handle; ``reason`` names the counter it goes to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def checksum_fold(total: int) -> int:
    """Fold a 32-bit-or-wider ones' complement sum into 16 bits."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of ``data`` (big-endian 16-bit words), as a
    number below 0xFFFF.

    ``int.from_bytes(...) % 0xffff`` sums all 16-bit words modulo 2**16-1 in
    C, which is far faster than a Python loop (docs/design.md §3).  An odd
    length is padded with a zero byte arithmetically (a shift), no copy.
    """
    value = int.from_bytes(data, "big")
    return (value << 8) % 0xFFFF if len(data) & 1 else value % 0xFFFF


def checksum(data: bytes | memoryview, initial: int = 0) -> int:
    """Internet checksum (RFC 1071) of ``data`` plus a partial sum."""
    total = checksum_fold(ones_sum(data) + initial)
    result = ~total & 0xFFFF
    return result


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv4 or IPv6 pseudo-header for TCP/UDP/ICMPv6."""
    if len(src) == 4:
        header = src + dst + struct.pack("!BBH", 0, proto, length)
    else:
        header = src + dst + struct.pack("!IxxxB", length, proto)
    return ones_sum(header)


def l4_checksum(src: bytes, dst: bytes, proto: int, segment: bytes | memoryview) -> int:
    """Checksum of a transport segment (checksum field zeroed) with pseudo-header."""
    return checksum(segment, pseudo_header_sum(src, dst, proto, len(segment)))


def mac_to_bytes(text: str) -> bytes:
    """``"9a:55:9a:55:9a:55"`` -> 6 bytes."""
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address: {text}")
    return bytes(int(p, 16) for p in parts)


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def address_text(addr: bytes) -> str:
    """An IPv4 or IPv6 address, packed, as the socket API writes it."""
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


class Ethernet(NamedTuple):
    """An Ethernet frame, parsed; ``payload`` is a view into it."""

    dst: bytes
    src: bytes
    ethertype: int
    payload: memoryview


def parse_ethernet(frame: bytes | memoryview) -> Ethernet:
    view = frame if isinstance(frame, memoryview) else memoryview(frame)
    if len(view) < ETH_HLEN:
        raise Drop("eth_short")
    dst, src, ethertype = _ETH.unpack_from(view)
    return _new_tuple(Ethernet, (dst, src, ethertype, view[ETH_HLEN:]))


def build_ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes | memoryview) -> bytes:
    return _ETH.pack(dst, src, ethertype) + bytes(payload)


@dataclass(slots=True)
class IPv4:
    """An IPv4 packet, parsed; ``payload`` is a view into it."""

    src: bytes
    dst: bytes
    proto: int
    ttl: int
    ident: int
    tos: int
    payload: memoryview
    fragmented: bool


def parse_ipv4(packet: bytes | memoryview) -> IPv4:
    """Parse an IPv4 header; options are skipped, the header checksum is not
    verified (the kernel or virtio already did, and a bad one only hurts the
    sender)."""
    view = memoryview(packet)
    if len(view) < IPV4_HLEN:
        raise Drop("ipv4_short")
    ver_ihl, tos, total_len, ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(view)
    if ver_ihl >> 4 != 4:
        raise Drop("ipv4_version")
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < IPV4_HLEN or total_len < ihl or total_len > len(view):
        raise Drop("ipv4_length")
    fragmented = bool(frag & 0x3FFF)  # MF flag or a fragment offset
    return IPv4(src, dst, proto, ttl, ident, tos, view[ihl:total_len], fragmented)


def build_ipv4(src: bytes, dst: bytes, proto: int, payload: bytes | memoryview,
               ttl: int = 64, ident: int = 0, tos: int = 0) -> bytes:
    return ipv4_header(src, dst, proto, len(payload), ttl, ident, tos) + bytes(payload)


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int = 64,
                ident: int = 0, tos: int = 0) -> bytes:
    total = IPV4_HLEN + payload_len
    header = bytearray(_IPV4.pack(0x45, tos, total, ident, 0x4000, ttl, proto, 0, src, dst))
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header)


@dataclass(slots=True)
class IPv6:
    """An IPv6 packet, parsed; ``payload`` is a view into it."""

    src: bytes
    dst: bytes
    next_header: int   # upper-layer protocol after extension headers
    hop_limit: int
    traffic_class: int
    payload: memoryview


def parse_ipv6(packet: bytes | memoryview) -> IPv6:
    """Parse an IPv6 header and step over hop-by-hop, routing and
    destination-options headers; fragments are dropped (we never send
    anything that would make a guest fragment)."""
    view = memoryview(packet)
    if len(view) < IPV6_HLEN:
        raise Drop("ipv6_short")
    vtcfl, plen, nxt, hlim, src, dst = _IPV6.unpack_from(view)
    if vtcfl >> 28 != 6:
        raise Drop("ipv6_version")
    if IPV6_HLEN + plen > len(view):
        raise Drop("ipv6_length")
    payload = view[IPV6_HLEN:IPV6_HLEN + plen]
    while nxt in _IPV6_EXT_HEADERS:
        if len(payload) < 8:
            raise Drop("ipv6_ext_short")
        ext_len = (payload[1] + 1) * 8
        if ext_len > len(payload):
            raise Drop("ipv6_ext_length")
        nxt = payload[0]
        payload = payload[ext_len:]
    if nxt == _IPV6_FRAGMENT:
        raise Drop("ipv6_fragment")
    return IPv6(src, dst, nxt, hlim, (vtcfl >> 20) & 0xFF, payload)


def build_ipv6(src: bytes, dst: bytes, next_header: int, payload: bytes | memoryview,
               hop_limit: int = 64, traffic_class: int = 0) -> bytes:
    return ipv6_header(src, dst, next_header, len(payload), hop_limit, traffic_class) + \
        bytes(payload)


def ipv6_header(src: bytes, dst: bytes, next_header: int, payload_len: int,
                hop_limit: int = 64, traffic_class: int = 0) -> bytes:
    return _IPV6.pack(0x60000000 | (traffic_class << 20), payload_len, next_header,
                      hop_limit, src, dst)


def build_ip(src: bytes, dst: bytes, proto: int, payload: bytes | memoryview,
             ttl: int = 64) -> bytes:
    """IPv4 or IPv6 packet, by the length of the addresses."""
    return ip_header(src, dst, proto, len(payload), ttl) + bytes(payload)


def ip_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int = 64) -> bytes:
    """IPv4 or IPv6 header for ``payload_len`` bytes, by the length of the addresses."""
    if len(src) == 4:
        return ipv4_header(src, dst, proto, payload_len, ttl=ttl)
    return ipv6_header(src, dst, proto, payload_len, hop_limit=ttl)


@dataclass(slots=True)
class UDP:
    """A UDP datagram, parsed; ``payload`` is a view into it."""

    sport: int
    dport: int
    payload: memoryview


def parse_udp(segment: bytes | memoryview) -> UDP:
    view = memoryview(segment)
    if len(view) < UDP_HLEN:
        raise Drop("udp_short")
    sport, dport, length, _csum = _UDP.unpack_from(view)
    if length < UDP_HLEN or length > len(view):
        raise Drop("udp_length")
    return UDP(sport, dport, view[UDP_HLEN:length])


def build_udp(src: bytes, dst: bytes, sport: int, dport: int,
              payload: bytes | memoryview) -> bytes:
    """UDP header + payload with the checksum over the pseudo-header."""
    length = UDP_HLEN + len(payload)
    segment = bytearray(_UDP.pack(sport, dport, length, 0))
    segment += payload
    csum = l4_checksum(src, dst, IPPROTO_UDP, segment) or 0xFFFF
    struct.pack_into("!H", segment, 6, csum)
    return bytes(segment)


class Inbound(NamedTuple):
    """A guest frame parsed down to its transport payload."""

    eth: Ethernet
    src: bytes          # IP source (4 or 16 bytes)
    dst: bytes          # IP destination
    proto: int          # upper-layer protocol
    ttl: int
    l4: memoryview      # transport header + payload

    @property
    def is_ipv6(self) -> bool:
        return len(self.src) == 16


def parse_ip_frame(eth: Ethernet) -> Inbound:
    """Parse the IP layer of an Ethernet frame carrying IPv4 or IPv6.  IPv4
    is parsed here rather than by :func:`parse_ipv4` (the same checks): most
    frames are IPv4, and this saves a call and a record per frame."""
    if eth.ethertype == ETH_P_IP:
        view = eth.payload
        if len(view) < IPV4_HLEN:
            raise Drop("ipv4_short")
        ver_ihl, _tos, total_len, _ident, frag, ttl, proto, _csum, src, dst = \
            _IPV4.unpack_from(view)
        ihl = (ver_ihl & 0x0F) * 4
        if ver_ihl >> 4 != 4:
            raise Drop("ipv4_version")
        if ihl < IPV4_HLEN or total_len < ihl or total_len > len(view):
            raise Drop("ipv4_length")
        if frag & 0x3FFF:
            raise Drop("ipv4_fragment")
        return _new_tuple(Inbound, (eth, src, dst, proto, ttl, view[ihl:total_len]))
    if eth.ethertype == ETH_P_IPV6:
        ip6 = parse_ipv6(eth.payload)
        return _new_tuple(Inbound, (eth, ip6.src, ip6.dst, ip6.next_header, ip6.hop_limit,
                                    ip6.payload))
    raise Drop("ethertype")


def ip_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int,
             l4: bytes | memoryview, ttl: int = 64) -> bytes:
    """Ethernet + IPv4/IPv6 frame around an already-checksummed L4 segment."""
    ethertype = ETH_P_IP if len(src) == 4 else ETH_P_IPV6
    return build_ethernet(dst_mac, src_mac, ethertype, build_ip(src, dst, proto, l4, ttl))


def udp_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, sport: int,
              dport: int, payload: bytes | memoryview, ttl: int = 64) -> bytes:
    """Complete Ethernet/IP/UDP frame."""
    segment = build_udp(src, dst, sport, dport, payload)
    return ip_frame(dst_mac, src_mac, src, dst, IPPROTO_UDP, segment, ttl)


_PROTOCOL_NAMES = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_ICMP: "ICMP",
                   IPPROTO_ICMPV6: "ICMPv6"}


def describe_frame(frame: bytes | memoryview) -> str:
    """One line saying what a guest frame is, for ``--trace``: family,
    protocol, addresses and ports, length; what cannot be parsed, said so."""
    try:
        eth = parse_ethernet(frame)
        if eth.ethertype == ETH_P_ARP:
            return f"ARP, {len(frame)} bytes"
        inb = parse_ip_frame(eth)
    except Drop as drop:
        return f"unparsed ({drop.reason}), {len(frame)} bytes"
    family = "IPv6" if inb.is_ipv6 else "IPv4"
    name = _PROTOCOL_NAMES.get(inb.proto, f"protocol {inb.proto}")
    src, dst = address_text(inb.src), address_text(inb.dst)
    if inb.proto in (IPPROTO_TCP, IPPROTO_UDP) and len(inb.l4) >= 4:
        sport, dport = struct.unpack_from("!HH", inb.l4)
        src, dst = f"{src}:{sport}", f"{dst}:{dport}"
    return f"{family} {name} {src} > {dst}, {len(frame)} bytes"
