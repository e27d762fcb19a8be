"""Fuzz target ``tcp``: ``parse_tcp`` (header, options, checksum) and the
connection state machine fed with the parsed segment.

Input: one Ethernet frame, then three control bytes (from the end):
mode (bit 0: verify the checksum, as in passt mode; bits 1-3: the state of
the connection the segment meets: connecting, SYN received, SYN sent,
established with data in flight, closed, or none), our ISN (one of a few,
some about to wrap around), and how much of the segment's payload the
socket takes.  Documented exception: ``packet.Drop``, from the parser only:
a ``TcpConn`` takes any segment the parser lets through.
Invariants: every frame we build (the RST for an unknown flow, whatever a
connection answers) parses back with a valid checksum; windows and budgets
are never negative; every input's Actions carries the connection's next
deadline (but guest data for the socket, whose write's answer carries it),
and data for the socket never comes with the end of the socket or flow.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_tcp.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import packet, tcp_wire  # noqa: E402
from passt_sep.packet import Drop  # noqa: E402
from passt_sep.tcp import Actions, State, TcpConn  # noqa: E402
from passt_sep.tcp_wire import ACK, RST, SYN, TcpSegment  # noqa: E402

NAME = "tcp"
ALLOWED = (Drop,)
DICTIONARY = [b"\x02\x04\x05\xb4", b"\x03\x03\x0e", b"\x03\x03\xff", b"\x04\x02",
              b"\x08\x0a", b"\x01", b"\x00", b"\x50", b"\xf0", b"\x02", b"\x12", b"\x10",
              b"\x11", b"\x04", b"\x14", b"\xff\xff\xff\x01", b"\x00\x00\x03\xe9"]

STATES = ("connecting", "syn_rcvd", "syn_sent", "established", "closed", "none")
OUR_ISNS = (0xFFFFFF00, 0, 0x7FFFFFFF, 0xFFFFFFFF)
GUEST_ISN = 1000
T0 = 100.0
FREE, SNDBUF = 1 << 20, 4 << 20


def check(data: bytes) -> None:
    fdp = common.provider(data)
    mode = fdp.ConsumeIntInRange(0, 255)
    isn = OUR_ISNS[fdp.ConsumeIntInRange(0, 255) % len(OUR_ISNS)]
    take = fdp.ConsumeIntInRange(0, 255)
    frame = common.rest(fdp)
    fast = tcp_wire.parse_tcp_frame(memoryview(frame), bool(mode & 1))
    _, inb = common.layers(frame)
    if inb is None or inb.proto != packet.IPPROTO_TCP:
        assert fast is None
        return
    seg = common.guarded(ALLOWED, tcp_wire.parse_tcp, inb, bool(mode & 1))
    if seg is None:
        assert fast is None
        return
    if fast is not None:                     # the one-unpack parse agrees
        assert fast[:3] == (inb.eth.src, inb.src, inb.dst)
        assert fast[3]._replace(payload=b"") == seg._replace(payload=b"")
        assert bytes(fast[3].payload) == bytes(seg.payload)
    assert seg.sport and seg.dport and seg.flags & (SYN | RST | ACK)
    assert seg.mss is None or 0 < seg.mss <= 0xFFFF
    assert seg.wscale is None or 0 <= seg.wscale <= tcp_wire.MAX_WSCALE
    assert len(seg.payload) <= len(inb.l4) - tcp_wire.TCP_HLEN
    rst = tcp_wire.rst_for_unknown(seg, inb, common.NET.our_mac)
    if rst is not None:
        assert _ours(rst, inb).flags & RST
    state = STATES[(mode >> 1) % len(STATES)]
    if state != "none":
        _converse(_conn(state, seg, inb, isn), seg, inb, take)


def _ours(frame: bytearray, inb: packet.Inbound) -> TcpSegment:
    """A frame we built for the guest of ``inb``: valid, checksummed, to it."""
    eth, reply = common.reparse(frame)
    seg = tcp_wire.parse_tcp(reply, verify=True)
    assert eth.dst == inb.eth.src and reply.dst == inb.src and reply.src == inb.dst
    return seg


def _conn(state: str, seg: TcpSegment, inb: packet.Inbound, isn: int) -> TcpConn:
    """A connection on the segment's addresses and ports, in ``state``."""
    if state == "syn_sent":
        conn, _ = TcpConn.for_accepted(guest_mac=inb.eth.src, guest_addr=inb.src,
                                       guest_port=seg.sport, peer_addr=inb.dst,
                                       peer_port=seg.dport, net=common.NET, isn=isn, free=FREE,
                                       sndbuf=SNDBUF, now=T0)
        return conn
    syn = TcpSegment(seg.sport, seg.dport, GUEST_ISN, 0, SYN, 0xFFFF, memoryview(b""), 1460, 7)
    conn = TcpConn.from_guest_syn(syn, inb, common.NET, isn, T0)
    if state == "connecting":
        return conn
    conn.on_connected(FREE, SNDBUF, T0)
    if state == "syn_rcvd":
        return conn
    ack = TcpSegment(seg.sport, seg.dport, GUEST_ISN + 1, conn.snd_nxt, ACK, 0xFFFF,
                     memoryview(b""))
    conn.on_guest_segment(ack, T0)
    assert conn.state is State.ESTABLISHED
    conn.on_socket_data(memoryview(bytes(3000)), T0)         # data in flight
    if state == "closed":
        assert conn.on_socket_error(T0).forget
    return conn


def _converse(conn: TcpConn, seg: TcpSegment, inb: packet.Inbound, take: int) -> None:
    """The segment, then the inputs the I/O layer gives next, as ``tcp_io``
    does: each Actions is read whole before the next input."""
    now = T0 + 0.5
    actions = _answer(conn, conn.on_guest_segment(seg, now))
    frames = list(actions.frames)
    if not actions.reset:
        send_more = actions.send_more
        if actions.to_socket is not None:
            assert 0 < len(actions.to_socket) <= len(seg.payload)
            accepted = len(actions.to_socket) * take // 255
            frames += _answer(conn, conn.on_socket_accepted(accepted, FREE // 2, SNDBUF,
                                                            now)).frames
        budget = conn.send_budget()
        assert budget >= 0
        if send_more and budget:
            frames += _answer(conn, conn.on_socket_data(memoryview(bytes(min(budget, 5000))),
                                                        now)).frames
        frames += _answer(conn, conn.on_socket_eof(now)).frames
        frames += _answer(conn, conn.on_socket_writable(FREE, SNDBUF)).frames
        deadline = conn.next_deadline()
        if deadline is not None:
            frames += _answer(conn, conn.on_timer(deadline + 0.001)).frames
    for frame in frames:
        ours = _ours(frame, inb)
        assert ours.window >= 0


def _answer(conn: TcpConn, actions: Actions) -> Actions:
    """An input's answer, checked: the I/O layer writes ``to_socket`` to a
    socket it keeps, and takes the timer from the write's answer then."""
    if actions.to_socket is None:
        assert actions.deadline == conn.next_deadline()
    else:
        assert actions.deadline is None
        assert not (actions.reset or actions.closed or actions.forget)
    return actions


def seeds() -> list[tuple[str, bytes]]:
    frames = common.frames()
    pairs = [("tcp4-syn", "connecting", 0), ("tcp4-syn", "none", 1), ("tcp6-syn", "syn_rcvd", 0),
             ("tcp4-synack", "syn_sent", 0), ("tcp4-ack-data", "established", 0),
             ("tcp6-ack-data", "established", 1), ("tcp4-fin", "established", 1),
             ("tcp4-rst", "syn_rcvd", 0), ("tcp6-fin", "closed", 0), ("tcp6-rst", "connecting", 1)]
    return [(f"{label}-{state}{'-verify' if verify else ''}",
             frames[label] + common.control(STATES.index(state) << 1 | verify, 0, 200))
            for label, state, verify in pairs]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
