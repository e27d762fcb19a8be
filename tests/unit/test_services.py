"""GuestServices without root: each kind of guest frame reaches its answer
or its handler (real TcpHandler and UdpHandler on loopback sockets), and
what it cannot take is counted, never raised."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from checksums import reference_checksum
from glue import (
    GATEWAY4,
    GUEST4,
    GUEST6,
    GUEST_MAC,
    LINUX_SYN_OPTIONS,
    NET,
    Rig,
    Server,
    TcpGuest,
    inbound,
    readable,
)

from passt_sep import packet, tcp_wire
from passt_sep.netparams import link_local_from_mac
from passt_sep.packet import IPPROTO_ICMP, IPPROTO_ICMPV6
from passt_sep.tcp import ACK, SYN
from passt_sep.worker.services import GuestServices

BROADCAST = b"\xff" * 6
GUEST_LL = link_local_from_mac(GUEST_MAC)
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")
ALL_ROUTERS_MAC = bytes.fromhex("333300000002")


@pytest.fixture
def server() -> Iterator[Server]:
    listening = Server()
    yield listening
    listening.close()


def services(rig: Rig, tcp_on: bool = True, udp_on: bool = True, echo_on: bool = False,
             **config: bool) -> GuestServices:
    return GuestServices(rig.context(mac=None, **config), rig.echo() if echo_on else None,
                         tcp=rig.tcp() if tcp_on else None, udp=rig.udp() if udp_on else None)


def give(service: GuestServices, frame: bytes) -> None:
    service.on_frame(memoryview(frame), time.monotonic())


def arp_request(target: bytes, src_mac: bytes = GUEST_MAC) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, GUEST_MAC, GUEST4, bytes(6), target)
    return BROADCAST + src_mac + b"\x08\x06" + body


def dhcp_discover() -> bytes:
    fixed = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x3903F326, 0, 0x8000,
                        bytes(4), bytes(4), bytes(4), bytes(4), GUEST_MAC + bytes(10),
                        bytes(64), bytes(128))
    options = bytes([99, 130, 83, 99]) + b"\x35\x01\x01" + b"\xff"
    return packet.udp_frame(BROADCAST, GUEST_MAC, bytes(4), b"\xff" * 4, 68, 67, fixed + options)


def icmpv6_frame(src: bytes, dst: bytes, dst_mac: bytes, message: bytes,
                 hop_limit: int = 255) -> bytes:
    body = bytearray(message)
    pseudo = src + dst + struct.pack("!I", len(body)) + b"\0\0\0\x3a"
    struct.pack_into("!H", body, 2, reference_checksum(pseudo + bytes(body)))
    header = struct.pack("!IHBB16s16s", 0x60000000, len(body), 58, hop_limit, src, dst)
    return dst_mac + GUEST_MAC + b"\x86\xdd" + header + bytes(body)


def router_solicitation() -> bytes:
    return icmpv6_frame(GUEST_LL, ALL_ROUTERS, ALL_ROUTERS_MAC,
                        struct.pack("!BBHI", 133, 0, 0, 0) + b"\x01\x01" + GUEST_MAC)


def test_arp_is_answered_and_the_guests_mac_learned(rig: Rig) -> None:
    service = services(rig)
    assert service.guest_mac() == BROADCAST                   # not known yet (passt mode)
    give(service, arp_request(GATEWAY4))
    [reply] = rig.frames.take()
    assert reply[:14] == GUEST_MAC + NET.our_mac + b"\x08\x06"
    op, sha, spa = struct.unpack_from("!H6s4s", reply, 14 + 6)
    assert (op, sha, spa) == (2, NET.our_mac, GATEWAY4)
    assert service.guest_mac() == GUEST_MAC


def test_a_multicast_source_is_not_learned_as_the_guests_mac(rig: Rig) -> None:
    service = services(rig)
    give(service, arp_request(GATEWAY4, src_mac=bytes.fromhex("030000000001")))
    assert service.guest_mac() == BROADCAST


def test_dhcp_discover_gets_an_offer_of_the_guests_address(rig: Rig) -> None:
    service = services(rig)
    give(service, dhcp_discover())
    [offer] = rig.frames.take()
    inb = inbound(offer)
    udp = packet.parse_udp(inb.l4)
    assert (inb.src, udp.sport, udp.dport) == (GATEWAY4, 67, 68)
    payload = bytes(udp.payload)
    assert payload[0] == 2 and payload[16:20] == GUEST4              # BOOTREPLY, yiaddr
    assert b"\x35\x01\x02" in payload[240:]                          # DHCPOFFER


def test_a_router_solicitation_gets_an_advertisement_and_announce_sends_one(rig: Rig) -> None:
    service = services(rig)
    give(service, router_solicitation())
    service.announce()
    solicited, announced = rig.frames.take()
    for frame in (solicited, announced):
        inb = inbound(frame)
        assert inb.proto == IPPROTO_ICMPV6 and inb.l4[0] == 134
        assert inb.src == NET.our_link_local


def test_no_ra_no_announcement(rig: Rig) -> None:
    service = services(rig, no_ra=True)
    service.announce()
    assert rig.frames.take() == []


def test_a_tcp_syn_reaches_the_tcp_handler(rig: Rig, server: Server) -> None:
    service = services(rig)
    guest = TcpGuest(rig, service.tcp, peer_port=server.port)   # type: ignore[arg-type]
    frame = tcp_wire.build_tcp_frame(NET.our_mac, GUEST_MAC, GUEST4, GATEWAY4, guest.port,
                                server.port, guest.ISN, 0, SYN, 64240, b"", LINUX_SYN_OPTIONS)
    give(service, bytes(frame))
    [synack] = guest.wait("SYN-ACK")
    assert synack.flags == SYN | ACK and synack.ack == guest.ISN + 1
    assert server.waiting()


def test_a_udp_datagram_reaches_the_udp_handler(rig: Rig) -> None:
    service = services(rig)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind(("127.0.0.1", 0))
        give(service, packet.udp_frame(NET.our_mac, GUEST_MAC, GUEST4, GATEWAY4, 40000,
                                       peer.getsockname()[1], b"datagram"))
        rig.run_until(lambda: readable(peer), "the datagram")
        assert peer.recv(100) == b"datagram"
    finally:
        peer.close()


def echo_request_frame(v6: bool) -> bytes:
    src, dst = (GUEST6, NET.ipv6.gateway) if v6 else (GUEST4, GATEWAY4)
    message = bytearray(struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 1, 1) + b"ping")
    prefix = src + dst + struct.pack("!I", len(message)) + b"\0\0\0\x3a" if v6 else b""
    struct.pack_into("!H", message, 2, reference_checksum(prefix + bytes(message)))
    return packet.ip_frame(NET.our_mac, GUEST_MAC, src, dst,
                           IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP, bytes(message))


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_an_echo_request_reaches_the_echo_handler(rig: Rig, v6: bool) -> None:
    service = services(rig, echo_on=True)
    assert service.echo is not None
    give(service, echo_request_frame(v6))
    opened = len(service.echo.flows) + rig.loop.counters.get("icmp_socket_error")
    assert opened == 1                       # a ping flow, or the refused socket counted


@pytest.mark.parametrize("frame, counter", [
    (b"\x00" * 10, "drop_eth_short"),
    (GUEST_MAC + GUEST_MAC + b"\x88\xcc" + bytes(40), "drop_ethertype"),
    (packet.ip_frame(NET.our_mac, GUEST_MAC, GUEST4, GATEWAY4, 47, bytes(8)), "drop_ip_proto"),
    (echo_request_frame(False), "drop_icmp_disabled"),
    (packet.ip_frame(NET.our_mac, GUEST_MAC, GUEST4, GATEWAY4, 6, bytes(10)), "drop_tcp_short"),
], ids=["short", "ethertype", "protocol", "echo-off", "tcp-short"])
def test_what_cannot_be_taken_is_counted(rig: Rig, frame: bytes, counter: str) -> None:
    service = services(rig)
    give(service, frame)
    assert rig.loop.counters.values == {counter: 1}
    assert rig.frames.take() == []


def test_disabled_transports_are_counted(rig: Rig) -> None:
    service = services(rig, tcp_on=False, udp_on=False)
    give(service, bytes(tcp_wire.build_tcp_frame(NET.our_mac, GUEST_MAC, GUEST4, GATEWAY4,
                                                 1, 2, 0, 0, SYN, 100)))
    give(service, packet.udp_frame(NET.our_mac, GUEST_MAC, GUEST4, GATEWAY4, 1, 2, b"x"))
    assert rig.loop.counters.values == {"drop_tcp_disabled": 1, "drop_udp_disabled": 1}


def test_a_udp_datagram_over_the_flow_cap_is_counted(rig: Rig) -> None:
    service = GuestServices(rig.context(), None,
                            udp=rig.udp(max_flows=0))
    give(service, packet.udp_frame(NET.our_mac, GUEST_MAC, GUEST4, GATEWAY4, 1, 9, b"x"))
    assert rig.loop.counters.values == {"drop_udp_flows_full": 1}


def test_an_icmpv6_message_neither_ndp_nor_echo_is_counted(rig: Rig) -> None:
    service = services(rig, echo_on=True)
    give(service, icmpv6_frame(GUEST6, NET.ipv6.gateway, NET.our_mac,
                               struct.pack("!BBHI", 1, 4, 0, 0)))        # unreachable
    assert rig.loop.counters.values == {"drop_icmp_type": 1}
