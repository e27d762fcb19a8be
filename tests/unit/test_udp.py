"""UDP translation decisions on bytes: datagrams, errors, flows."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from passt_sep import packet, udp
from passt_sep.clat import Nat64Prefix
from passt_sep.flow import FlowKey, FlowTable
from passt_sep.fwd import AddressMap
from passt_sep.netparams import IPv4Params, IPv6Params, Network

GUEST_MAC = bytes.fromhex("020000000001")
NET = Network(ipv4=IPv4Params(bytes([198, 51, 100, 2]), 24, bytes([198, 51, 100, 1])),
              ipv6=IPv6Params(ipaddress.ip_address("2001:db8:1::2").packed, 64,
                              ipaddress.ip_address("2001:db8:1::1").packed))
GUEST4, PEER4 = bytes([198, 51, 100, 2]), bytes([203, 0, 113, 1])
GUEST6, PEER6 = NET.ipv6.addr, ipaddress.ip_address("2001:db8:2::1").packed
NO_MAPPING = AddressMap.build(gateway4=None, gateway6=None, no_map_gw=True,
                              map_host_loopback=None, map_guest_addr=None,
                              host_addr4=None, host_addr6=None)


def inbound(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> packet.Inbound:
    frame = packet.udp_frame(NET.our_mac, GUEST_MAC, src, dst, sport, dport, payload)
    return packet.parse_ip_frame(packet.parse_ethernet(frame))


@pytest.mark.parametrize("src, dst", [(GUEST4, PEER4), (GUEST6, PEER6)])
def test_guest_datagram_parsed_and_verified(src: bytes, dst: bytes) -> None:
    datagram = udp.parse_guest_datagram(inbound(src, dst, 5353, 53, b"query"), verify=True)
    assert (datagram.src, datagram.sport, datagram.dst, datagram.dport) == (src, 5353, dst, 53)
    assert bytes(datagram.payload) == b"query"
    assert datagram.v6 == (len(src) == 16)


def test_bad_checksum_dropped_when_verifying() -> None:
    frame = bytearray(packet.udp_frame(NET.our_mac, GUEST_MAC, GUEST4, PEER4, 1, 2, b"abc"))
    frame[-1] ^= 0xFF
    inb = packet.parse_ip_frame(packet.parse_ethernet(bytes(frame)))
    with pytest.raises(packet.Drop, match="udp_checksum"):
        udp.parse_guest_datagram(inb, verify=True)
    assert bytes(udp.parse_guest_datagram(inb).payload) == b"ab\x9c"


def test_port_zero_dropped() -> None:
    with pytest.raises(packet.Drop, match="udp_port_zero"):
        udp.parse_guest_datagram(inbound(GUEST4, PEER4, 1000, 0, b""))


def test_datagram_frame_to_guest() -> None:
    frame = udp.datagram_frame(NET, GUEST_MAC, PEER4, 53, GUEST4, 5353, b"answer")
    eth = packet.parse_ethernet(frame)
    assert (eth.dst, eth.src) == (GUEST_MAC, NET.our_mac)
    inb = packet.parse_ip_frame(eth)
    parsed = udp.parse_guest_datagram(inb, verify=True)
    assert (parsed.src, parsed.sport, parsed.dst, parsed.dport) == (PEER4, 53, GUEST4, 5353)


@pytest.mark.parametrize("guest, peer, proto, kind", [
    (GUEST4, PEER4, packet.IPPROTO_ICMP, (3, 3)), (GUEST6, PEER6, packet.IPPROTO_ICMPV6, (1, 4))])
def test_unreachable_quotes_the_guest_datagram(guest, peer, proto, kind) -> None:
    frame = udp.unreachable_frame(NET, GUEST_MAC, guest, 40000, peer, 9, b"ping", *kind)
    inb = packet.parse_ip_frame(packet.parse_ethernet(frame))
    assert (inb.src, inb.dst, inb.proto) == (peer, guest, proto)
    icmp_type, code = inb.l4[0], inb.l4[1]
    assert (icmp_type, code) == kind
    if proto == packet.IPPROTO_ICMP:
        assert packet.checksum(inb.l4) in (0, 0xFFFF)
        quoted = packet.parse_ipv4(inb.l4[8:])
    else:
        pseudo = packet.pseudo_header_sum(peer, guest, proto, len(inb.l4))
        assert packet.checksum(inb.l4, pseudo) in (0, 0xFFFF)
        quoted = packet.parse_ipv6(inb.l4[8:])
    assert (quoted.src, quoted.dst) == (guest, peer)
    assert struct.unpack("!HH", bytes(quoted.payload[:4])) == (40000, 9)


def test_header_parsed_by_the_caller_is_reused() -> None:
    inb = inbound(GUEST4, PEER4, 5353, 53, b"query")
    header = packet.parse_udp(inb.l4)
    datagram = udp.parse_guest_datagram(inb, verify=True, header=header)
    assert (datagram.sport, datagram.dport, datagram.payload) == (5353, 53, header.payload)


def test_extended_error_parsing() -> None:
    raw = struct.pack("=IBBBxII", 111, 2, 3, 3, 0, 0) + bytes(16)
    assert udp.parse_extended_error(raw) == (111, 2, 3, 3)
    assert udp.parse_extended_error(b"short") is None


def flow(v6: bool, guest_port: int, peer: bytes, peer_port: int, handle: int,
         host_peer: bytes | None = None, host_port: int | None = None) -> udp.UdpFlow:
    guest = GUEST6 if v6 else GUEST4
    made = udp.UdpFlow(v6, guest, guest_port, handle, 0, peer, peer_port, host_peer or peer)
    made.host_port = guest_port if host_port is None else host_port
    return made


def test_a_flow_is_the_five_tuple() -> None:
    """One guest port talking to two peers (or two ports of one peer) is
    several flows, each its own socket; the other family is another."""
    flows = udp.UdpFlows(FlowTable(10))
    a = flow(False, 1000, PEER4, 53, handle=10)
    b = flow(False, 1000, PEER4, 54, handle=11)
    c = flow(False, 1000, bytes([203, 0, 113, 7]), 53, handle=12)
    d = flow(True, 1000, PEER6, 53, handle=13)
    assert all(flows.add(f) for f in (a, b, c, d)) and len(flows) == 4
    assert flows.lookup(GUEST4, 1000, PEER4, 53, now=1) is a
    assert flows.lookup(GUEST4, 1000, PEER4, 54, now=1) is b
    assert flows.lookup(GUEST4, 1000, bytes([203, 0, 113, 7]), 53, now=1) is c
    assert flows.lookup(GUEST6, 1000, PEER6, 53, now=1) is d
    assert flows.lookup(GUEST4, 1000, bytes([203, 0, 113, 8]), 53, now=1) is None
    assert flows.lookup(GUEST4, 1001, PEER4, 53, now=1) is None
    assert flows.by_handle[12] is c


def test_new_flow_connects_to_the_mapped_peer_and_replies_keep_the_guests_view() -> None:
    gateway = bytes([198, 51, 100, 1])
    addrmap = AddressMap.build(gateway4=gateway, gateway6=None, no_map_gw=False,
                               map_host_loopback=None, map_guest_addr=None,
                               host_addr4=None, host_addr6=None)
    datagram = udp.parse_guest_datagram(inbound(GUEST4, gateway, 5353, 53, b"q"))
    made = udp.open_flow(datagram, addrmap, handle=7, now=3.0)
    assert made.host_peer == addrmap.to_host(gateway, 53) != gateway
    assert (made.peer, made.peer_port, made.guest_port) == (gateway, 53, 5353)
    assert made.key == FlowKey(packet.IPPROTO_UDP, GUEST4, 5353, gateway, 53)
    assert made.last_used == 3.0


def test_flows_cap_and_expiry_leave_forwarded_ports_alone() -> None:
    flows = udp.UdpFlows(FlowTable(2), timeout=10)
    a = flow(False, 1000, PEER4, 7, handle=10)
    b = flow(True, 1000, PEER6, 7, handle=11)
    c = flow(False, 1001, PEER4, 7, handle=12)
    forward = udp.UdpForward(False, GUEST4, 53, handle=13)
    assert flows.add(a) and flows.add(b)
    assert flows.full() and not flows.add(c)
    flows.add_forward(forward)          # forwarded ports are not counted against the cap
    assert len(flows) == 2
    assert flows.lookup(GUEST4, 1000, PEER4, 7, now=8) is a
    assert flows.expired(now=12) == [b]
    assert flows.expired(now=100) == [a]
    assert not flows.full() and flows.add(c)
    assert flows.lookup(GUEST4, 53, PEER4, 9999, now=100) is forward
    assert 11 not in flows.by_handle and flows.by_handle[13] is forward


def test_the_guests_answers_from_a_forwarded_port_use_its_socket() -> None:
    """A guest port that is a ``-u`` target answers through the listening
    socket, to any peer; its own connected flow, if one exists, first."""
    flows = udp.UdpFlows(FlowTable(4))
    forward = udp.UdpForward(False, GUEST4, 7200, handle=3)
    flows.add_forward(forward)
    assert flows.lookup(GUEST4, 7200, PEER4, 40000, now=1) is forward
    assert flows.lookup(GUEST6, 7200, PEER6, 40000, now=1) is None
    own = flow(False, 7200, PEER4, 9, handle=4)
    flows.add(own)
    assert flows.lookup(GUEST4, 7200, PEER4, 9, now=1) is own
    flows.remove(forward)
    assert flows.lookup(GUEST4, 7200, PEER4, 40000, now=1) is None


def test_bind_plan_keeps_the_guest_port_and_shares_it_among_our_flows_only() -> None:
    flows = udp.UdpFlows(FlowTable(8))
    first = flow(False, 1000, PEER4, 53, handle=1, host_port=0)
    # nobody of ours holds it: alone (a host socket holding it is never joined)
    assert flows.bind_plan(first) == ((1000, False), (0, False))
    first.host_port = 1000
    flows.add(first)
    other_peer = flow(False, 1000, bytes([203, 0, 113, 7]), 53, handle=2, host_port=0)
    assert flows.bind_plan(other_peer) == ((1000, True), (0, False))
    # two guest views of one host peer: never two sockets with one 4-tuple
    same_host_peer = flow(False, 1000, bytes([169, 254, 1, 1]), 53, handle=3,
                          host_peer=PEER4, host_port=0)
    assert flows.bind_plan(same_host_peer) == ((0, False),)
    assert flows.bind_plan(flow(True, 1000, PEER6, 53, handle=4)) == ((1000, False), (0, False))
    # a flow on an ephemeral port holds nothing to share
    ephemeral = flow(False, 2000, PEER4, 53, handle=5, host_port=40000)
    flows.add(ephemeral)
    assert flows.bind_plan(flow(False, 40000, PEER4, 53, handle=6)) == ((40000, False),
                                                                       (0, False))
    flows.remove(first)
    assert flows.bind_plan(other_peer) == ((1000, False), (0, False))
    assert flows.held == {}


def test_remembered_guest_view_is_bounded() -> None:
    forward = udp.UdpForward(False, GUEST4, 1000, handle=1)
    forward.remember((PEER4, 53), bytes([169, 254, 1, 1]))
    assert forward.seen_as((PEER4, 53)) == bytes([169, 254, 1, 1])
    assert forward.host_peer(bytes([169, 254, 1, 1]), 53, NO_MAPPING) == PEER4
    forward.remember((PEER4, 80), PEER4)
    assert forward.seen_as((PEER4, 80)) == PEER4
    assert forward.host_peer(PEER4, 80, NO_MAPPING) == PEER4
    for port in range(1, 200):
        forward.remember((PEER4, 1000 + port), bytes([10, 0, 0, 1]))
    assert len(forward.guest_view) == len(forward.host_view) == udp.UdpForward.MAX_VIEWS


def test_host_peer_maps_once_then_remembers_for_replies() -> None:
    gateway = bytes([198, 51, 100, 1])
    addrmap = AddressMap.build(gateway4=gateway, gateway6=None, no_map_gw=False,
                               map_host_loopback=None, map_guest_addr=None,
                               host_addr4=None, host_addr6=None)
    forward = udp.UdpForward(False, GUEST4, 1000, handle=1)
    host = forward.host_peer(gateway, 53, addrmap)
    assert host == addrmap.to_host(gateway, 53) != gateway
    assert forward.seen_as((host, 53)) == gateway       # replies come from the gateway


# -- --clat: an IPv6 forwarded port and an IPv4 guest ------------------------------------

CLAT_GUEST4, CLAT_GW4 = bytes([192, 0, 0, 2]), bytes([192, 0, 0, 1])
CLAT_MAP = AddressMap.build(gateway4=CLAT_GW4, gateway6=NET.ipv6.gateway, no_map_gw=False,
                            map_host_loopback=None, map_guest_addr=None,
                            host_addr4=CLAT_GUEST4, host_addr6=GUEST6,
                            nat64=Nat64Prefix.parse("64:ff9b::/96"))
BEHIND_NAT64 = ipaddress.ip_address("64:ff9b::203.0.113.9").packed
EMBEDDED = bytes([203, 0, 113, 9])


def test_a_guest_with_ipv6_hears_only_nat64_peers_over_ipv4() -> None:
    """The peer decides, as UDP has no refusal to fall back on: one in the
    NAT64 prefix is an IPv4 host, to the guest's IPv4 address from the
    address it embeds; any other stays IPv6."""
    forward = udp.UdpForward(True, GUEST6, 5353, handle=1, guest_addr4=CLAT_GUEST4)
    assert forward.view_of(BEHIND_NAT64, 4000, CLAT_MAP) == EMBEDDED
    assert forward.guest_for(EMBEDDED) == CLAT_GUEST4
    assert forward.view_of(PEER6, 4000, CLAT_MAP) == PEER6
    assert forward.guest_for(PEER6) == GUEST6


def test_a_guest_without_ipv6_hears_every_ipv6_peer_over_ipv4() -> None:
    forward = udp.UdpForward(True, CLAT_GUEST4, 5353, handle=1, guest_addr4=CLAT_GUEST4)
    assert forward.view_of(BEHIND_NAT64, 4000, CLAT_MAP) == EMBEDDED
    assert forward.view_of(PEER6, 4000, CLAT_MAP) == CLAT_GW4       # from the gateway
    assert forward.guest_for(CLAT_GW4) == CLAT_GUEST4


def test_without_clat_an_ipv6_port_stays_ipv6() -> None:
    forward = udp.UdpForward(True, GUEST6, 5353, handle=1)
    assert forward.view_of(BEHIND_NAT64, 4000, CLAT_MAP) == BEHIND_NAT64
    assert forward.guest_for(BEHIND_NAT64) == GUEST6
    ipv4_port = udp.UdpForward(False, CLAT_GUEST4, 5353, handle=2)
    assert ipv4_port.view_of(PEER4, 4000, CLAT_MAP) == PEER4


def test_the_guests_ipv4_answer_leaves_through_the_ipv6_port_to_its_peer() -> None:
    forward = udp.UdpForward(True, GUEST6, 5353, handle=1, guest_addr4=CLAT_GUEST4)
    forwards = {5353: forward}
    seen = forward.view_of(BEHIND_NAT64, 4000, CLAT_MAP)
    forward.remember((BEHIND_NAT64, 4000), seen)

    def answer(src: bytes, sport: int, dst: bytes, dport: int) -> udp.GuestDatagram:
        return udp.GuestDatagram(src, sport, dst, dport, memoryview(b"x"))

    assert udp.clat_answer(forwards, answer(CLAT_GUEST4, 5353, EMBEDDED, 4000)) is forward
    assert forward.host_peer(EMBEDDED, 4000, CLAT_MAP) == BEHIND_NAT64
    # another peer, port, guest port or family: not an answer to this port's peer
    assert udp.clat_answer(forwards, answer(CLAT_GUEST4, 5353, EMBEDDED, 4001)) is None
    assert udp.clat_answer(forwards, answer(CLAT_GUEST4, 5353, PEER4, 4000)) is None
    assert udp.clat_answer(forwards, answer(CLAT_GUEST4, 5354, EMBEDDED, 4000)) is None
    assert udp.clat_answer(forwards, answer(GUEST6, 5353, BEHIND_NAT64, 4000)) is None


# -- a dual-stack forwarded port: one socket, both families ------------------------------

MAPPED_PEER4 = bytes(10) + b"\xff\xff" + PEER4


def test_a_dual_stack_port_takes_the_guests_answers_of_both_families() -> None:
    flows = udp.UdpFlows(FlowTable(4))
    forward = udp.UdpForward(True, GUEST6, 7300, handle=3, guest_addr4=GUEST4, dual=True)
    flows.add_forward(forward)
    assert flows.lookup(GUEST4, 7300, PEER4, 40000, now=1) is forward
    assert flows.lookup(GUEST6, 7300, PEER6, 40000, now=1) is forward
    flows.remove(forward)
    assert flows.forwards == {} and flows.by_handle == {}


def test_a_dual_stack_ports_ipv4_peer_reaches_the_guest_over_ipv4_and_back() -> None:
    """The socket API's ::ffff:a.b.c.d, once unmapped (``fwd.unmapped``), is
    an IPv4 peer: to the guest's IPv4 address; the guest's answer to it
    leaves the socket to the mapped address again.  IPv6 peers stay IPv6."""
    forward = udp.UdpForward(True, GUEST6, 7300, handle=3, guest_addr4=GUEST4, dual=True)
    seen = forward.view_of(PEER4, 4000, NO_MAPPING)
    assert seen == PEER4 and forward.guest_for(seen) == GUEST4
    forward.remember((PEER4, 4000), seen)
    host = forward.host_peer(PEER4, 4000, NO_MAPPING)
    assert forward.socket_peer(host) == MAPPED_PEER4
    assert forward.view_of(PEER6, 4000, NO_MAPPING) == PEER6
    assert forward.guest_for(PEER6) == GUEST6
    assert forward.socket_peer(PEER6) == PEER6
    assert udp.UdpForward(False, GUEST4, 7300, handle=4).socket_peer(PEER4) == PEER4


def test_a_dual_stack_port_of_a_single_family_guest_drops_the_other_family() -> None:
    only4 = udp.UdpForward(True, GUEST4, 7300, handle=3, guest_addr4=GUEST4, dual=True)
    assert only4.guest_for(PEER4) == GUEST4 and only4.guest_for(PEER6) is None
    only6 = udp.UdpForward(True, GUEST6, 7300, handle=3)       # no IPv4 for the guest
    assert only6.guest_for(PEER6) == GUEST6 and only6.guest_for(PEER4) is None


def test_send_batch_gathers_one_target_and_size() -> None:
    batch = udp.SendBatch(capacity=10)
    assert batch.add("a", b"xyz") and batch.add("a", b"abc") and batch.add("a", b"q")
    assert not batch.add("a", b"r")            # after a shorter one: the batch is closed
    target, data, segment, count = batch.take()
    assert (target, bytes(data), segment, count) == ("a", b"xyzabcq", 3, 3)
    assert [bytes(p) for p in udp.segments(data, segment)] == [b"xyz", b"abc", b"q"]
    assert not batch and batch.add("a", b"xyz")
    assert not batch.add("a", b"")             # an empty datagram would vanish in a batch
    assert not batch.add("b", b"xyz")          # another target
    assert not batch.add("a", b"wxyz")         # bigger than the segment size
    assert batch.add("a", b"123") and batch.add("a", b"456")
    assert not batch.add("a", b"789")          # over capacity
    batch.take()
    assert not batch.add("a", b"")             # empty datagrams go alone
    assert not batch.add("a", bytes(11))       # and those bigger than the batch


def test_send_batch_segment_count_is_capped() -> None:
    batch = udp.SendBatch()
    for _ in range(udp.GSO_MAX_SEGMENTS):
        assert batch.add("a", b"x")
    assert not batch.add("a", b"x")
    assert batch.take()[3] == udp.GSO_MAX_SEGMENTS


@pytest.mark.parametrize("src, dst", [(PEER4, GUEST4), (PEER6, GUEST6)])
def test_datagram_headers_leave_a_checksum_the_kernel_completes(src: bytes, dst: bytes) -> None:
    payload = bytes(range(200)) * 7 + b"odd"
    headers = udp.datagram_headers(NET, GUEST_MAC, src, 53, dst, 5353, len(payload))
    frame = bytearray(headers + payload)
    l4 = len(headers) - packet.UDP_HLEN
    # what the kernel does for VIRTIO_NET_HDR_F_NEEDS_CSUM (csum_start l4, offset 6)
    struct.pack_into("!H", frame, l4 + 6, packet.checksum(frame[l4:]) or 0xFFFF)
    inb = packet.parse_ip_frame(packet.parse_ethernet(bytes(frame)))
    datagram = udp.parse_guest_datagram(inb, verify=True)
    assert (datagram.src, datagram.sport, datagram.dst, datagram.dport) == (src, 53, dst, 5353)
    assert bytes(datagram.payload) == payload


def test_datagram_headers_refuse_what_no_datagram_holds() -> None:
    with pytest.raises(packet.Drop, match="udp_too_big"):
        udp.datagram_headers(NET, GUEST_MAC, PEER4, 53, GUEST4, 5353, udp.MAX_PAYLOAD + 1)
