"""ARP responder: hand-built RFC 826 requests, every field of the replies."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt_sep import arp, packet
from passt_sep.netparams import DEFAULT_OUR_MAC, IPv4Params, Network


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


GUEST_MAC = bytes.fromhex("525400123456")
GUEST, GATEWAY = ip4("198.51.100.2"), ip4("198.51.100.1")
NET = Network(ipv4=IPv4Params(GUEST, 24, GATEWAY))
BROADCAST = b"\xff" * 6
ZERO4 = bytes(4)

# RFC 826 packet layout, written out independently of the module under test
ARP = struct.Struct("!HHBBH6s4s6s4s")


def arp_body(op: int = 1, sha: bytes = GUEST_MAC, spa: bytes = GUEST, tha: bytes = bytes(6),
             tpa: bytes = GATEWAY, htype: int = 1, ptype: int = 0x0800, hlen: int = 6,
             plen: int = 4) -> bytes:
    return ARP.pack(htype, ptype, hlen, plen, op, sha, spa, tha, tpa)


def ask(body: bytes, net: Network = NET, src: bytes = GUEST_MAC,
        dst: bytes = BROADCAST) -> bytes | None:
    frame = dst + src + b"\x08\x06" + body
    return arp.handle_arp(net, packet.parse_ethernet(frame))


def open_reply(frame: bytes, our_mac: bytes = DEFAULT_OUR_MAC) -> tuple:
    """Check Ethernet header and fixed ARP fields; (op, sha, spa, tha, tpa)."""
    assert len(frame) == 14 + 28
    dst, src, ethertype = struct.unpack_from("!6s6sH", frame)
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP.unpack_from(frame, 14)
    assert (src, ethertype) == (our_mac, 0x0806)
    assert (htype, ptype, hlen, plen) == (1, 0x0800, 6, 4)
    assert dst == tha, "a reply goes to the hardware address it answers"
    return op, sha, spa, tha, tpa


def test_request_for_the_gateway_gets_our_mac() -> None:
    reply = ask(arp_body(tpa=GATEWAY))
    assert reply == (GUEST_MAC + DEFAULT_OUR_MAC + b"\x08\x06"
                     + bytes.fromhex("0001080006040002") + DEFAULT_OUR_MAC + GATEWAY
                     + GUEST_MAC + GUEST)
    assert open_reply(reply) == (2, DEFAULT_OUR_MAC, GATEWAY, GUEST_MAC, GUEST)


@pytest.mark.parametrize("target", ["198.51.100.77", "198.51.100.255", "203.0.113.9",
                                    "8.8.8.8", "0.0.0.1"])
def test_every_other_address_is_ours(target: str) -> None:
    assert open_reply(ask(arp_body(tpa=ip4(target)))) == (
        2, DEFAULT_OUR_MAC, ip4(target), GUEST_MAC, GUEST)


def test_unicast_request_and_ethernet_padding() -> None:
    """A unicast refresh (Linux re-checks a stale entry this way), padded to
    the 60-byte Ethernet minimum, is answered the same."""
    body = arp_body(tha=DEFAULT_OUR_MAC) + bytes(18)
    reply = ask(body, dst=DEFAULT_OUR_MAC)
    assert open_reply(reply) == (2, DEFAULT_OUR_MAC, GATEWAY, GUEST_MAC, GUEST)


def test_reply_uses_the_configured_mac_and_sender_from_arp_not_ethernet() -> None:
    our_mac = bytes.fromhex("020000aabbcc")
    other = bytes.fromhex("02000000beef")
    reply = ask(arp_body(sha=other, spa=ip4("198.51.100.3")), net=replace(NET, our_mac=our_mac))
    assert open_reply(reply, our_mac=our_mac) == (2, our_mac, GATEWAY, other,
                                                  ip4("198.51.100.3"))


@pytest.mark.parametrize("body", [
    arp_body(tpa=GUEST, spa=ip4("198.51.100.9")),     # somebody asks for the guest
    arp_body(spa=ZERO4, tpa=GATEWAY),                 # RFC 5227 probe for the gateway
    arp_body(spa=ZERO4, tpa=GUEST),                   # duplicate address detection
    arp_body(spa=GUEST, tpa=GUEST),                   # gratuitous announcement
    arp_body(spa=ip4("198.51.100.50"), tpa=ip4("198.51.100.50")),
], ids=["own-address", "probe-gateway", "dad", "gratuitous", "gratuitous-other"])
def test_probes_announcements_and_own_address_unanswered(body: bytes) -> None:
    assert ask(body) is None


@pytest.mark.parametrize("op", [0, 2, 3, 4, 8, 9, 0xFFFF])
def test_only_requests_are_answered(op: int) -> None:
    assert ask(arp_body(op=op)) is None


def test_without_ipv4_parameters_every_address_is_answered() -> None:
    reply = ask(arp_body(spa=ip4("198.51.100.9"), tpa=GUEST), net=Network())
    assert open_reply(reply)[2] == GUEST


@pytest.mark.parametrize("body, reason", [
    (b"", "arp_short"),
    (arp_body()[:27], "arp_short"),
    (arp_body(htype=6), "arp_format"),                 # IEEE 802
    (arp_body(ptype=0x86DD), "arp_format"),
    (arp_body(hlen=8), "arp_format"),
    (arp_body(plen=16), "arp_format"),
    (arp_body(op=2, htype=0), "arp_format"),           # format is checked before op
])
def test_malformed_dropped(body: bytes, reason: str) -> None:
    with pytest.raises(packet.Drop) as info:
        ask(body)
    assert info.value.reason == reason


macs = st.binary(min_size=6, max_size=6)
addresses = st.binary(min_size=4, max_size=4)


@given(macs, addresses, addresses, macs)
def test_reply_mirrors_any_request(sha: bytes, spa: bytes, tpa: bytes, tha: bytes) -> None:
    reply = ask(arp_body(sha=sha, spa=spa, tpa=tpa, tha=tha))
    if spa == ZERO4 or tpa == spa or tpa == GUEST:
        assert reply is None
    else:
        assert open_reply(reply) == (2, DEFAULT_OUR_MAC, tpa, sha, spa)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_only_drop(body: bytes) -> None:
    try:
        reply = ask(body)
    except packet.Drop:
        assert len(body) < 28 or body[:6] != bytes.fromhex("000108000604")
        return
    if reply is not None:
        op, _sha, spa, tha, tpa = open_reply(reply)
        assert (op, spa, tha, tpa) == (2, body[24:28], body[8:14], body[14:18])
