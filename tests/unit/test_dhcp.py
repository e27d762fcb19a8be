"""DHCPv4 server: hand-built RFC 2131 requests, every field of the replies."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace

import pytest

from passt_sep import dhcp, packet
from passt_sep.netparams import IPv4Params, Network

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


GUEST_MAC = bytes.fromhex("525400123456")
GUEST, GATEWAY = ip4("198.51.100.2"), ip4("198.51.100.1")
DNS1, DNS2 = ip4("198.51.100.53"), ip4("203.0.113.53")
NET = Network(mtu=65520, ipv4=IPv4Params(GUEST, 24, GATEWAY, dns=(DNS1, DNS2)),
              search=("example.test", "lab.example.test"))
ZERO = bytes(4)
XID = 0x3903F326
CLIENT_ID = b"\x01" + GUEST_MAC
SEARCH_WIRE = b"\x07example\x04test\x00\x03lab\x07example\x04test\x00"

# RFC 2131 §2 figure 1, independent of the module under test
FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
COOKIE = bytes([99, 130, 83, 99])


def tlv(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def client_options(msg_type: int) -> bytes:
    """What busybox udhcpc sends, with a PAD thrown in."""
    return (tlv(53, bytes([msg_type])) + tlv(61, CLIENT_ID) + tlv(57, struct.pack("!H", 576))
            + b"\x00"
            + tlv(55, bytes([1, 3, 6, 12, 15, 28, 42, 119, 26]))
            + tlv(60, b"udhcp 1.36.1") + tlv(12, b"guest"))


def bootrequest(options: bytes, ciaddr: bytes = ZERO, flags: int = 0x8000,
                end: bytes = b"\xff", op: int = 1) -> bytes:
    fixed = FIXED.pack(op, 1, 6, 0, XID, 7, flags, ciaddr, ZERO, ZERO, ZERO,
                       GUEST_MAC + bytes(10), b"", b"")
    return fixed + COOKIE + options + end


def ask(payload: bytes, net: Network = NET, **flags: bool) -> bytes | None:
    src = ZERO if payload[12:16] == ZERO else payload[12:16]
    frame = packet.udp_frame(packet.BROADCAST_MAC, GUEST_MAC, src, b"\xff" * 4, 68, 67, payload)
    inb = packet.parse_ip_frame(packet.parse_ethernet(frame))
    return dhcp.handle_dhcp(net, inb, packet.parse_udp(inb.l4), **flags)


def decode_options(data: bytes) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    offset = 0
    while data[offset] != 255:
        code, length = data[offset], data[offset + 1]
        assert code not in options, "reply repeats an option"
        options[code] = data[offset + 2:offset + 2 + length]
        offset += 2 + length
    assert not any(data[offset + 1:]), "padding after END must be zero"
    return options


def open_reply(frame: bytes, chaddr: bytes = GUEST_MAC) -> tuple[tuple, dict[int, bytes]]:
    """Check the Ethernet, IPv4 and UDP headers; the BOOTP fields and options."""
    dst_mac, src_mac, ethertype = struct.unpack_from("!6s6sH", frame)
    assert (dst_mac, src_mac, ethertype) == (chaddr, NET.our_mac, 0x0800)
    ip = frame[14:34]
    assert packet.checksum(ip) in (0, 0xFFFF)   # both ones' complement zeros
    ver_ihl, _tos, total, _id, frag, ttl, proto, _csum, src, dst = struct.unpack(
        "!BBHHHBBH4s4s", ip)
    assert (ver_ihl, total, frag, ttl, proto) == (0x45, len(frame) - 14, 0x4000, 64, 17)
    assert (src, dst) == (GATEWAY, b"\xff" * 4)
    segment = frame[34:]
    sport, dport, length, csum = struct.unpack_from("!HHHH", segment)
    assert (sport, dport, length) == (67, 68, len(segment))
    assert csum != 0
    assert packet.checksum(segment, packet.pseudo_header_sum(src, dst, 17, length)) in (0, 0xFFFF)
    payload = segment[8:]
    assert len(payload) >= 300
    fields = FIXED.unpack_from(payload)
    assert fields[1:4] == (1, 6, 0)             # htype, hlen, hops
    assert fields[11] == chaddr + bytes(10)
    assert fields[12:] == (bytes(64), bytes(128))
    assert payload[FIXED.size:FIXED.size + 4] == COOKIE
    op, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr = (fields[0], *fields[4:11])
    return (op, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr), \
        decode_options(payload[FIXED.size + 4:])


def lease_options(msg_type: int) -> dict[int, bytes]:
    return {53: bytes([msg_type]), 54: GATEWAY, 51: b"\xff\xff\xff\xff",
            1: ip4("255.255.255.0"), 3: GATEWAY, 28: ip4("198.51.100.255"),
            6: DNS1 + DNS2, 119: SEARCH_WIRE, 26: struct.pack("!H", 65520), 61: CLIENT_ID}


def test_discover_gets_an_offer_of_the_lease() -> None:
    fields, options = open_reply(ask(bootrequest(client_options(dhcp.DISCOVER))))
    assert fields == (2, XID, 0, 0x8000, ZERO, GUEST, ZERO, ZERO)
    assert options == lease_options(dhcp.OFFER)


def test_request_while_selecting_is_acknowledged() -> None:
    request = client_options(dhcp.REQUEST) + tlv(50, GUEST) + tlv(54, GATEWAY)
    fields, options = open_reply(ask(bootrequest(request, flags=0)))
    assert fields == (2, XID, 0, 0, ZERO, GUEST, ZERO, ZERO)
    assert options == lease_options(dhcp.ACK)


def test_renewing_request_names_the_address_in_ciaddr() -> None:
    fields, options = open_reply(ask(bootrequest(client_options(dhcp.REQUEST), ciaddr=GUEST,
                                                 flags=0)))
    assert fields == (2, XID, 0, 0, GUEST, GUEST, ZERO, ZERO)
    assert options == lease_options(dhcp.ACK)


@pytest.mark.parametrize("request_options, ciaddr", [
    (tlv(50, ip4("198.51.100.9")), ZERO),        # INIT-REBOOT with an old address
    (b"", ip4("192.0.2.7")),                     # RENEWING another address
    (b"", ZERO),                                 # names no address at all
])
def test_request_for_another_address_is_refused(request_options: bytes, ciaddr: bytes) -> None:
    payload = bootrequest(client_options(dhcp.REQUEST) + request_options, ciaddr=ciaddr)
    fields, options = open_reply(ask(payload))
    assert fields == (2, XID, 0, 0x8000, ZERO, ZERO, ZERO, ZERO)
    assert options == {53: bytes([dhcp.NAK]), 54: GATEWAY, 61: CLIENT_ID}


def test_request_for_another_server_is_ignored() -> None:
    request = client_options(dhcp.REQUEST) + tlv(50, GUEST) + tlv(54, ip4("198.51.100.250"))
    assert ask(bootrequest(request)) is None


def test_inform_gets_configuration_without_a_lease() -> None:
    fields, options = open_reply(ask(bootrequest(client_options(dhcp.INFORM), ciaddr=GUEST,
                                                 flags=0)))
    assert fields == (2, XID, 0, 0, GUEST, ZERO, ZERO, ZERO)
    expected = lease_options(dhcp.ACK)
    del expected[51]
    assert options == expected


@pytest.mark.parametrize("msg_type", [dhcp.RELEASE, dhcp.DECLINE])
def test_release_and_decline_get_no_answer(msg_type: int) -> None:
    assert ask(bootrequest(client_options(msg_type) + tlv(54, GATEWAY), ciaddr=GUEST)) is None


def test_dns_and_search_left_out_on_request() -> None:
    _, options = open_reply(ask(bootrequest(client_options(dhcp.DISCOVER)),
                                send_dns=False, send_search=False))
    assert 6 not in options and 119 not in options
    bare = replace(NET, search=(), ipv4=replace(NET.ipv4, dns=()))
    _, options = open_reply(ask(bootrequest(client_options(dhcp.DISCOVER)), net=bare))
    assert 6 not in options and 119 not in options


@pytest.mark.parametrize("mtu, sent", [(65520, True), (65535, True), (576, True),
                                       (575, False), (65536, False)])
def test_mtu_only_within_the_option_range(mtu: int, sent: bool) -> None:
    _, options = open_reply(ask(bootrequest(client_options(dhcp.DISCOVER)),
                                net=replace(NET, mtu=mtu)))
    assert options.get(26) == (struct.pack("!H", mtu) if sent else None)


def test_host_route_lease_has_no_broadcast_address() -> None:
    net = replace(NET, ipv4=replace(NET.ipv4, prefix_len=32))
    _, options = open_reply(ask(bootrequest(client_options(dhcp.DISCOVER)), net=net))
    assert options[1] == b"\xff" * 4 and 28 not in options


@pytest.mark.parametrize("prefix_len, mask", [(0, "0.0.0.0"), (8, "255.0.0.0"),
                                              (22, "255.255.252.0"), (31, "255.255.255.254"),
                                              (32, "255.255.255.255")])
def test_subnet_mask(prefix_len: int, mask: str) -> None:
    assert dhcp.subnet_mask(prefix_len) == ip4(mask)


def test_search_list_is_rfc_3397_example_uncompressed() -> None:
    net = replace(NET, search=("eng.apple.com", "marketing.apple.com"))
    _, options = open_reply(ask(bootrequest(client_options(dhcp.DISCOVER)), net=net))
    assert options[119] == (b"\x03eng\x05apple\x03com\x00"
                            b"\x09marketing\x05apple\x03com\x00")


def test_long_option_is_split_and_joined_again() -> None:
    """RFC 3396: a search list over 255 bytes goes out as several options."""
    domains = tuple(f"d{i:02}.example.test" for i in range(20))
    payload = ask(bootrequest(client_options(dhcp.DISCOVER)), net=replace(NET, search=domains))
    body = payload[14 + 20 + 8:]
    wire = b"".join(b"\x03" + d[:3].encode() + b"\x07example\x04test\x00" for d in domains)
    assert len(wire) > 255
    assert tlv(119, wire[:255]) + tlv(119, wire[255:]) in body
    assert dhcp.parse_dhcp(body).options[119] == wire


def test_parse_joins_split_options_skips_pads_and_tolerates_missing_end() -> None:
    options = b"\x00\x00" + tlv(53, b"\x01") + tlv(12, b"gue") + b"\x00" + tlv(12, b"st")
    message = dhcp.parse_dhcp(bootrequest(options, end=b""))
    assert message.options == {53: b"\x01", 12: b"guest"}
    assert (message.op, message.xid, message.flags, message.secs) == (1, XID, 0x8000, 7)
    assert (message.ciaddr, message.chaddr, message.message_type) == (ZERO, GUEST_MAC, 1)


def test_parse_stops_at_end() -> None:
    message = dhcp.parse_dhcp(bootrequest(tlv(53, b"\x03"), end=b"\xff" + b"\x37\x50junk"))
    assert message.options == {53: b"\x03"}


def test_build_pads_to_bootp_size() -> None:
    message = dhcp.DhcpMessage(2, 1, 0, ZERO, GUEST_MAC, {53: b"\x02"})
    wire = dhcp.build_dhcp(message)
    assert len(wire) == 300
    assert wire[236:244] == COOKIE + b"\x35\x01\x02\xff"
    assert dhcp.parse_dhcp(wire) == message


@pytest.mark.parametrize("payload, reason", [
    (bootrequest(b"")[:239], "dhcp_short"),
    (bootrequest(b"")[:236] + b"\x63\x82\x53\x64\xff", "dhcp_cookie"),
    (bootrequest(b"")[:1] + b"\x06" + bootrequest(b"")[2:], "dhcp_hardware"),
    (bootrequest(b"")[:2] + b"\x10" + bootrequest(b"")[3:], "dhcp_hardware"),
    (bootrequest(tlv(12, b"guest"), end=b"\x35"), "dhcp_option_length"),
    (bootrequest(tlv(12, b"guest"), end=b"\x35\x01"), "dhcp_option_length"),
    (bootrequest(tlv(12, b"guest")), "dhcp_no_type"),
    (bootrequest(tlv(53, b"\x01\x01")), "dhcp_no_type"),
    (bootrequest(tlv(53, b"\x02")), "dhcp_type"),
    (bootrequest(tlv(53, b"\x01"), op=2), "dhcp_op"),
])
def test_malformed_requests_are_dropped(payload: bytes, reason: str) -> None:
    with pytest.raises(packet.Drop) as excinfo:
        ask(payload)
    assert excinfo.value.reason == reason


def test_no_ipv4_no_dhcp() -> None:
    with pytest.raises(packet.Drop, match="dhcp_no_ipv4"):
        ask(bootrequest(client_options(dhcp.DISCOVER)), net=replace(NET, ipv4=None))


def test_message_validates_itself() -> None:
    with pytest.raises(ValueError):
        dhcp.DhcpMessage(1, 0, 0, ZERO, GUEST_MAC + b"\0")
    with pytest.raises(ValueError):
        dhcp.DhcpMessage(1, 0, 0, b"\0" * 3, GUEST_MAC)
    with pytest.raises(ValueError):
        dhcp.DhcpMessage(1, 0, 0, ZERO, GUEST_MAC, {255: b""})


addresses = st.binary(min_size=4, max_size=4)
messages = st.builds(
    dhcp.DhcpMessage,
    op=st.integers(0, 255), xid=st.integers(0, 2**32 - 1), flags=st.integers(0, 0xFFFF),
    ciaddr=addresses, chaddr=st.binary(min_size=6, max_size=6),
    options=st.dictionaries(st.integers(1, 254), st.binary(max_size=600), max_size=8),
    yiaddr=addresses, siaddr=addresses, giaddr=addresses, secs=st.integers(0, 0xFFFF))


@hypothesis.given(messages)
def test_parse_inverts_build(message: dhcp.DhcpMessage) -> None:
    assert dhcp.parse_dhcp(dhcp.build_dhcp(message)) == message


def _fuzz(payload: bytes) -> None:
    try:
        reply = ask(payload)
    except packet.Drop:
        return
    if reply is not None:
        open_reply(reply, chaddr=payload[28:34])


@hypothesis.given(st.binary(max_size=400))
def test_arbitrary_bytes_only_drop(payload: bytes) -> None:
    _fuzz(payload)


option_soup = st.lists(st.one_of(
    st.tuples(st.sampled_from([1, 12, 50, 53, 54, 55, 61]), st.binary(max_size=8)),
    st.tuples(st.just(53), st.integers(0, 10).map(lambda t: bytes([t])))), max_size=6)


@hypothesis.given(option_soup, addresses, st.binary(max_size=3))
def test_arbitrary_options_only_drop(options: list[tuple[int, bytes]], ciaddr: bytes,
                                     tail: bytes) -> None:
    _fuzz(bootrequest(b"".join(tlv(code, value) for code, value in options), ciaddr=ciaddr,
                      end=tail))
