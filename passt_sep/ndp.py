"""Neighbour Discovery (RFC 4861) with RDNSS and DNSSL (RFC 8106).

As with ARP, passt-sep answers neighbour solicitations for every address
but the guest's own, and it is the guest's router: router solicitations
get an advertisement of the host's prefix (SLAAC), the MTU, our link-layer
address, and the resolvers and search list.  No I/O here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .dnswire import encode_names
from .netparams import Network
from .packet import (
    IPPROTO_ICMPV6,
    IPV6_HLEN,
    Drop,
    Inbound,
    build_ethernet,
    build_ipv6,
    l4_checksum,
)

ROUTER_SOLICIT, ROUTER_ADVERT, NEIGHBOUR_SOLICIT, NEIGHBOUR_ADVERT = 133, 134, 135, 136
OPT_SOURCE_LL, OPT_TARGET_LL, OPT_PREFIX, OPT_MTU, OPT_RDNSS, OPT_DNSSL = 1, 2, 3, 5, 25, 31
MAX_OPTION = 255 * 8           # the option length field counts 8-octet units
OPTION_OVERHEAD = 2 + 6 + 7    # type, length, reserved and lifetime, worst padding
MAX_RA_MTU = 1500              # one advertisement stays within a usual link's MTU
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80000000, 0x40000000, 0x20000000
RA_MANAGED, RA_OTHER = 0x80, 0x40
PREFIX_ON_LINK, PREFIX_AUTONOMOUS = 0x80, 0x40
INFINITE = 0xFFFFFFFF
ROUTER_LIFETIME = 65535
DNS_LIFETIME = 0xFFFFFFFF
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC = bytes.fromhex("333300000001")
UNSPECIFIED = bytes(16)
ETH_P_IPV6 = 0x86DD
MIN_MTU, MAX_MTU = 1280, 65520


@dataclass(frozen=True)
class NdpOption:
    """One NDP option, its type and body."""

    kind: int
    body: bytes          # without the type and length octets


def parse_options(data: bytes | memoryview) -> list[NdpOption]:
    """TLV options; a zero length or one that overruns is malformed."""
    options = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 2:
            raise Drop("ndp_option_short")
        kind, units = data[offset], data[offset + 1]
        size = units * 8
        if units == 0 or offset + size > len(data):
            raise Drop("ndp_option_length")
        options.append(NdpOption(kind, bytes(data[offset + 2:offset + size])))
        offset += size
    return options


def build_option(kind: int, body: bytes) -> bytes:
    """Type, length in 8-octet units, body padded to a multiple of 8."""
    total = -(-(len(body) + 2) // 8) * 8
    return bytes([kind, total // 8]) + body + bytes(total - 2 - len(body))


def _list_options(kind: int, items: list[bytes], room: int) -> list[bytes]:
    """RDNSS or DNSSL options carrying ``items`` (addresses, encoded names)
    in at most ``room`` bytes: as many options as the 8-bit option length
    needs (RFC 8106 allows several); what does not fit is left out."""
    options: list[bytes] = []
    chunk = b""

    def flush() -> None:
        nonlocal chunk, room
        option = build_option(kind, struct.pack("!HI", 0, DNS_LIFETIME) + chunk)
        options.append(option)
        room -= len(option)
        chunk = b""

    for item in items:
        if OPTION_OVERHEAD + len(chunk) + len(item) > min(MAX_OPTION, room):
            if chunk:
                flush()
            if OPTION_OVERHEAD + len(item) > min(MAX_OPTION, room):
                break
        chunk += item
    if chunk:
        flush()
    return options


def handle_ndp(net: Network, inb: Inbound, send_ra: bool, managed: bool = True,
               other: bool = True, send_mtu: bool = True) -> bytes | None:
    """Answer a neighbour or router solicitation from the guest."""
    message = inb.l4
    if len(message) < 4:
        raise Drop("icmpv6_short")
    kind = message[0]
    if kind not in (ROUTER_SOLICIT, NEIGHBOUR_SOLICIT):
        return None
    if inb.ttl != 255:
        raise Drop("ndp_hop_limit")
    if l4_checksum(inb.src, inb.dst, IPPROTO_ICMPV6, message) not in (0, 0xFFFF):
        raise Drop("icmpv6_checksum")
    if kind == NEIGHBOUR_SOLICIT:
        return _neighbour_advert(net, inb)
    if not send_ra or net.ipv6 is None:
        return None
    if len(message) < 8:
        raise Drop("ndp_rs_short")
    parse_options(message[8:])
    return router_advertisement(net, dst_mac=inb.eth.src,
                                dst_ip=inb.src if inb.src != UNSPECIFIED else None,
                                managed=managed, other=other, send_mtu=send_mtu)


def _neighbour_advert(net: Network, inb: Inbound) -> bytes | None:
    message = inb.l4
    if len(message) < 24:
        raise Drop("ndp_ns_short")
    target = bytes(message[8:24])
    parse_options(message[24:])
    if inb.src == UNSPECIFIED:
        return None  # duplicate address detection: the address is free
    if net.ipv6 is not None and target == net.ipv6.addr:
        return None
    body = struct.pack("!I", NA_ROUTER | NA_SOLICITED | NA_OVERRIDE) + target
    body += build_option(OPT_TARGET_LL, net.our_mac)
    return _icmpv6_frame(net, inb.eth.src, target, inb.src, NEIGHBOUR_ADVERT, body)


def router_advertisement(net: Network, dst_mac: bytes | None = None,
                         dst_ip: bytes | None = None, managed: bool = True,
                         other: bool = True, send_mtu: bool = True) -> bytes:
    """The advertisement of the host's prefix, MTU (unless ``-m 0``),
    resolvers and domains."""
    assert net.ipv6 is not None
    flags = (RA_MANAGED if managed else 0) | (RA_OTHER if other else 0)
    body = struct.pack("!BBHII", 64, flags, ROUTER_LIFETIME, 0, 0)
    body += build_option(OPT_PREFIX, struct.pack(
        "!BBIII16s", net.ipv6.prefix_len, PREFIX_ON_LINK | PREFIX_AUTONOMOUS,
        INFINITE, INFINITE, 0, net.ipv6.prefix))
    if send_mtu:
        body += build_option(OPT_MTU, struct.pack("!HI", 0, min(max(net.mtu, MIN_MTU), MAX_MTU)))
    body += build_option(OPT_SOURCE_LL, net.our_mac)
    room = min(net.mtu, MAX_RA_MTU) - IPV6_HLEN - 4 - len(body)
    for kind, items in ((OPT_RDNSS, list(net.ipv6.dns)),
                        (OPT_DNSSL, [encode_names((domain,)) for domain in net.search])):
        for option in _list_options(kind, items, room):
            body += option
            room -= len(option)
    return _icmpv6_frame(net, dst_mac or ALL_NODES_MAC, net.our_link_local,
                         dst_ip or ALL_NODES, ROUTER_ADVERT, body)


def _icmpv6_frame(net: Network, dst_mac: bytes, src: bytes, dst: bytes, kind: int,
                  body: bytes) -> bytes:
    message = bytearray(bytes([kind, 0, 0, 0]) + body)
    struct.pack_into("!H", message, 2, l4_checksum(src, dst, IPPROTO_ICMPV6, message))
    return build_ethernet(dst_mac, net.our_mac, ETH_P_IPV6,
                          build_ipv6(src, dst, IPPROTO_ICMPV6, message, hop_limit=255))
