"""DHCPv6 server: hand-built RFC 8415 messages, every field of the replies."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace

import pytest

from passt_sep import dhcpv6, packet
from passt_sep.netparams import IPv6Params, Network

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


GUEST_MAC = bytes.fromhex("525400123456")
GUEST_LL = ip6("fe80::5054:ff:fe12:3456")
ALL_SERVERS, ALL_SERVERS_MAC = ip6("ff02::1:2"), bytes.fromhex("333300010002")
GUEST, OLD = ip6("2001:db8:1::2"), ip6("2001:db8:1::99")
DNS1, DNS2 = ip6("2001:db8:1::53"), ip6("2001:db8:2::53")
NET = Network(ipv6=IPv6Params(GUEST, 64, ip6("2001:db8:1::1"), dns=(DNS1, DNS2)),
              search=("example.test",))
OUR_LL = ip6("fe80::9855:9aff:fe55:9a55")        # EUI-64 of 9a:55:9a:55:9a:55
SERVER_DUID = bytes.fromhex("00030001") + bytes.fromhex("9a559a559a55")
CLIENT_DUID = bytes.fromhex("00010001") + struct.pack("!I", 0x2B3C4D5E) + GUEST_MAC
XID = 0xA1B2C3
IAID = bytes.fromhex("0c123456")
INFINITE = b"\xff\xff\xff\xff"
SEARCH_WIRE = b"\x07example\x04test\x00"
CONFIG = [(23, DNS1 + DNS2), (24, SEARCH_WIRE)]


def opt(code: int, value: bytes = b"") -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def ia_na(*addresses: bytes, iaid: bytes = IAID) -> bytes:
    held = b"".join(opt(5, a + struct.pack("!II", 3600, 7200)) for a in addresses)
    return opt(3, iaid + struct.pack("!II", 0, 0) + held)


def message(msg_type: int, *options: bytes, client: bool = True) -> bytes:
    """A dhclient-like message: client ID, elapsed time, option request."""
    common = (opt(1, CLIENT_DUID) if client else b"") + opt(8, b"\0\0") + opt(6, b"\0\x17\0\x18")
    return struct.pack("!I", msg_type << 24 | XID) + common + b"".join(options)


def ask(payload: bytes, net: Network = NET, **flags: bool) -> bytes | None:
    frame = packet.udp_frame(ALL_SERVERS_MAC, GUEST_MAC, GUEST_LL, ALL_SERVERS, 546, 547,
                             payload)
    inb = packet.parse_ip_frame(packet.parse_ethernet(frame))
    return dhcpv6.handle_dhcpv6(net, inb, packet.parse_udp(inb.l4), **flags)


def decode_options(data: bytes) -> list[tuple[int, bytes]]:
    options = []
    while data:
        code, length = struct.unpack_from("!HH", data)
        assert len(data) >= 4 + length
        options.append((code, data[4:4 + length]))
        data = data[4 + length:]
    return options


def open_reply(frame: bytes, src: bytes = OUR_LL,
               xid: int = XID) -> tuple[int, list[tuple[int, bytes]]]:
    """Check the Ethernet, IPv6 and UDP headers; message type and options."""
    assert struct.unpack_from("!6s6sH", frame) == (GUEST_MAC, NET.our_mac, 0x86DD)
    vtcfl, plen, nxt, hlim, ip_src, ip_dst = struct.unpack_from("!IHBB16s16s", frame, 14)
    assert (vtcfl, plen, nxt, hlim) == (0x60000000, len(frame) - 54, 17, 64)
    assert (ip_src, ip_dst) == (src, GUEST_LL)
    segment = frame[54:]
    sport, dport, length, csum = struct.unpack_from("!HHHH", segment)
    assert (sport, dport, length) == (547, 546, len(segment))
    assert csum != 0
    pseudo = packet.pseudo_header_sum(ip_src, ip_dst, 17, length)
    assert packet.checksum(segment, pseudo) in (0, 0xFFFF)  # both ones' complement zeros
    (header,) = struct.unpack_from("!I", segment, 8)
    assert header & 0xFFFFFF == xid
    return header >> 24, decode_options(segment[12:])


def ours(iaid: bytes = IAID, *retired: bytes) -> tuple[int, bytes]:
    """Our answer to an IA_NA: the guest's address forever, retired ones never."""
    addresses = opt(5, GUEST + INFINITE + INFINITE)
    addresses += b"".join(opt(5, a + bytes(8)) for a in retired)
    return 3, iaid + INFINITE + INFINITE + addresses


IDS = [(2, SERVER_DUID), (1, CLIENT_DUID)]


def test_solicit_gets_an_advertise_with_top_preference() -> None:
    kind, options = open_reply(ask(message(dhcpv6.SOLICIT, ia_na())))
    assert kind == dhcpv6.ADVERTISE
    assert options == [*IDS, (7, b"\xff"), ours(), *CONFIG]


def test_solicit_with_rapid_commit_gets_the_reply() -> None:
    kind, options = open_reply(ask(message(dhcpv6.SOLICIT, opt(14), ia_na())))
    assert kind == dhcpv6.REPLY
    assert options == [*IDS, (14, b""), ours(), *CONFIG]


def test_request_naming_us_is_answered() -> None:
    kind, options = open_reply(ask(message(dhcpv6.REQUEST, opt(2, SERVER_DUID), ia_na(GUEST))))
    assert kind == dhcpv6.REPLY
    assert options == [*IDS, ours(), *CONFIG]


@pytest.mark.parametrize("msg_type, server_id", [
    (dhcpv6.REQUEST, b""), (dhcpv6.REQUEST, opt(2, bytes.fromhex("0003000102aabbccddee"))),
    (dhcpv6.RENEW, b""), (dhcpv6.RELEASE, opt(2, SERVER_DUID[:-1])),
    (dhcpv6.DECLINE, opt(2, SERVER_DUID + b"\0")),
    (dhcpv6.SOLICIT, opt(2, SERVER_DUID)), (dhcpv6.REBIND, opt(2, SERVER_DUID)),
    (dhcpv6.CONFIRM, opt(2, SERVER_DUID)),
    (dhcpv6.INFORMATION_REQUEST, opt(2, bytes.fromhex("0003000102aabbccddee"))),
])
def test_messages_for_another_server_are_ignored(msg_type: int, server_id: bytes) -> None:
    """RFC 8415 §16: the server named must be us, or none may be named."""
    assert ask(message(msg_type, server_id, ia_na(GUEST))) is None


def test_several_ias_answered_in_order_prefix_delegation_refused() -> None:
    other = bytes.fromhex("00000002")
    pd = opt(25, IAID + bytes(8) + opt(26, struct.pack("!IIB", 0, 0, 56) + bytes(16)))
    ta = opt(4, IAID)
    request = message(dhcpv6.REQUEST, opt(2, SERVER_DUID), ia_na(), ta, pd, ia_na(iaid=other))
    _, options = open_reply(ask(request))
    no_prefix = opt(13, b"\x00\x06no prefixes to delegate")
    assert options == [*IDS, ours(), (25, IAID + bytes(8) + no_prefix), ours(other), *CONFIG]


@pytest.mark.parametrize("msg_type, server_id", [(dhcpv6.RENEW, opt(2, SERVER_DUID)),
                                                 (dhcpv6.REBIND, b"")])
def test_renew_and_rebind_retire_addresses_that_are_not_the_guest(msg_type: int,
                                                                  server_id: bytes) -> None:
    kind, options = open_reply(ask(message(msg_type, server_id, ia_na(GUEST, OLD))))
    assert kind == dhcpv6.REPLY
    assert options == [*IDS, ours(IAID, OLD), *CONFIG]


def test_request_does_not_retire_hints() -> None:
    _, options = open_reply(ask(message(dhcpv6.REQUEST, opt(2, SERVER_DUID), ia_na(OLD))))
    assert options == [*IDS, ours(), *CONFIG]


@pytest.mark.parametrize("held, status", [
    ((GUEST,), b"\x00\x00all addresses still valid"),
    ((GUEST, OLD), b"\x00\x04not the address we lease"),
])
def test_confirm_checks_the_addresses_held(held: tuple[bytes, ...], status: bytes) -> None:
    kind, options = open_reply(ask(message(dhcpv6.CONFIRM, ia_na(*held))))
    assert kind == dhcpv6.REPLY
    assert options == [*IDS, (13, status)]


def test_confirm_without_addresses_gets_no_reply() -> None:
    assert ask(message(dhcpv6.CONFIRM, ia_na())) is None


@pytest.mark.parametrize("msg_type", [dhcpv6.RELEASE, dhcpv6.DECLINE])
def test_release_and_decline_succeed(msg_type: int) -> None:
    kind, options = open_reply(ask(message(msg_type, opt(2, SERVER_DUID), ia_na(GUEST))))
    assert kind == dhcpv6.REPLY
    assert options == [*IDS, (13, b"\x00\x00")]


@pytest.mark.parametrize("client, server_id", [(False, b""), (True, b""),
                                               (True, opt(2, SERVER_DUID))])
def test_information_request_gets_only_configuration(client: bool, server_id: bytes) -> None:
    request = message(dhcpv6.INFORMATION_REQUEST, server_id, ia_na(), client=client)
    kind, options = open_reply(ask(request))
    assert kind == dhcpv6.REPLY
    assert options == (IDS if client else IDS[:1]) + CONFIG


def test_dns_and_search_left_out_on_request() -> None:
    _, options = open_reply(ask(message(dhcpv6.SOLICIT, ia_na()), send_dns=False,
                                send_search=False))
    assert options == [*IDS, (7, b"\xff"), ours()]
    bare = replace(NET, search=(), ipv6=replace(NET.ipv6, dns=()))
    _, options = open_reply(ask(message(dhcpv6.INFORMATION_REQUEST), net=bare))
    assert options == IDS


def test_reply_comes_from_a_link_local_gateway() -> None:
    gateway = ip6("fe80::1")
    net = replace(NET, ipv6=replace(NET.ipv6, gateway=gateway))
    open_reply(ask(message(dhcpv6.SOLICIT, ia_na()), net=net), src=gateway)


def test_search_list_is_rfc_3397_example_uncompressed() -> None:
    net = replace(NET, search=("eng.apple.com", "marketing.apple.com"))
    _, options = open_reply(ask(message(dhcpv6.INFORMATION_REQUEST), net=net))
    assert options[-1] == (24, b"\x03eng\x05apple\x03com\x00\x09marketing\x05apple\x03com\x00")


def test_server_duid_is_duid_ll_of_our_mac() -> None:
    assert dhcpv6.server_duid(NET) == SERVER_DUID


def test_parse_and_build_a_message() -> None:
    wire = message(dhcpv6.SOLICIT, opt(14), ia_na(GUEST))
    parsed = dhcpv6.parse_dhcpv6(wire)
    assert (parsed.msg_type, parsed.transaction_id) == (dhcpv6.SOLICIT, XID)
    assert [code for code, _ in parsed.options] == [1, 8, 6, 14, 3]
    assert parsed.get(1) == CLIENT_DUID and parsed.get(2) is None
    assert parsed.all(3) == [IAID + bytes(8) + opt(5, GUEST + struct.pack("!II", 3600, 7200))]
    assert dhcpv6.build_dhcpv6(parsed) == wire


@pytest.mark.parametrize("payload, reason", [
    (b"\x01\x00\x00", "dhcpv6_short"),
    (message(dhcpv6.SOLICIT) + b"\x00\x03\x00", "dhcpv6_option_short"),
    (message(dhcpv6.SOLICIT) + b"\x00\x03\x00\x0d" + bytes(12), "dhcpv6_option_length"),
    (message(dhcpv6.SOLICIT, client=False), "dhcpv6_no_client_id"),
    (message(dhcpv6.SOLICIT, opt(3, IAID)), "dhcpv6_ia_short"),
    (message(dhcpv6.SOLICIT, opt(25, bytes(11))), "dhcpv6_ia_short"),
    (message(dhcpv6.SOLICIT, opt(3, IAID + bytes(8) + b"\x00\x05\x00")), "dhcpv6_option_short"),
    (message(dhcpv6.CONFIRM, opt(3, IAID + bytes(8) + opt(5, GUEST))), "dhcpv6_iaaddr_short"),
    (message(dhcpv6.ADVERTISE), "dhcpv6_type"),
    (message(dhcpv6.REPLY), "dhcpv6_type"),
    (message(12), "dhcpv6_type"),                       # RELAY-FORW: no relays on a tap
])
def test_malformed_messages_are_dropped(payload: bytes, reason: str) -> None:
    with pytest.raises(packet.Drop) as excinfo:
        ask(payload)
    assert excinfo.value.reason == reason


def test_no_ipv6_no_dhcpv6() -> None:
    with pytest.raises(packet.Drop, match="dhcpv6_no_ipv6"):
        ask(message(dhcpv6.SOLICIT, ia_na()), net=replace(NET, ipv6=None))


def test_message_validates_itself() -> None:
    with pytest.raises(ValueError):
        dhcpv6.Dhcpv6Message(256, 0)
    with pytest.raises(ValueError):
        dhcpv6.Dhcpv6Message(1, 1 << 24)


messages = st.builds(
    dhcpv6.Dhcpv6Message, msg_type=st.integers(0, 255), transaction_id=st.integers(0, 0xFFFFFF),
    options=st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=300)), max_size=8))


@hypothesis.given(messages)
def test_parse_inverts_build(msg: dhcpv6.Dhcpv6Message) -> None:
    assert dhcpv6.parse_dhcpv6(dhcpv6.build_dhcpv6(msg)) == msg


def _fuzz(payload: bytes) -> None:
    try:
        reply = ask(payload)
    except packet.Drop:
        return
    if reply is not None:
        open_reply(reply, xid=int.from_bytes(payload[1:4], "big"))


@hypothesis.given(st.binary(max_size=200))
def test_arbitrary_bytes_only_drop(payload: bytes) -> None:
    _fuzz(payload)


inner = st.lists(st.tuples(st.sampled_from([5, 13, 26]), st.binary(max_size=30)),
                 max_size=3).map(lambda opts: b"".join(opt(c, v) for c, v in opts))
ia = st.tuples(st.binary(min_size=10, max_size=12), inner).map(lambda parts: b"".join(parts))
option_soup = st.lists(st.one_of(
    st.tuples(st.sampled_from([3, 4, 25]), ia),
    st.tuples(st.sampled_from([1, 2, 14]), st.binary(max_size=12)),
    st.tuples(st.just(2), st.just(SERVER_DUID))), max_size=6)


@hypothesis.given(st.integers(0, 13), option_soup)
def test_arbitrary_options_only_drop(msg_type: int, options: list[tuple[int, bytes]]) -> None:
    _fuzz(struct.pack("!I", msg_type << 24 | XID)
          + b"".join(opt(code, value) for code, value in options))
