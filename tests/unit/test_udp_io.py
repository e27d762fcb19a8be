"""UdpHandler on real loopback sockets, without root: the guest's datagrams
in as frames, the peers' answers out as frames, flows opened, kept to their
peer and expired with time driven through the loop's ``now``."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from glue import (
    GUEST_MAC,
    NET,
    Rig,
    family,
    gateway,
    guest_addr,
    inbound,
    loopback,
    readable,
)

from passt_sep import packet, udp
from passt_sep.packet import Drop
from passt_sep.worker.udp_io import SWEEP_INTERVAL, UdpHandler, UdpListener


@pytest.fixture(params=[False, True], ids=["ipv4", "ipv6"])
def v6(request: pytest.FixtureRequest) -> bool:
    return request.param


class Sockets:
    """UDP sockets of a test, closed after it."""

    def __init__(self) -> None:
        self.opened: list[socket.socket] = []

    def bound(self, v6: bool, address: str | None = None, port: int = 0) -> socket.socket:
        sock = socket.socket(family(v6), socket.SOCK_DGRAM)
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((loopback(v6) if address is None else address, port))
        sock.settimeout(2)
        self.opened.append(sock)
        return sock

    def free_port(self, v6: bool) -> int:
        """A port nothing holds on the wildcard address, for the guest's side."""
        sock = self.bound(v6, "::" if v6 else "0.0.0.0")
        port = sock.getsockname()[1]
        sock.close()
        return port


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    made = Sockets()
    yield made
    for sock in made.opened:
        sock.close()


def from_guest(handler: UdpHandler, v6: bool, sport: int, dport: int, payload: bytes,
               now: float | None = None) -> None:
    """A datagram of the guest to the gateway (the host's loopback)."""
    frame = packet.udp_frame(NET.our_mac, GUEST_MAC, guest_addr(v6), gateway(v6), sport, dport,
                             payload)
    handler.on_guest_segment(inbound(frame), time.monotonic() if now is None else now)


def to_guest(frame: bytes) -> udp.GuestDatagram:
    """One of our frames: for the guest's MAC, checksums right."""
    inb = inbound(frame)
    assert (inb.eth.dst, inb.eth.src) == (GUEST_MAC, NET.our_mac)
    return udp.parse_guest_datagram(inb, verify=True)


def delivered(rig: Rig, sock: socket.socket) -> tuple[bytes, tuple]:
    """The next datagram on a host socket, once the loop sent it (the
    handler sends what the guest queued at the end of a loop round)."""
    rig.run_until(lambda: readable(sock), "a datagram on the host")
    return sock.recvfrom(65536)


def answers(rig: Rig, count: int = 1) -> list[udp.GuestDatagram]:
    rig.run_until(lambda: len(rig.frames) >= count, "frames for the guest")
    return [to_guest(frame) for frame in rig.frames.take()]


def test_a_guest_datagram_opens_a_flow_and_the_peers_answer_comes_back(
        rig: Rig, sockets: Sockets, v6: bool) -> None:
    handler = rig.udp()
    peer = sockets.bound(v6)
    peer_port = peer.getsockname()[1]
    guest_port = sockets.free_port(v6)
    from_guest(handler, v6, guest_port, peer_port, b"question")
    data, address = delivered(rig, peer)
    assert data == b"question"
    assert address[1] == guest_port                # the guest's own port: no NAT
    assert handler.active_flows() == 1

    peer.sendto(b"answer", address)
    [answer] = answers(rig)
    assert (answer.src, answer.sport, answer.dst, answer.dport) == (
        gateway(v6), peer_port, guest_addr(v6), guest_port)
    assert bytes(answer.payload) == b"answer"

    from_guest(handler, v6, guest_port, peer_port, b"again")      # the same flow
    assert delivered(rig, peer) == (b"again", address)
    assert handler.active_flows() == 1


def test_a_strangers_datagram_to_a_flow_socket_is_not_passed_on(rig: Rig, sockets: Sockets,
                                                                v6: bool) -> None:
    """A flow's socket is connected to its peer: anyone else's datagram to
    its port never reaches the guest."""
    handler = rig.udp()
    peer, stranger = sockets.bound(v6), sockets.bound(v6)
    from_guest(handler, v6, sockets.free_port(v6), peer.getsockname()[1], b"hello")
    _, flow_address = delivered(rig, peer)
    stranger.sendto(b"spoofed", flow_address)
    peer.sendto(b"genuine", flow_address)
    rig.run_until(lambda: len(rig.frames), "the peer's datagram")
    rig.settle()
    assert [bytes(d.payload) for d in answers(rig)] == [b"genuine"]


def test_the_guests_port_taken_on_the_host_a_flow_takes_another(rig: Rig, sockets: Sockets,
                                                                v6: bool) -> None:
    handler = rig.udp()
    holder = sockets.bound(v6, "::" if v6 else "0.0.0.0")
    guest_port = holder.getsockname()[1]
    peer = sockets.bound(v6)
    from_guest(handler, v6, guest_port, peer.getsockname()[1], b"hi")
    data, address = delivered(rig, peer)
    assert data == b"hi" and address[1] != guest_port
    assert not readable(holder)                            # the host's socket got nothing
    peer.sendto(b"ho", address)
    [answer] = answers(rig)
    assert (answer.dport, bytes(answer.payload)) == (guest_port, b"ho")


def test_datagrams_queued_in_one_round_arrive_one_by_one_in_order(rig: Rig, sockets: Sockets,
                                                                  v6: bool) -> None:
    handler = rig.udp()
    peer = sockets.bound(v6)
    guest_port = sockets.free_port(v6)
    sent = [bytes([i]) * 1000 for i in range(5)] + [b"short tail"]
    for payload in sent:
        from_guest(handler, v6, guest_port, peer.getsockname()[1], payload)
    received = [delivered(rig, peer)[0] for _ in sent]
    assert received == sent


def test_a_sweep_expires_the_flows_idle_beyond_their_timeout(rig: Rig, sockets: Sockets,
                                                             v6: bool) -> None:
    """Time through ``now``: the guest's last datagram on one flow was 35 s
    before the sweep, on the other 25 s: with a 30 s timeout the sweep closes
    the first alone.  (The sweep runs at its own deadline, ``SWEEP_INTERVAL``
    after the first flow opened.)"""
    timeout = 30.0
    handler = rig.udp(timeout=timeout)
    old_peer, young_peer = sockets.bound(v6), sockets.bound(v6)
    old_port, young_port = sockets.free_port(v6), sockets.free_port(v6)
    t0 = time.monotonic()
    from_guest(handler, v6, old_port, old_peer.getsockname()[1], b"old", t0 + SWEEP_INTERVAL - 35)
    from_guest(handler, v6, young_port, young_peer.getsockname()[1], b"young",
               t0 + SWEEP_INTERVAL - 25)
    _, old_address = delivered(rig, old_peer)
    _, young_address = delivered(rig, young_peer)
    assert handler.active_flows() == 2

    assert handler.sweep_timer is not None
    sweep = handler.sweep_timer.deadline
    assert sweep - t0 == pytest.approx(SWEEP_INTERVAL, abs=1)
    rig.loop.run_due_timers(sweep)
    assert handler.active_flows() == 1

    old_peer.sendto(b"too late", old_address)                  # its socket is closed
    young_peer.sendto(b"still here", young_address)
    [answer] = answers(rig)
    rig.settle()
    assert (answer.dport, bytes(answer.payload)) == (young_port, b"still here")
    assert rig.frames.take() == []

    # a new flow, on the guest's port again: the old socket is closed, not just unwatched
    from_guest(handler, v6, old_port, old_peer.getsockname()[1], b"again")
    assert delivered(rig, old_peer) == (b"again", old_address)
    assert handler.active_flows() == 2


def test_the_flow_cap_drops_a_datagram_to_a_new_peer(rig: Rig, sockets: Sockets,
                                                     v6: bool) -> None:
    handler = rig.udp(max_flows=1)
    first, second = sockets.bound(v6), sockets.bound(v6)
    guest_port = sockets.free_port(v6)
    from_guest(handler, v6, guest_port, first.getsockname()[1], b"in")
    with pytest.raises(Drop, match="udp_flows_full"):
        from_guest(handler, v6, guest_port, second.getsockname()[1], b"out")
    assert delivered(rig, first)[0] == b"in"
    rig.settle()
    assert not readable(second) and handler.active_flows() == 1


def test_a_closed_port_answers_with_an_unreachable_for_the_guest(rig: Rig, sockets: Sockets,
                                                                 v6: bool) -> None:
    """The kernel's ICMP error on the flow's socket (IP_RECVERR) goes back to
    the guest as an ICMP destination unreachable, quoting its datagram."""
    handler = rig.udp()
    guest_port, closed_port = sockets.free_port(v6), sockets.free_port(v6)
    from_guest(handler, v6, guest_port, closed_port, b"anyone?")
    rig.run_until(lambda: len(rig.frames), "the unreachable")
    [frame] = rig.frames.take()
    inb = inbound(frame)
    assert (inb.eth.dst, inb.src, inb.dst) == (GUEST_MAC, gateway(v6), guest_addr(v6))
    assert (inb.l4[0], inb.l4[1]) == ((1, 4) if v6 else (3, 3))
    quoted = packet.parse_ipv6(inb.l4[8:]) if v6 else packet.parse_ipv4(inb.l4[8:])
    assert (quoted.src, quoted.dst) == (guest_addr(v6), gateway(v6))
    assert struct.unpack("!HH", bytes(quoted.payload[:4])) == (guest_port, closed_port)
    assert rig.loop.counters.get("udp_icmp_error") == 1


def test_a_forwarded_port_passes_datagrams_both_ways(rig: Rig, sockets: Sockets,
                                                     v6: bool) -> None:
    """``-u``: a client's datagram to the listener reaches the guest's
    target port; the guest's answer leaves from the listener's port."""
    listener = sockets.bound(v6)
    port = listener.getsockname()[1]
    sockets.opened.remove(listener)
    handler = rig.udp(listeners=[UdpListener(listener.detach(), family(v6), port, 5353)])
    client = sockets.bound(v6)
    client_port = client.getsockname()[1]
    client.sendto(b"query", (loopback(v6), port))
    [query] = answers(rig)
    assert (query.src, query.sport, query.dst, query.dport) == (
        gateway(v6), client_port, guest_addr(v6), 5353)
    from_guest(handler, v6, 5353, client_port, b"reply")
    data, address = delivered(rig, client)
    assert (data, address[1]) == (b"reply", port)
    assert handler.active_flows() == 0                     # no flow of its own


def test_a_dual_stack_forwarded_port_keeps_each_family(rig: Rig, sockets: Sockets,
                                                       v6: bool) -> None:
    """One socket for both families (``-u`` where both are on): a client of
    either family reaches the guest over its own family, an IPv4 one never
    as ::ffff:127.0.0.1, and the guest's answer goes back to it through
    that socket."""
    listener = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    port = listener.getsockname()[1]
    handler = rig.udp(listeners=[UdpListener(listener.detach(), socket.AF_INET6, port, 5353,
                                             dual=True)])
    client = sockets.bound(v6)
    client_port = client.getsockname()[1]
    client.sendto(b"query", (loopback(v6), port))
    [query] = answers(rig)
    assert (query.src, query.sport, query.dst, query.dport) == (
        gateway(v6), client_port, guest_addr(v6), 5353)
    from_guest(handler, v6, 5353, client_port, b"reply")
    data, address = delivered(rig, client)
    assert (data, address[0], address[1]) == (b"reply", loopback(v6), port)
