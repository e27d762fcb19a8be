"""TcpHandler on real loopback sockets, without root: the guest's segments
in as bytes, its frames checked, the host's side seen through its sockets
(what the server reads, the handler socket's queues by SIOCINQ)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from glue import (
    GUEST_WSCALE,
    LINUX_SYN_OPTIONS,
    Rig,
    Server,
    TcpGuest,
    family,
    gateway,
    loopback,
    pattern,
    queued,
    readable,
)

from passt_sep import tcp
from passt_sep.tcp import ACK, FIN, PSH, RST, SYN
from passt_sep.worker.loop import EPOLLOUT
from passt_sep.worker.tcp_io import SO_PEEK_OFF, TcpListener

KIB = 1024
MSS = 1460                     # the guest's, from LINUX_SYN_OPTIONS
WINDOW_16K = 16 * KIB >> GUEST_WSCALE
BIG_WINDOW = 0xFFFF


@pytest.fixture(params=[False, True], ids=["ipv4", "ipv6"])
def v6(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture
def server(v6: bool) -> Iterator[Server]:
    listening = Server(v6)
    yield listening
    listening.close()


def connect(rig: Rig, handler, server: Server, v6: bool = False, port: int = 40000,
            window: int = BIG_WINDOW) -> tuple[TcpGuest, socket.socket]:
    """Guest SYN → the handler connects → SYN-ACK → guest ACK: the guest's
    end and the server's accepted socket."""
    guest = TcpGuest(rig, handler, v6, port=port, peer_port=server.port, window=window)
    guest.connect()
    [synack] = guest.wait("SYN-ACK")
    assert synack.flags == SYN | ACK and synack.ack == guest.ISN + 1
    assert synack.wscale == tcp.OUR_WSCALE
    guest.send(ACK)
    return guest, server.accept()


# -- opening and data both ways --------------------------------------------------------
def test_a_connection_carries_data_both_ways_within_the_guest_window(rig: Rig, server: Server,
                                                                     v6: bool) -> None:
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6, window=WINDOW_16K)
    assert peer.getpeername()[0] == loopback(v6)          # the gateway meant loopback

    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    guest.send(ACK | PSH, request)
    assert guest.take() == []                # written at once, its ACK owed...
    assert peer.recv(100) == request         # byte-exact
    [ack] = guest.wait("the owed ACK")       # ...and sent when no answer carried it
    assert ack.flags == ACK and ack.ack == guest.seq

    answer = pattern(100 * KIB)
    peer.sendall(answer)
    host = guest.host_socket()
    segments = guest.wait_data(16 * KIB)
    rig.run_until(lambda: queued(host) == len(answer), "the answer in the handler's queue")
    rig.settle()
    segments += guest.take()
    # exactly the window, in segments of the guest's MSS, nothing beyond it
    assert len(guest.data) == 16 * KIB and bytes(guest.data) == answer[:16 * KIB]
    assert max(len(s.payload) for s in segments) == MSS
    assert segments[-1].flags & PSH
    assert all(s.window > 0 for s in segments)
    # peeked, not read: all of it still queued
    assert queued(host) == len(answer)

    # a partial ACK: the queue shrinks by exactly that, the window slides by
    # as much; the peek offset (on by the first peek behind bytes in flight,
    # this one at the latest) at the window's end
    guest.ack_through(5000)
    assert queued(host) == len(answer) - 5000
    assert host.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) == 16 * KIB
    segments = guest.take()
    assert sum(len(s.payload) for s in segments) == 5000
    assert guest.offset(segments[0]) == 16 * KIB
    assert bytes(guest.data) == answer[:16 * KIB + 5000]

    # the guest acknowledges all it has, again and again: the rest follows
    while len(guest.data) < len(answer):
        had = len(guest.data)
        guest.send(ACK)
        assert queued(host) == len(answer) - had
        fresh = guest.take()
        assert fresh and sum(len(s.payload) for s in fresh) <= 16 * KIB
    assert bytes(guest.data) == answer
    guest.send(ACK)
    assert queued(host) == 0
    assert handler.active_flows() == 1


def test_a_banner_and_fin_that_come_with_the_connect_follow_the_handshake(
        rig: Rig, server: Server, v6: bool) -> None:
    """A server that speaks first may have spoken and closed before the
    loop sees the connect: one event tells all of it, and its data and FIN
    go to the guest once it acknowledges our SYN-ACK."""
    handler = rig.tcp()
    guest = TcpGuest(rig, handler, v6, peer_port=server.port)
    guest.connect()                                   # the loop has not run yet
    peer = server.accept()
    peer.sendall(b"220 hello\r\n")
    peer.close()
    [synack] = guest.wait("SYN-ACK")
    assert synack.flags == SYN | ACK
    guest.send(ACK)
    guest.wait_data(11)
    rig.run_until(lambda: bool(guest.take()) or guest.fin, "the FIN")
    assert bytes(guest.data) == b"220 hello\r\n" and guest.fin


def test_epollout_stays_asked_for_after_the_connect_until_it_comes_alone(
        rig: Rig, server: Server, v6: bool) -> None:
    """No epoll_ctl to drop EPOLLOUT once connected: data events carry it
    along.  An EPOLLOUT of its own (room back in a socket that was full,
    wanted no longer) drops it, and the socket's data still comes."""
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6)
    flow = handler.flows.get(guest.key())
    assert flow is not None and flow.sock is not None
    assert flow.asks_out and not flow.want_out
    peer.sendall(b"one")
    guest.wait_data(3)                                # EPOLLIN with EPOLLOUT along
    assert flow.asks_out
    guest.send(ACK)
    handler._socket_event(flow, flow.sock.fileno(), EPOLLOUT, time.monotonic())
    assert not flow.asks_out
    peer.sendall(b"two")
    guest.wait_data(6)
    assert bytes(guest.data) == b"onetwo"


def test_the_host_socket_takes_the_guests_mss_no_nagle_and_no_peek_offset_yet(
        rig: Rig, server: Server, v6: bool) -> None:
    """Its SYN offers the guest's MSS (TCP_MAXSEG before the connect); the
    peek offset waits for a peek behind bytes in flight."""
    handler = rig.tcp()
    guest = TcpGuest(rig, handler, v6, peer_port=server.port)
    guest.send(SYN, window=64240, options=bytes.fromhex("020403e8"))    # MSS 1000
    [synack] = guest.wait("SYN-ACK")
    assert synack.flags == SYN | ACK
    host = guest.host_socket()
    # loopback's MSS is 65483 else; timestamps take 12 bytes of each segment
    assert host.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG) in (1000, 1000 - 12)
    assert host.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert host.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) == -1
    server.accept().close()


def test_an_accepted_connection_becomes_a_syn_to_the_guest(rig: Rig, v6: bool) -> None:
    """A forwarded port: a client connects on the host's loopback, the guest
    gets a SYN from the gateway's address (loopback, as it sees it)."""
    listening = socket.socket(family(v6), socket.SOCK_STREAM)
    listening.bind((loopback(v6), 0))
    listening.listen(4)
    port = listening.getsockname()[1]
    handler = rig.tcp(listeners=[TcpListener(listening.detach(), family(v6), port, 8080)])
    client = socket.create_connection((loopback(v6), port), timeout=2)
    try:
        guest = TcpGuest(rig, handler, v6, port=8080, peer_port=client.getsockname()[1])
        [syn] = guest.wait("the SYN of the accepted connection")
        assert syn.flags == SYN and syn.wscale == tcp.OUR_WSCALE
        assert guest.peer == gateway(v6)
        guest.send(SYN | ACK, window=64240, options=LINUX_SYN_OPTIONS)
        [ack] = guest.take()
        assert ack.flags == ACK and ack.ack == guest.seq and ack.seq == syn.seq + 1
        client.sendall(b"hello guest")
        guest.wait_data(11)
        assert bytes(guest.data) == b"hello guest"
        guest.send(ACK | PSH, b"hello client")
        assert client.recv(100) == b"hello client"
    finally:
        client.close()


# -- lost segments -------------------------------------------------------------------------
def test_three_duplicate_acks_resend_from_the_first_unacknowledged_byte(rig: Rig,
                                                                        server: Server,
                                                                        v6: bool) -> None:
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6)
    data = pattern(10 * MSS)
    peer.sendall(data)
    segments = guest.wait_data(len(data))
    assert [len(s.payload) for s in segments] == [MSS] * 10
    host = guest.host_socket()

    # the second segment was lost: one ACK for the first, then three duplicates
    guest.ack_through(MSS)
    assert queued(host) == 9 * MSS and guest.take() == []
    for _ in range(2):
        guest.ack_through(MSS)
        assert guest.take() == []
    guest.ack_through(MSS)
    [again] = guest.take()
    assert guest.offset(again) == MSS and bytes(again.payload) == data[MSS:2 * MSS]
    assert rig.loop.counters.get("tcp_retransmit") == 1
    assert host.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) == MSS   # re-peeked from 0

    # it had the rest: everything is acknowledged, the queue empties, and new
    # data continues at the right offset (the peek offset moved back with the discard)
    guest.ack_through(len(data))
    assert queued(host) == 0
    more = pattern(2 * len(data))[len(data):]
    peer.sendall(more)
    segments = guest.wait_data(len(data) + len(more))
    assert guest.offset(segments[0]) == len(data)
    assert bytes(guest.data) == data + more


def test_a_retransmission_timeout_peeks_the_same_bytes_again(rig: Rig, server: Server,
                                                             v6: bool) -> None:
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6)
    data = pattern(3 * MSS)
    peer.sendall(data)
    first = guest.wait_data(len(data))
    rig.loop.run_due_timers(rig.loop.timers[0][0] + tcp.ACK_TIMEOUT)
    [again] = guest.take()               # recovering: one segment at a time
    assert (again.seq, bytes(again.payload)) == (first[0].seq, bytes(first[0].payload))
    assert rig.loop.counters.get("tcp_retransmit_timeout") == 1
    guest.ack_through(MSS)               # the next hole follows the ACK
    [next_one] = guest.take()
    assert (next_one.seq, bytes(next_one.payload)) == (first[1].seq, bytes(first[1].payload))


def test_one_segment_with_data_and_an_ack_writes_discards_and_sends_on(
        rig: Rig, server: Server, v6: bool) -> None:
    """The order Actions documents: the guest's data goes to the socket, the
    bytes it acknowledges leave the queue, then the window's worth is peeked."""
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6, window=4 * MSS >> GUEST_WSCALE)
    answer = pattern(8 * MSS)
    peer.sendall(answer)
    guest.wait_data(4 * MSS >> GUEST_WSCALE << GUEST_WSCALE)
    host = guest.host_socket()
    rig.run_until(lambda: queued(host) == len(answer), "the answer queued")
    sent = len(guest.data)
    guest.send(ACK | PSH, b"next, please")             # acknowledges all it has
    segments = guest.take()
    assert all(s.payload and s.ack == guest.seq for s in segments)   # the data carries our ACK
    assert peer.recv(100) == b"next, please"
    assert queued(host) == len(answer) - sent
    assert guest.offset(segments[0]) == sent and bytes(guest.data) == answer[:len(guest.data)]
    assert len(guest.data) == 2 * sent


# -- delayed ACK -----------------------------------------------------------------------------
def test_a_request_costs_the_guest_one_frame_its_answer(rig: Rig, server: Server,
                                                       v6: bool) -> None:
    """The request's ACK is owed, the answer carries it, and no bare ACK
    follows once the owed ACKs are swept."""
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6)
    for _ in range(3):
        guest.send(ACK | PSH, b"?")
        assert guest.take() == []                     # no bare ACK at once
        assert peer.recv(10) == b"?"
        peer.sendall(b"!")
        segments = guest.wait_data(1)
        # the sweep may come before the answer on a slow machine, never after
        assert bytes(segments[-1].payload) == b"!" and segments[-1].ack == guest.seq
        time.sleep(tcp.ACK_DELAY * 2)
        rig.settle()
        assert guest.take() == []
        guest.data.clear()


def test_a_lone_short_writes_ack_comes_after_the_delay(rig: Rig, server: Server,
                                                      v6: bool) -> None:
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6)
    start = time.monotonic()
    guest.send(ACK | PSH, b"no answer to this")
    assert guest.take() == []
    [ack] = guest.wait("the owed ACK")
    elapsed = time.monotonic() - start
    assert ack.flags == ACK and ack.ack == guest.seq and ack.window > 0
    # and well before the guest's minimum retransmission timeout (200 ms)
    assert tcp.ACK_DELAY <= elapsed < 0.15
    assert peer.recv(100) == b"no answer to this"
    rig.settle()
    assert guest.take() == []                         # once


def test_a_failing_flow_leaves_the_other_owed_acks_to_the_next_sweep(
        rig: Rig, server: Server, v6: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    handler = rig.tcp()
    first, _ = connect(rig, handler, server, v6, port=40000)
    second, _ = connect(rig, handler, server, v6, port=40001)
    first.send(ACK | PSH, b"a")
    second.send(ACK | PSH, b"b")
    answered = tcp.TcpConn.on_ack_due
    asked: list[tcp.TcpConn] = []

    def first_fails(conn: tcp.TcpConn) -> object:
        asked.append(conn)
        if len(asked) == 1:
            raise RuntimeError("a bug")
        return answered(conn)

    monkeypatch.setattr(tcp.TcpConn, "on_ack_due", first_fails)
    errors: list[Exception] = []
    rig.loop.on_error = errors.append
    [ack] = second.wait("the other flow's owed ACK")
    assert ack.ack == second.seq and len(errors) == 1 and len(asked) == 2


# -- window updates (guest to host) --------------------------------------------------------
def test_a_full_socket_closes_the_window_and_reopens_it_when_drained(rig: Rig) -> None:
    """The server reads nothing: the guest's data fills the handler's socket
    until the window it is offered is zero; once the server reads, a window
    update comes without any segment from the guest."""
    server = Server(rcvbuf=4096)
    try:
        handler = rig.tcp()
        guest, peer = connect(rig, handler, server)
        data = pattern(4 << 20)
        taken, window = 0, 0xFFFF              # the guest sends what it is offered
        while window and taken < len(data):
            guest.send(ACK | PSH, data[taken:taken + min(window, 32 * KIB)])
            [ack] = guest.take()
            guest.seq = ack.ack                # what was not taken would be sent again
            taken = ack.ack - guest.ISN - 1
            window = ack.window << tcp.OUR_WSCALE
        assert window == 0 and taken < len(data), "the socket never filled"

        received = bytearray()

        def drained_and_updated() -> bool:
            while readable(peer):
                chunk = peer.recv(1 << 20)
                assert chunk
                received.extend(chunk)
            return len(rig.frames) > 0
        rig.run_until(drained_and_updated, "a window update")
        [update] = guest.take()
        assert update.flags == ACK and update.ack == guest.seq and update.window > 0
        while len(received) < taken:
            received.extend(peer.recv(1 << 20))
        assert received == data[:taken]
    finally:
        server.close()


def test_small_writes_fill_a_socket_within_every_window_offered(rig: Rig) -> None:
    """Writes shorter than a segment are answered from an estimate of the
    socket's room, not a measurement: every window offered is still at most
    the room the kernel reports, the socket takes every byte sent within
    it, and the window closes once it is full."""
    server = Server(rcvbuf=4096)
    try:
        handler = rig.tcp()
        guest, peer = connect(rig, handler, server)
        host = guest.host_socket()
        window = 0xFFFF
        for _ in range(10000):
            guest.send(ACK | PSH, b"s" * min(500, window))
            [ack] = guest.take() or guest.wait("the owed ACK")
            assert ack.ack == guest.seq, "the socket refused data sent within the window"
            window = ack.window << tcp.OUR_WSCALE
            free, _ = handler._room(host)
            assert window <= free * MSS // (MSS + tcp.SKB_OVERHEAD)
            if not window:
                break
        assert not window, "the socket never filled"
    finally:
        server.close()


# -- ends ------------------------------------------------------------------------------------
def test_guest_fin_is_eof_to_the_server_and_the_servers_close_a_fin_after_all_data(
        rig: Rig, server: Server, v6: bool) -> None:
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6, window=WINDOW_16K)
    guest.send(FIN | ACK | PSH, b"last words")
    [ack] = guest.take()
    assert ack.ack == guest.seq                        # data and FIN acknowledged
    assert peer.recv(100) == b"last words"             # written before the shutdown...
    assert peer.recv(10) == b""                        # ...(SHUT_WR): end of file

    answer = pattern(40 * KIB)
    peer.sendall(answer)                               # half-closed: still flows this way
    peer.close()
    segments = guest.wait_data(16 * KIB)
    rig.settle()
    segments += guest.take()
    assert not any(s.flags & FIN for s in segments)    # the window holds the data back
    assert len(guest.data) == 16 * KIB
    while not guest.fin:
        guest.send(ACK)
        segments = guest.take()
        assert segments
    fin = segments[-1]
    assert fin.flags & FIN and guest.offset(fin) + len(fin.payload) == len(answer)
    assert bytes(guest.data) == answer
    flow = handler.flows.get(guest.key())
    assert flow is not None and flow.sock is not None
    guest.send(ACK)                                    # our FIN acknowledged: both done
    assert flow.sock is None and handler.active_flows() == 0
    guest.send(FIN | ACK, seq=guest.seq - 1)           # its FIN again: lingering, answered
    [again] = guest.take()
    assert again.flags == ACK and again.ack == guest.seq
    rig.loop.run_due_timers(time.monotonic() + tcp.LINGER + 0.1)
    assert len(handler.flows) == 0                     # forgotten after the linger


def close(rig: Rig, guest: TcpGuest, peer: socket.socket) -> None:
    """The guest's FIN, then the server's close, then the guest's last ACK."""
    guest.send(FIN | ACK)
    guest.take()
    assert peer.recv(10) == b""
    peer.close()
    rig.run_until(lambda: bool(guest.take()) and guest.fin, "the FIN")
    guest.send(ACK)


def test_closed_flows_linger_on_one_timer_and_a_new_syn_takes_their_ports(
        rig: Rig, server: Server, v6: bool) -> None:
    """A closed flow stays LINGER seconds, waiting in a queue that one
    timer sweeps rather than on a timer of its own; a new connection on a
    lingering flow's ports replaces it, and the sweep leaves it alone."""
    handler = rig.tcp()
    for port in (40000, 40001, 40002):
        close(rig, *connect(rig, handler, server, v6, port=port))
    assert len(handler.flows) == 3 and handler.active_flows() == 0
    live = [timer.callback for _, _, timer in rig.loop.timers if timer.callback is not None]
    assert live == [handler._sweep]
    again, _ = connect(rig, handler, server, v6, port=40000)
    rig.loop.run_due_timers(time.monotonic() + tcp.LINGER + 0.1)
    assert list(handler.flows) == [again.key()] and handler.active_flows() == 1
    assert handler.sweep is None and not handler.lingering


def test_server_close_first_then_guest_fin(rig: Rig, server: Server, v6: bool) -> None:
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6)
    peer.sendall(b"bye")
    peer.shutdown(socket.SHUT_WR)
    guest.wait_data(3)
    rig.run_until(lambda: guest.take() or guest.fin, "the FIN")
    assert guest.fin and bytes(guest.data) == b"bye"
    guest.send(ACK | PSH, b"late words")               # the guest may still talk
    assert peer.recv(100) == b"late words"
    assert guest.wait("the owed ACK")[0].ack == guest.seq
    guest.send(FIN | ACK)
    [last] = guest.take()
    assert last.flags == ACK and last.ack == guest.seq
    assert peer.recv(10) == b""
    assert handler.active_flows() == 0


def test_guest_reset_resets_the_server(rig: Rig, server: Server, v6: bool) -> None:
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6)
    guest.send(RST)
    assert guest.take() == [] and len(handler.flows) == 0
    with pytest.raises(ConnectionResetError):
        peer.recv(10)


def test_the_guest_gone_every_server_sees_a_reset(rig: Rig, server: Server, v6: bool) -> None:
    handler = rig.tcp()
    _, first = connect(rig, handler, server, v6, port=40000)
    _, second = connect(rig, handler, server, v6, port=40001)
    handler.reset_all()
    assert len(handler.flows) == 0
    for peer in (first, second):
        with pytest.raises(ConnectionResetError):
            peer.recv(10)


def test_server_reset_resets_the_guest(rig: Rig, server: Server, v6: bool) -> None:
    handler = rig.tcp()
    guest, peer = connect(rig, handler, server, v6)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    [rst] = guest.wait("the reset")
    assert rst.flags & RST and rst.seq == guest.peer_isn + 1
    assert rig.loop.counters.get("tcp_socket_error") == 1
    assert handler.active_flows() == 0


# -- refusals -----------------------------------------------------------------------------
def test_the_flow_cap_refuses_the_extra_syn_with_a_reset(rig: Rig, server: Server,
                                                        v6: bool) -> None:
    handler = rig.tcp(max_flows=1)
    connect(rig, handler, server, v6)
    extra = TcpGuest(rig, handler, v6, port=40001, peer_port=server.port)
    extra.connect()
    [rst] = extra.take()
    assert rst.flags == RST | ACK and rst.ack == extra.ISN + 1
    assert rig.loop.counters.get("tcp_flows_full") == 1
    rig.settle()
    assert not server.waiting()                        # never connected
    assert len(handler.flows) == 1


def test_a_refused_connect_resets_the_guest(rig: Rig, v6: bool) -> None:
    closed = socket.socket(family(v6), socket.SOCK_STREAM)   # bound, not listening
    closed.bind((loopback(v6), 0))
    try:
        handler = rig.tcp()
        guest = TcpGuest(rig, handler, v6, peer_port=closed.getsockname()[1])
        guest.connect()
        [rst] = guest.wait("the reset")
        assert rst.flags == RST | ACK and rst.ack == guest.ISN + 1
        assert rig.loop.counters.get("tcp_connect_failed") == 1
        assert len(handler.flows) == 0
    finally:
        closed.close()


def test_a_segment_of_no_flow_gets_a_reset(rig: Rig) -> None:
    handler = rig.tcp()
    stray = TcpGuest(rig, handler, peer_port=9)
    stray.send(ACK, b"who?", ack=12345)
    [rst] = stray.take()
    assert (rst.flags, rst.seq) == (RST, 12345)
    assert rig.loop.counters.get("tcp_no_flow") == 1

