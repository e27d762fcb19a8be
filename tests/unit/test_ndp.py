"""Neighbour Discovery: hand-built RFC 4861 solicitations, every field of the
advertisements, RFC 8106 RDNSS and DNSSL options, reference checksums."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace

import pytest
from checksums import reference_checksum
from hypothesis import given
from hypothesis import strategies as st

from passt_sep import ndp, packet
from passt_sep.netparams import DEFAULT_OUR_MAC, IPv4Params, IPv6Params, Network


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


GUEST_MAC = bytes.fromhex("525400123456")
GUEST_LL = ip6("fe80::5054:ff:fe12:3456")
GUEST = ip6("2001:db8:1::2")
GATEWAY_LL = ip6("fe80::1")
DNS1, DNS2 = ip6("2001:db8:1::53"), ip6("2001:db8:2::53")
NET = Network(ipv4=IPv4Params(bytes([198, 51, 100, 2]), 24, bytes([198, 51, 100, 1])),
              ipv6=IPv6Params(GUEST, 64, GATEWAY_LL, dns=(DNS1, DNS2)),
              search=("example.test", "lab.example.test"))
OUR_EUI64_LL = ip6("fe80::9855:9aff:fe55:9a55")     # EUI-64 of 9a:55:9a:55:9a:55
ALL_NODES, ALL_ROUTERS = ip6("ff02::1"), ip6("ff02::2")
ALL_NODES_MAC, ALL_ROUTERS_MAC = bytes.fromhex("333300000001"), bytes.fromhex("333300000002")
UNSPECIFIED = bytes(16)
INFINITE = 0xFFFFFFFF
SEARCH_WIRE = b"\x07example\x04test\x00\x03lab\x07example\x04test\x00"


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """RFC 4443 §2.3 / RFC 8200 §8.1, a plain loop over 16-bit words."""
    return reference_checksum(src + dst + struct.pack("!I", len(message)) + b"\0\0\0\x3a"
                              + message)


def solicited_node(addr: bytes) -> tuple[bytes, bytes]:
    """(ff02::1:ffXX:XXXX, 33:33:ff:XX:XX:XX) for an address."""
    group = ip6("ff02::1:ff00:0")[:13] + addr[13:]
    return group, b"\x33\x33" + group[12:]


def frame(src: bytes, dst: bytes, message: bytes, dst_mac: bytes, hop_limit: int = 255,
          fix_checksum: bool = True, src_mac: bytes = GUEST_MAC) -> bytes:
    message = bytearray(message)
    if fix_checksum:
        struct.pack_into("!H", message, 2, icmpv6_checksum(src, dst, bytes(message)))
    header = struct.pack("!IHBB16s16s", 0x60000000, len(message), 58, hop_limit, src, dst)
    return dst_mac + src_mac + b"\x86\xdd" + header + bytes(message)


def slla(mac: bytes = GUEST_MAC) -> bytes:
    return b"\x01\x01" + mac


def ns_message(target: bytes, options: bytes = b"") -> bytes:
    return struct.pack("!BBHI16s", 135, 0, 0, 0, target) + options


def rs_message(options: bytes = b"") -> bytes:
    return struct.pack("!BBHI", 133, 0, 0, 0) + options


def handle(raw: bytes, net: Network = NET, send_ra: bool = True, **flags: bool) -> bytes | None:
    inb = packet.parse_ip_frame(packet.parse_ethernet(raw))
    return ndp.handle_ndp(net, inb, send_ra, **flags)


def neighbour_solicit(target: bytes, src: bytes = GUEST_LL, options: bytes | None = None,
                      **kwargs) -> bytes:
    group, group_mac = solicited_node(target)
    return frame(src, group, ns_message(target, slla() if options is None else options),
                 group_mac, **kwargs)


def router_solicit(src: bytes = GUEST_LL, options: bytes | None = None, **kwargs) -> bytes:
    return frame(src, ALL_ROUTERS, rs_message(slla() if options is None else options),
                 ALL_ROUTERS_MAC, **kwargs)


def open_icmpv6(raw: bytes, dst_mac: bytes, src: bytes, dst: bytes,
                our_mac: bytes = DEFAULT_OUR_MAC) -> bytes:
    """Check Ethernet and IPv6 headers and the checksum; the ICMPv6 message."""
    assert struct.unpack_from("!6s6sH", raw) == (dst_mac, our_mac, 0x86DD)
    vtcfl, plen, nxt, hlim, ip_src, ip_dst = struct.unpack_from("!IHBB16s16s", raw, 14)
    assert (vtcfl, plen, nxt, hlim) == (0x60000000, len(raw) - 54, 58, 255)
    assert (ip_src, ip_dst) == (src, dst)
    message = raw[54:]
    assert icmpv6_checksum(src, dst, message) in (0, 0xFFFF)
    stored = struct.unpack_from("!H", message, 2)[0]
    assert stored == icmpv6_checksum(src, dst, message[:2] + b"\0\0" + message[4:])
    assert message[1] == 0, "code"
    return message


def split_options(data: bytes) -> list[tuple[int, bytes]]:
    """An independent TLV walk; each body includes its padding."""
    out = []
    while data:
        kind, units = data[0], data[1]
        assert units > 0 and units * 8 <= len(data)
        out.append((kind, data[2:units * 8]))
        data = data[units * 8:]
    return out


def open_ra(raw: bytes, dst_mac: bytes = GUEST_MAC, dst: bytes = GUEST_LL,
            src: bytes = GATEWAY_LL) -> tuple[tuple, list[tuple[int, bytes]]]:
    message = open_icmpv6(raw, dst_mac, src, dst)
    assert message[0] == 134
    hop_limit, flags, lifetime, reachable, retrans = struct.unpack_from("!BBHII", message, 4)
    return (hop_limit, flags, lifetime, reachable, retrans), split_options(message[16:])


def prefix_option(prefix: str, length: int) -> tuple[int, bytes]:
    return 3, struct.pack("!BBIII16s", length, 0xC0, INFINITE, INFINITE, 0, ip6(prefix))


def mtu_option(mtu: int) -> tuple[int, bytes]:
    return 5, struct.pack("!HI", 0, mtu)


def full_ra_options(mtu: int = 65520) -> list[tuple[int, bytes]]:
    return [prefix_option("2001:db8:1::", 64), mtu_option(mtu), (1, DEFAULT_OUR_MAC),
            (25, struct.pack("!HI", 0, INFINITE) + DNS1 + DNS2),
            (31, struct.pack("!HI", 0, INFINITE) + SEARCH_WIRE)]


# -- neighbour solicitations ------------------------------------------------------

def test_solicitation_for_the_gateway_gets_an_advertisement() -> None:
    reply = handle(neighbour_solicit(GATEWAY_LL))
    message = open_icmpv6(reply, GUEST_MAC, GATEWAY_LL, GUEST_LL)
    assert message[:4] == bytes([136, 0]) + message[2:4]
    assert message[4:] == bytes.fromhex("e0000000") + GATEWAY_LL + b"\x02\x01" + DEFAULT_OUR_MAC


def test_advertisement_checksum_known_answer() -> None:
    """Pseudo-header + NA words sum to 0x7b897, folded 0xb899, complemented 0x4761."""
    reply = handle(neighbour_solicit(GATEWAY_LL))
    assert reply[56:58] == bytes.fromhex("4761")


@pytest.mark.parametrize("target", ["2001:db8:1::77", "2001:db8:1::1", "2001:db8:ffff::1",
                                    "fe80::9855:9aff:fe55:9a55", "fe80::abcd"])
def test_every_other_address_is_ours(target: str) -> None:
    src = GUEST                    # global source, as for a neighbour on the prefix
    reply = handle(neighbour_solicit(ip6(target), src=src))
    message = open_icmpv6(reply, GUEST_MAC, ip6(target), src)
    flags, got_target = struct.unpack_from("!I16s", message, 4)
    assert (message[0], flags, got_target) == (136, 0xE0000000, ip6(target))
    assert split_options(message[24:]) == [(2, DEFAULT_OUR_MAC)]


def test_unicast_solicitation_without_options_is_answered() -> None:
    """Neighbour unreachability detection: unicast, no source link-layer option."""
    raw = frame(GUEST_LL, GATEWAY_LL, ns_message(GATEWAY_LL), DEFAULT_OUR_MAC)
    message = open_icmpv6(handle(raw), GUEST_MAC, GATEWAY_LL, GUEST_LL)
    assert message[0] == 136 and message[8:24] == GATEWAY_LL


def test_advertisement_goes_to_the_ethernet_source_and_uses_our_mac() -> None:
    other_mac, our_mac = bytes.fromhex("02aabbccddee"), bytes.fromhex("020000000099")
    raw = neighbour_solicit(GATEWAY_LL, src_mac=other_mac)
    reply = handle(raw, net=replace(NET, our_mac=our_mac))
    message = open_icmpv6(reply, other_mac, GATEWAY_LL, GUEST_LL, our_mac=our_mac)
    assert split_options(message[24:]) == [(2, our_mac)]


@pytest.mark.parametrize("raw", [
    neighbour_solicit(GUEST),                                      # the guest's own address
    neighbour_solicit(GUEST, src=UNSPECIFIED, options=b""),        # DAD for it
    neighbour_solicit(GATEWAY_LL, src=UNSPECIFIED, options=b""),   # DAD for another
], ids=["own", "dad-own", "dad-other"])
def test_own_address_and_duplicate_address_detection_unanswered(raw: bytes) -> None:
    assert handle(raw) is None


def test_neighbour_solicitation_answered_even_without_ipv6_parameters() -> None:
    reply = handle(neighbour_solicit(GUEST), net=replace(NET, ipv6=None))
    assert open_icmpv6(reply, GUEST_MAC, GUEST, GUEST_LL)[8:24] == GUEST


# -- router solicitations ---------------------------------------------------------

def test_router_solicitation_gets_prefix_mtu_and_resolvers() -> None:
    header, options = open_ra(handle(router_solicit()))
    assert header == (64, 0xC0, 65535, 0, 0)
    assert options == full_ra_options()


def test_advertisement_known_bytes() -> None:
    """The whole frame, byte for byte, for a small configuration."""
    net = Network(ipv6=IPv6Params(GUEST, 64, GATEWAY_LL, dns=(DNS1,)), search=("example.test",))
    reply = handle(router_solicit(), net=net, managed=False, other=False)
    message = (bytes.fromhex("86000000" "40" "00" "ffff" "00000000" "00000000")
               + bytes.fromhex("0304" "40c0" "ffffffff" "ffffffff" "00000000")
               + ip6("2001:db8:1::")
               + bytes.fromhex("0501" "0000" "0000fff0")
               + b"\x01\x01" + DEFAULT_OUR_MAC
               + bytes.fromhex("1903" "0000" "ffffffff") + DNS1
               + bytes.fromhex("1f03" "0000" "ffffffff") + b"\x07example\x04test\x00" + b"\0\0")
    message = message[:2] + struct.pack("!H", icmpv6_checksum(GATEWAY_LL, GUEST_LL,
                                                              message)) + message[4:]
    header = struct.pack("!IHBB16s16s", 0x60000000, len(message), 58, 255, GATEWAY_LL,
                         GUEST_LL)
    assert reply == GUEST_MAC + DEFAULT_OUR_MAC + b"\x86\xdd" + header + message


def test_source_is_the_hosts_link_local_when_the_gateway_is_global() -> None:
    """As passt: the host's own link-local address on the template
    interface; one made from our MAC only if the host has none."""
    host_ll = ip6("fe80::40ad:72ff:fed5:da74")
    net = replace(NET, ipv6=replace(NET.ipv6, gateway=ip6("2001:db8:1::1"),
                                    host_link_local=host_ll))
    _, options = open_ra(handle(router_solicit(), net=net), src=host_ll)
    assert options == full_ra_options()
    net = replace(net, ipv6=replace(net.ipv6, host_link_local=None))
    assert net.our_link_local == OUR_EUI64_LL
    _, options = open_ra(handle(router_solicit(), net=net), src=OUR_EUI64_LL)
    assert options == full_ra_options()


def test_solicitation_from_unspecified_address_answered_to_all_nodes() -> None:
    _, options = open_ra(handle(router_solicit(src=UNSPECIFIED, options=b"")), dst=ALL_NODES)
    assert options == full_ra_options()


def test_unsolicited_advertisement_goes_to_all_nodes() -> None:
    header, options = open_ra(ndp.router_advertisement(NET), dst_mac=ALL_NODES_MAC,
                              dst=ALL_NODES)
    assert header == (64, 0xC0, 65535, 0, 0)
    assert options == full_ra_options()


@pytest.mark.parametrize("managed, other, flags", [(True, True, 0xC0), (True, False, 0x80),
                                                   (False, True, 0x40), (False, False, 0)])
def test_managed_and_other_flags(managed: bool, other: bool, flags: int) -> None:
    header, _ = open_ra(handle(router_solicit(), managed=managed, other=other))
    assert header[1] == flags


@pytest.mark.parametrize("mtu, advertised", [(65520, 65520), (65535, 65520), (1500, 1500),
                                             (1280, 1280), (1279, 1280), (576, 1280)])
def test_mtu_is_clamped_to_ipv6_limits(mtu: int, advertised: int) -> None:
    _, options = open_ra(handle(router_solicit(), net=replace(NET, mtu=mtu)))
    assert options[1] == mtu_option(advertised)


@pytest.mark.parametrize("addr, length, prefix", [
    ("2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::"),
    ("2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::"),
    ("2001:db8:1:2ff:3:4:5:6", 56, "2001:db8:1:200::"),
    ("2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6"),
])
def test_prefix_option_carries_the_host_prefix(addr: str, length: int, prefix: str) -> None:
    net = replace(NET, ipv6=replace(NET.ipv6, addr=ip6(addr), prefix_len=length))
    _, options = open_ra(handle(router_solicit(), net=net))
    assert options[0] == prefix_option(prefix, length)


def test_no_resolvers_no_rdnss_no_search_no_dnssl() -> None:
    net = replace(NET, search=(), ipv6=replace(NET.ipv6, dns=()))
    _, options = open_ra(handle(router_solicit(), net=net))
    assert [kind for kind, _ in options] == [3, 5, 1]


def test_dnssl_is_padded_with_zeros() -> None:
    net = replace(NET, search=("a.b",))        # 5 wire bytes + 6 header + 2 = 13 -> 16
    _, options = open_ra(handle(router_solicit(), net=net))
    assert options[4] == (31, struct.pack("!HI", 0, INFINITE) + b"\x01a\x01b\x00" + bytes(3))


def test_router_solicitation_ignored_without_ra_or_ipv6() -> None:
    assert handle(router_solicit(), send_ra=False) is None
    assert handle(router_solicit(), net=replace(NET, ipv6=None)) is None


def test_long_search_list_does_not_break_the_advertisement() -> None:
    """Domains go in as many DNSSL options as they need, and what does not
    fit one advertisement within the link's MTU is left out."""
    domains = tuple(f"d{i:03}.example.test" for i in range(120))   # 2400 wire bytes
    raw = handle(router_solicit(), net=replace(NET, search=domains))
    _, options = open_ra(raw)
    assert [kind for kind, _ in options][:3] == [3, 5, 1]
    assert 31 in [kind for kind, _ in options]
    assert len(raw) <= 14 + 1500


# -- what is ignored or dropped -------------------------------------------------------

@pytest.mark.parametrize("kind", [128, 129, 1, 134, 136, 137, 143])
def test_other_icmpv6_messages_are_not_ours(kind: int) -> None:
    message = struct.pack("!BBHI16s", kind, 0, 0, 0, GATEWAY_LL)
    assert handle(frame(GUEST_LL, ALL_ROUTERS, message, ALL_ROUTERS_MAC, hop_limit=1)) is None


@pytest.mark.parametrize("raw, reason", [
    (frame(GUEST_LL, ALL_ROUTERS, b"\x85\x00\x00", ALL_ROUTERS_MAC, fix_checksum=False),
     "icmpv6_short"),
    (router_solicit(hop_limit=254), "ndp_hop_limit"),
    (neighbour_solicit(GATEWAY_LL, hop_limit=64), "ndp_hop_limit"),
    (router_solicit(fix_checksum=False), "icmpv6_checksum"),
    (neighbour_solicit(GATEWAY_LL, fix_checksum=False), "icmpv6_checksum"),
    (frame(GUEST_LL, ALL_ROUTERS, b"\x85\x00\x00\x00\x00\x00", ALL_ROUTERS_MAC),
     "ndp_rs_short"),
    (frame(GUEST_LL, GATEWAY_LL, ns_message(GATEWAY_LL)[:23], DEFAULT_OUR_MAC),
     "ndp_ns_short"),
    (neighbour_solicit(GATEWAY_LL, options=b"\x01\x00" + GUEST_MAC), "ndp_option_length"),
    (neighbour_solicit(GATEWAY_LL, options=b"\x01\x02" + GUEST_MAC), "ndp_option_length"),
    (neighbour_solicit(GATEWAY_LL, options=slla() + b"\x01"), "ndp_option_short"),
    (router_solicit(options=b"\x01\x00" + GUEST_MAC), "ndp_option_length"),
    (router_solicit(options=slla() + b"\x0e\x01\x00"), "ndp_option_length"),
])
def test_malformed_dropped(raw: bytes, reason: str) -> None:
    with pytest.raises(packet.Drop) as info:
        handle(raw)
    assert info.value.reason == reason


# -- options -----------------------------------------------------------------------

@pytest.mark.parametrize("kind, body, wire", [
    (1, DEFAULT_OUR_MAC, b"\x01\x01" + DEFAULT_OUR_MAC),
    (5, b"\0\0\0\0\x05\xdc", bytes.fromhex("050100000000" "05dc")),
    (31, b"", b"\x1f\x01" + bytes(6)),
    (25, bytes(7), b"\x19\x02" + bytes(14)),
])
def test_build_option_known_answers(kind: int, body: bytes, wire: bytes) -> None:
    assert ndp.build_option(kind, body) == wire


def test_parse_options_reads_every_option() -> None:
    data = slla() + b"\x0e\x02" + bytes(14) + b"\x05\x01" + bytes(6)
    assert ndp.parse_options(data) == [ndp.NdpOption(1, GUEST_MAC), ndp.NdpOption(14, bytes(14)),
                                       ndp.NdpOption(5, bytes(6))]
    assert ndp.parse_options(memoryview(data)) == ndp.parse_options(data)
    assert ndp.parse_options(b"") == []


@given(st.integers(0, 255), st.binary(max_size=300))
def test_parse_inverts_build_option(kind: int, body: bytes) -> None:
    wire = ndp.build_option(kind, body)
    assert len(wire) % 8 == 0 and len(wire) - 8 < len(body) + 2 <= len(wire)
    (option,) = ndp.parse_options(wire)
    assert option.kind == kind
    assert option.body == body + bytes(len(wire) - 2 - len(body))


@given(st.binary(max_size=80))
def test_arbitrary_options_only_drop(data: bytes) -> None:
    try:
        options = ndp.parse_options(data)
    except packet.Drop as drop:
        assert drop.reason in ("ndp_option_short", "ndp_option_length")
        return
    assert b"".join(bytes([o.kind, (len(o.body) + 2) // 8]) + o.body for o in options) == data


@given(st.sampled_from([133, 135]), st.integers(0, 255), st.binary(max_size=60),
       st.booleans(), st.sampled_from([GUEST_LL, UNSPECIFIED, GUEST]))
def test_arbitrary_solicitations_only_drop(kind: int, code: int, body: bytes, fix: bool,
                                           src: bytes) -> None:
    raw = frame(src, ALL_ROUTERS, bytes([kind, code, 0, 0]) + body, ALL_ROUTERS_MAC,
                fix_checksum=fix)
    try:
        reply = handle(raw)
    except packet.Drop:
        return
    if reply is None:
        return
    if kind == 133:
        dst = ALL_NODES if src == UNSPECIFIED else src
        _, options = open_ra(reply, dst=dst)
        assert options == full_ra_options()
    else:
        target = body[4:20]
        message = open_icmpv6(reply, GUEST_MAC, target, src)
        assert message[0] == 136 and message[8:24] == target


@given(st.binary(max_size=120))
def test_arbitrary_icmpv6_bytes_only_drop(message: bytes) -> None:
    raw = frame(GUEST_LL, ALL_ROUTERS, message, ALL_ROUTERS_MAC, fix_checksum=len(message) >= 4)
    try:
        reply = handle(raw)
    except packet.Drop:
        return
    assert reply is None or reply[54] in (134, 136)
