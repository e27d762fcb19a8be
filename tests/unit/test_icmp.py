"""ICMP/ICMPv6 echo: guest requests parsed, ping-socket payloads built,
replies turned into frames with reference checksums; the echo flow table."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from checksums import reference_checksum
from hypothesis import given
from hypothesis import strategies as st

from passt_sep import icmp, packet
from passt_sep.flow import FlowKey, FlowTable
from passt_sep.netparams import DEFAULT_OUR_MAC, IPv4Params, IPv6Params, Network


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


GUEST_MAC = bytes.fromhex("525400123456")
GUEST4, PEER4 = ip("198.51.100.2"), ip("203.0.113.7")
GUEST6, PEER6 = ip("2001:db8:1::2"), ip("2001:db8:2::7")
NET = Network(ipv4=IPv4Params(GUEST4, 24, ip("198.51.100.1")),
              ipv6=IPv6Params(GUEST6, 64, ip("fe80::1")))
WINDOWS_DATA = b"abcdefghijklmnopqrstuvwabcdefghi"
# The first echo request of Windows "ping", as every capture shows it.
WINDOWS_REQUEST = bytes.fromhex("08004d5a00010001") + WINDOWS_DATA
WINDOWS_REPLY = bytes.fromhex("0000555a00010001") + WINDOWS_DATA


def pseudo6(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + struct.pack("!I", length) + b"\0\0\0\x3a"


def echo(kind: int, ident: int, seq: int, data: bytes, src: bytes = b"", dst: bytes = b"",
         code: int = 0, fix: bool = True) -> bytes:
    message = bytearray(struct.pack("!BBHHH", kind, code, 0, ident, seq) + data)
    if fix:
        prefix = pseudo6(src, dst, len(message)) if len(src) == 16 else b""
        struct.pack_into("!H", message, 2, reference_checksum(prefix + bytes(message)))
    return bytes(message)


def inbound(message: bytes, src: bytes = GUEST4, dst: bytes = PEER4) -> packet.Inbound:
    proto = packet.IPPROTO_ICMPV6 if len(src) == 16 else packet.IPPROTO_ICMP
    frame = packet.ip_frame(DEFAULT_OUR_MAC, GUEST_MAC, src, dst, proto, message)
    return packet.parse_ip_frame(packet.parse_ethernet(frame))


# -- guest requests -----------------------------------------------------------------

def test_reference_checksum_matches_the_windows_capture() -> None:
    assert echo(8, 1, 1, WINDOWS_DATA) == WINDOWS_REQUEST
    assert echo(0, 1, 1, WINDOWS_DATA) == WINDOWS_REPLY


def test_windows_ping_request_parses() -> None:
    request = icmp.parse_echo_request(inbound(WINDOWS_REQUEST))
    assert request == icmp.EchoRequest(PEER4, 1, 1, WINDOWS_DATA, False)


def test_linux_ping6_request_parses() -> None:
    data = struct.pack("!QQ", 1700000000, 123456) + bytes(range(0x10, 0x38))
    message = echo(128, 0x4A2F, 3, data, GUEST6, PEER6)
    request = icmp.parse_echo_request(inbound(message, GUEST6, PEER6))
    assert request == icmp.EchoRequest(PEER6, 0x4A2F, 3, data, True)


def test_ipv6_checksum_covers_the_pseudo_header() -> None:
    without_pseudo = echo(128, 7, 1, b"x", fix=False)
    without_pseudo = without_pseudo[:2] + struct.pack(
        "!H", reference_checksum(without_pseudo)) + without_pseudo[4:]
    with pytest.raises(packet.Drop, match="icmp_checksum"):
        icmp.parse_echo_request(inbound(without_pseudo, GUEST6, PEER6))
    # and the other way round: IPv4 ICMP has no pseudo-header
    with_pseudo = echo(8, 7, 1, b"x", GUEST6, PEER6)
    with pytest.raises(packet.Drop, match="icmp_checksum"):
        icmp.parse_echo_request(inbound(with_pseudo))


@pytest.mark.parametrize("index", [2, 3, 5, 8, 20])
def test_corrupted_request_dropped(index: int) -> None:
    message = bytearray(WINDOWS_REQUEST)
    message[index] ^= 0x10
    with pytest.raises(packet.Drop, match="icmp_checksum"):
        icmp.parse_echo_request(inbound(bytes(message)))


def test_zero_and_ffff_checksums_both_accepted() -> None:
    """A message summing to 0xffff: the field may hold 0x0000 or 0xffff."""
    for stored in (b"\x00\x00", b"\xff\xff"):
        message = b"\x08\x00" + stored + b"\xf7\xff\x00\x00"    # 0x0800 + 0xf7ff = 0xffff
        assert icmp.parse_echo_request(inbound(message)) == icmp.EchoRequest(
            PEER4, 0xF7FF, 0, b"", False)


@pytest.mark.parametrize("kind, code, v6", [
    (0, 0, False), (3, 3, False), (13, 0, False), (8, 1, False), (128, 0, False),
    (129, 0, True), (1, 4, True), (8, 0, True), (128, 9, True)])
def test_other_messages_are_not_echo_requests(kind: int, code: int, v6: bool) -> None:
    src, dst = (GUEST6, PEER6) if v6 else (GUEST4, PEER4)
    message = echo(kind, 1, 1, b"data", src, dst, code=code)
    assert icmp.parse_echo_request(inbound(message, src, dst)) is None


@pytest.mark.parametrize("v6", [False, True])
def test_short_message_dropped(v6: bool) -> None:
    src, dst = (GUEST6, PEER6) if v6 else (GUEST4, PEER4)
    with pytest.raises(packet.Drop, match="icmp_short"):
        icmp.parse_echo_request(inbound(WINDOWS_REQUEST[:7], src, dst))


# -- what goes to the ping socket, what comes back ---------------------------------------

def test_request_payload_for_the_ping_socket() -> None:
    request = icmp.EchoRequest(PEER4, 0xBEEF, 513, b"hello", False)
    assert icmp.echo_request_payload(request) == bytes.fromhex("08000000beef0201") + b"hello"
    request6 = icmp.EchoRequest(PEER6, 1, 2, b"", True)
    assert icmp.echo_request_payload(request6) == bytes.fromhex("8000000000010002")
    # --clat: an IPv4 guest's request leaves on an IPv6 ping socket
    assert icmp.echo_request_payload(request, True) == bytes.fromhex("80000000beef0201") + \
        b"hello"


@pytest.mark.parametrize("message, v6, expected", [
    (WINDOWS_REPLY, False, (1, WINDOWS_DATA)),
    (bytes.fromhex("0000000004d2ffff"), False, (0xFFFF, b"")),
    (bytes.fromhex("8100000000070009") + b"v6", True, (9, b"v6")),
    (WINDOWS_REPLY, True, None),                            # family mismatch
    (bytes.fromhex("8100000000070009"), False, None),
    (WINDOWS_REQUEST, False, None),                         # not a reply
    (bytes.fromhex("0303") + bytes(30), False, None),       # unreachable
    (WINDOWS_REPLY[:7], False, None),
    (b"", True, None),
])
def test_parse_echo_reply(message: bytes, v6: bool, expected: tuple | None) -> None:
    assert icmp.parse_echo_reply(message, v6) == expected


def test_ipv4_reply_frame_to_the_guest() -> None:
    frame = icmp.echo_reply_frame(NET, GUEST_MAC, PEER4, GUEST4, 1, 1, WINDOWS_DATA)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(WINDOWS_REPLY), 0, 0x4000, 64, 1,
                         0, PEER4, GUEST4)
    header = header[:10] + struct.pack("!H", reference_checksum(header)) + header[12:]
    assert frame == GUEST_MAC + DEFAULT_OUR_MAC + b"\x08\x00" + header + WINDOWS_REPLY


def test_ipv6_reply_frame_to_the_guest() -> None:
    frame = icmp.echo_reply_frame(NET, GUEST_MAC, PEER6, GUEST6, 0x4A2F, 3, b"pong")
    message = echo(129, 0x4A2F, 3, b"pong", PEER6, GUEST6)
    header = struct.pack("!IHBB16s16s", 0x60000000, len(message), 58, 64, PEER6, GUEST6)
    assert frame == GUEST_MAC + DEFAULT_OUR_MAC + b"\x86\xdd" + header + message
    assert reference_checksum(pseudo6(PEER6, GUEST6, len(message)) + frame[54:]) == 0


idents, seqs = st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)


@given(st.booleans(), idents, seqs, st.binary(max_size=200))
def test_request_relay_and_reply_round_trip(v6: bool, ident: int, seq: int, data: bytes) -> None:
    guest, peer = (GUEST6, PEER6) if v6 else (GUEST4, PEER4)
    message = echo(128 if v6 else 8, ident, seq, data, guest, peer)
    request = icmp.parse_echo_request(inbound(message, guest, peer))
    assert request == icmp.EchoRequest(peer, ident, seq, data, v6)
    payload = icmp.echo_request_payload(request)
    assert payload == message[:2] + b"\0\0" + message[4:]
    # the kernel answers with its own identifier and checksum
    kernel_reply = echo(129 if v6 else 0, 0x7777, seq, data, peer, guest)
    assert icmp.parse_echo_reply(kernel_reply, v6) == (seq, data)
    frame = icmp.echo_reply_frame(NET, GUEST_MAC, peer, guest, ident, seq, data)
    eth = packet.parse_ethernet(frame)
    assert (eth.dst, eth.src) == (GUEST_MAC, DEFAULT_OUR_MAC)
    inb = packet.parse_ip_frame(eth)
    assert (inb.src, inb.dst, inb.ttl) == (peer, guest, 64)
    reply = bytes(inb.l4)
    expected = echo(129 if v6 else 0, ident, seq, data, peer, guest)
    assert reply[:2] + reply[4:] == expected[:2] + expected[4:]
    # 0x0000 and 0xffff are both valid when the rest sums to 0xffff
    prefix = pseudo6(peer, guest, len(reply)) if v6 else b""
    assert reference_checksum(prefix + reply) == 0


@given(st.booleans(), st.binary(max_size=100))
def test_arbitrary_bytes_only_drop(v6: bool, message: bytes) -> None:
    src, dst = (GUEST6, PEER6) if v6 else (GUEST4, PEER4)
    try:
        request = icmp.parse_echo_request(inbound(message, src, dst))
    except packet.Drop as drop:
        assert drop.reason in ("icmp_short", "icmp_checksum")
        return
    if request is not None:
        assert message[:2] == (b"\x80\x00" if v6 else b"\x08\x00")
        assert (request.ident, request.seq, request.data) == (
            int.from_bytes(message[4:6], "big"), int.from_bytes(message[6:8], "big"),
            message[8:])


@given(st.binary(max_size=40), st.booleans())
def test_arbitrary_replies_never_raise(message: bytes, v6: bool) -> None:
    reply = icmp.parse_echo_reply(message, v6)
    assert reply is None or reply == (int.from_bytes(message[6:8], "big"), message[8:])


# -- the flow table -----------------------------------------------------------------------

def echo_flow(v6: bool, ident: int, dst: bytes) -> FlowKey:
    return FlowKey(packet.IPPROTO_ICMPV6 if v6 else packet.IPPROTO_ICMP,
                   GUEST6 if v6 else GUEST4, ident, dst, 0)


KEY_A, KEY_B = echo_flow(False, 1, PEER4), echo_flow(True, 1, PEER6)
KEY_C = echo_flow(False, 2, PEER4)


def test_echo_key_is_the_guests_view_with_the_identifier_as_its_port() -> None:
    request = icmp.EchoRequest(PEER6, 77, 1, b"", True)
    assert icmp.echo_key(request, GUEST6) == FlowKey(packet.IPPROTO_ICMPV6, GUEST6, 77, PEER6, 0)
    request4 = icmp.EchoRequest(PEER4, 77, 1, b"", False)
    assert icmp.echo_key(request4, GUEST4).proto == packet.IPPROTO_ICMP


def test_flows_map_keys_and_handles_both_ways() -> None:
    flows = icmp.EchoFlows(FlowTable(8))
    assert flows.get(KEY_A, 0.0) is None and len(flows) == 0
    assert flows.add(KEY_A, 10, 0.0) and flows.add(KEY_B, 11, 0.0)
    assert (flows.get(KEY_A, 1.0), flows.get(KEY_B, 1.0), flows.get(KEY_C, 1.0)) == (10, 11, None)
    assert (flows.by_handle(10), flows.by_handle(11), flows.by_handle(12)) == (KEY_A, KEY_B, None)
    assert len(flows) == 2


def test_flows_are_capped() -> None:
    flows = icmp.EchoFlows(FlowTable(2))
    assert flows.add(KEY_A, 10, 0.0) and flows.add(KEY_B, 11, 0.0)
    assert not flows.add(KEY_C, 12, 0.0)
    assert flows.get(KEY_C, 0.0) is None and flows.by_handle(12) is None
    assert flows.expired(100.0) == [10, 11]
    assert flows.add(KEY_C, 12, 100.0)


def test_idle_flows_expire_and_use_keeps_them() -> None:
    flows = icmp.EchoFlows(FlowTable(8), timeout=60.0)
    flows.add(KEY_A, 10, 0.0)
    flows.add(KEY_B, 11, 0.0)
    flows.add(KEY_C, 12, 30.0)
    assert flows.get(KEY_A, 50.0) == 10          # used again at 50
    assert flows.expired(60.0) == []             # exactly the timeout: not yet
    assert flows.expired(60.5) == [11]
    assert flows.by_handle(11) is None and flows.get(KEY_B, 60.5) is None
    assert flows.expired(100.0) == [12]
    assert flows.expired(110.5) == [10]
    assert len(flows) == 0 and flows.keys == {}


@given(st.lists(st.tuples(st.booleans(), idents, st.sampled_from([PEER4, PEER6, GUEST4]),
                          st.floats(0, 500)), max_size=30),
       st.integers(1, 10), st.floats(0, 1000))
def test_flow_table_invariants(adds: list, cap: int, sweep: float) -> None:
    flows = icmp.EchoFlows(FlowTable(cap), timeout=60.0)
    last_use = {}
    for handle, (v6, ident, dst, now) in enumerate(adds):
        key = echo_flow(v6, ident, dst)
        if flows.get(key, now) is None and flows.add(key, handle, now):
            last_use[key] = (handle, now)
        elif key in last_use:
            last_use[key] = (last_use[key][0], now)
        assert len(flows) <= cap
    expired = flows.expired(sweep)
    assert sorted(expired) == sorted(h for h, used in last_use.values() if sweep - used > 60.0)
    for key, (handle, used) in last_use.items():
        live = sweep - used <= 60.0
        assert (flows.by_handle(handle) == key) == live
    assert len(flows) == len(flows.keys)
