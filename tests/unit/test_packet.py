"""Ethernet/IPv4/IPv6/UDP parsing, building and checksums, on bytes."""

from __future__ import annotations

import ipaddress

import pytest
from checksums import reference_checksum
from hypothesis import given
from hypothesis import strategies as st

from passt_sep import packet
from passt_sep.packet import Drop

# RFC 1071-style reference: an IPv4 header whose checksum is known (0xb861),
# from the worked example used in most networking textbooks.
IPV4_HEADER = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")


def test_checksum_of_textbook_ipv4_header() -> None:
    assert packet.checksum(IPV4_HEADER) == 0xB861


@pytest.mark.parametrize("data", [b"", b"\x01", b"\xff\xff", b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7",
                                  bytes(range(255)), b"\xff" * 1001])
def test_checksum_matches_reference(data: bytes) -> None:
    ours, theirs = packet.checksum(data), reference_checksum(data)
    # 0x0000 and 0xffff are the two ones' complement zeros: both verify
    assert ours == theirs or {ours, theirs} == {0, 0xFFFF}


def test_ipv4_round_trip_and_header_checksum_verifies() -> None:
    src, dst = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])
    raw = packet.build_ipv4(src, dst, packet.IPPROTO_UDP, b"payload", ttl=17, ident=99)
    assert reference_checksum(raw[:20]) == 0
    parsed = packet.parse_ipv4(raw)
    fields = (parsed.src, parsed.dst, parsed.proto, parsed.ttl, parsed.ident)
    assert fields == (src, dst, 17, 17, 99)
    assert bytes(parsed.payload) == b"payload"
    assert not parsed.fragmented


def test_ipv4_trailing_ethernet_padding_is_ignored() -> None:
    raw = packet.build_ipv4(b"\1\2\3\4", b"\5\6\7\10", 17, b"abc") + b"\0" * 20
    assert bytes(packet.parse_ipv4(raw).payload) == b"abc"


@pytest.mark.parametrize("raw, reason", [
    (b"\x45" * 10, "ipv4_short"),
    (b"\x65" + IPV4_HEADER[1:], "ipv4_version"),
    (IPV4_HEADER, "ipv4_length"),  # total length 0x73 > 20 bytes given
    (b"\x44" + bytes(19), "ipv4_length"),  # IHL 4 < 5
])
def test_ipv4_malformed(raw: bytes, reason: str) -> None:
    with pytest.raises(Drop) as info:
        packet.parse_ipv4(raw)
    assert info.value.reason == reason


def test_ipv4_fragment_flag() -> None:
    raw = bytearray(packet.build_ipv4(b"\1\2\3\4", b"\5\6\7\10", 17, b"abc"))
    raw[6] = 0x20  # more fragments
    assert packet.parse_ipv4(bytes(raw)).fragmented


def test_ipv6_round_trip_with_extension_headers() -> None:
    src = ipaddress.IPv6Address("2001:db8::1").packed
    dst = ipaddress.IPv6Address("2001:db8::2").packed
    hop_by_hop = bytes([17, 0]) + bytes(6)  # next header UDP, 8 bytes long
    raw = packet.build_ipv6(src, dst, 0, hop_by_hop + b"data", hop_limit=5)
    parsed = packet.parse_ipv6(raw)
    assert (parsed.src, parsed.dst, parsed.next_header, parsed.hop_limit) == (src, dst, 17, 5)
    assert bytes(parsed.payload) == b"data"


def test_ipv6_fragment_and_truncated_extension_dropped() -> None:
    src = dst = bytes(16)
    with pytest.raises(Drop, match="ipv6_fragment"):
        packet.parse_ipv6(packet.build_ipv6(src, dst, 44, bytes(8)))
    with pytest.raises(Drop, match="ipv6_ext_length"):
        packet.parse_ipv6(packet.build_ipv6(src, dst, 0, bytes([17, 3]) + bytes(6)))
    with pytest.raises(Drop, match="ipv6_length"):
        packet.parse_ipv6(packet.build_ipv6(src, dst, 17, b"abcd")[:-1])


def test_udp_checksum_v4_and_v6_verify_with_pseudo_header() -> None:
    v6_pair = (ipaddress.IPv6Address("fe80::1").packed, ipaddress.IPv6Address("ff02::1:2").packed)
    for src, dst in ((b"\xc0\x00\x02\x01", b"\xc6\x33\x64\x07"), v6_pair):
        segment = packet.build_udp(src, dst, 546, 547, b"hello world")
        assert packet.checksum(segment, packet.pseudo_header_sum(src, dst, 17, len(segment))) == 0
        parsed = packet.parse_udp(segment)
        assert (parsed.sport, parsed.dport, bytes(parsed.payload)) == (546, 547, b"hello world")


def test_udp_malformed() -> None:
    with pytest.raises(Drop, match="udp_short"):
        packet.parse_udp(b"1234")
    with pytest.raises(Drop, match="udp_length"):
        packet.parse_udp(bytes.fromhex("00350035" "0064" "0000"))


def test_full_frame_parse() -> None:
    frame = packet.udp_frame(b"\x02" * 6, b"\x9a\x55" * 3, b"\1\2\3\4", b"\5\6\7\10",
                             1000, 53, b"q")
    eth = packet.parse_ethernet(frame)
    assert (eth.dst, eth.src, eth.ethertype) == (b"\x02" * 6, b"\x9a\x55" * 3, packet.ETH_P_IP)
    inbound = packet.parse_ip_frame(eth)
    assert (inbound.src, inbound.dst, inbound.proto, inbound.is_ipv6) == (
        b"\1\2\3\4", b"\5\6\7\10", 17, False)
    with pytest.raises(Drop, match="eth_short"):
        packet.parse_ethernet(frame[:13])


def test_mac_conversions() -> None:
    assert packet.mac_to_bytes("9a:55:9A:55:9a:55") == bytes.fromhex("9a559a559a55")
    assert packet.mac_to_str(bytes.fromhex("9a559a559a55")) == "9a:55:9a:55:9a:55"
    with pytest.raises(ValueError):
        packet.mac_to_bytes("9a:55")




@given(st.binary(max_size=200))
def test_parsers_only_raise_drop(data: bytes) -> None:
    for parser in (packet.parse_ethernet, packet.parse_ipv4, packet.parse_ipv6, packet.parse_udp):
        try:
            parser(data)
        except Drop:
            pass


@given(st.binary(max_size=1500))
def test_checksum_property(data: bytes) -> None:
    # the sum over data plus its checksum always verifies
    padded = data + (b"\0" if len(data) % 2 else b"")
    csum = packet.checksum(padded)
    assert packet.checksum(padded + csum.to_bytes(2, "big")) in (0, 0xFFFF)


def test_describe_frame_says_what_a_frame_is() -> None:
    """--trace's one line per guest frame."""
    mac = bytes(6)
    frame = packet.udp_frame(mac, mac, bytes([198, 51, 100, 2]), bytes([203, 0, 113, 1]),
                             5353, 53, b"query")
    assert packet.describe_frame(frame) == \
        f"IPv4 UDP 198.51.100.2:5353 > 203.0.113.1:53, {len(frame)} bytes"
    assert packet.describe_frame(b"\x00" * 12 + b"\x08\x06" + bytes(28)) == "ARP, 42 bytes"
    assert packet.describe_frame(b"\x00" * 10).startswith("unparsed (")
