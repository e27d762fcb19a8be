"""TCP translation decisions on byte-level segments, without I/O."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import struct

import pytest
from checksums import reference_checksum
from hypothesis import given
from hypothesis import strategies as st

from passt_sep import packet, tcp, tcp_wire
from passt_sep.netparams import IPv4Params, IPv6Params, Network
from passt_sep.packet import Drop
from passt_sep.tcp import State, TcpConn
from passt_sep.tcp_wire import ACK, FIN, PSH, RST, SYN, URG, TcpSegment

GUEST_MAC = bytes.fromhex("020000000001")
NET = Network(ipv4=IPv4Params(bytes([198, 51, 100, 2]), 24, bytes([198, 51, 100, 1])),
              ipv6=IPv6Params(ipaddress.ip_address("2001:db8:1::2").packed, 64,
                              ipaddress.ip_address("2001:db8:1::1").packed))
GUEST4, PEER4 = NET.ipv4.addr, bytes([203, 0, 113, 1])
GUEST6, PEER6 = NET.ipv6.addr, ipaddress.ip_address("2001:db8:2::1").packed
GPORT, PPORT = 40000, 80
GUEST_ISN, OUR_ISN = 1000, 0xFFFFFF00          # ours wraps around 2**32 soon
T0 = 100.0
FREE, SNDBUF = 1 << 20, 4 << 20                # the send buffer, kernel accounting
WINDOW = min(FREE // 2, 1460 * tcp.RCV_SEGMENTS) >> tcp.OUR_WSCALE

MSS_1460 = struct.pack("!BBH", 2, 4, 1460)
LINUX_SYN_OPTIONS = (MSS_1460 + b"\x04\x02" + b"\x08\x0a" + struct.pack("!II", 7, 0)
                     + b"\x01\x03\x03\x07")      # MSS, SACK-permitted, timestamps, NOP, WS 7


class Guest:
    """The guest's end of one connection: segments in, our frames checked."""

    def __init__(self, v6: bool = False, net: Network = NET) -> None:
        self.v6, self.net = v6, net
        self.addr, self.peer = (GUEST6, PEER6) if v6 else (GUEST4, PEER4)

    def frame(self, seq: int, ack: int, flags: int, window: int = 0xFFFF,
              payload: bytes = b"", options: bytes = b"") -> bytes:
        return bytes(tcp_wire.build_tcp_frame(self.net.our_mac, GUEST_MAC, self.addr,
                                              self.peer, GPORT, PPORT, seq & tcp_wire.MASK,
                                              ack & tcp_wire.MASK, flags, window, payload,
                                              options))

    def seg(self, seq: int, ack: int, flags: int, window: int = 0xFFFF,
            payload: bytes = b"", options: bytes = b"") -> tuple[TcpSegment, packet.Inbound]:
        inb = inbound(self.frame(seq, ack, flags, window, payload, options))
        return tcp_wire.parse_tcp(inb, verify=True), inb

    def check(self, frame: bytes | bytearray) -> TcpSegment:
        """One of our frames: addressed to this guest, checksums right."""
        frame = bytes(frame)
        inb = inbound(frame)
        assert inb.eth.dst == GUEST_MAC and inb.eth.src == self.net.our_mac
        assert (inb.src, inb.dst) == (self.peer, self.addr)
        if not self.v6:
            assert reference_checksum(frame[14:34]) == 0
        seg = tcp_wire.parse_tcp(inb, verify=True)
        assert (seg.sport, seg.dport) == (PPORT, GPORT)
        return seg


def inbound(frame: bytes) -> packet.Inbound:
    return packet.parse_ip_frame(packet.parse_ethernet(frame))


def outbound_conn(guest: Guest, options: bytes = LINUX_SYN_OPTIONS,
                  window: int = 64240) -> TcpConn:
    seg, inb = guest.seg(GUEST_ISN, 0, SYN, window, options=options)
    return TcpConn.from_guest_syn(seg, inb, guest.net, OUR_ISN, T0)


def established(guest: Guest, options: bytes = LINUX_SYN_OPTIONS,
                window_field: int = 1000) -> TcpConn:
    """Outbound flow after the handshake; the guest scales by 7 by default,
    so ``window_field`` 1000 is 128000 bytes."""
    conn = outbound_conn(guest, options)
    conn.on_connected(FREE, SNDBUF, T0)
    seg, _ = guest.seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, window_field)
    actions = conn.on_guest_segment(seg, T0)
    assert conn.state is State.ESTABLISHED and actions.send_more and not actions.frames
    return conn


def ack(guest: Guest, conn: TcpConn, ack_no: int, window_field: int = 1000,
        now: float = T0, payload: bytes = b"", flags: int = ACK) -> tcp.Actions:
    seg, _ = guest.seg(conn.rcv_nxt, ack_no, flags, window_field, payload)
    return conn.on_guest_segment(seg, now)


# -- parsing ---------------------------------------------------------------------------
def test_parse_syn_options_and_fields() -> None:
    guest = Guest()
    seg, _ = guest.seg(GUEST_ISN, 0, SYN, 64240, options=LINUX_SYN_OPTIONS)
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window) == (
        GPORT, PPORT, GUEST_ISN, 0, SYN, 64240)
    assert (seg.mss, seg.wscale, seg.sack_permitted, seg.timestamp) == (1460, 7, True, (7, 0))
    assert bytes(seg.payload) == b""


@pytest.mark.parametrize(("options", "expected"), [
    (bytes.fromhex("01030307" "020405b4" "0402" "080a0000000700000000"),   # reordered
     (1460, 7, True)),
    (bytes.fromhex("020405b4" "0101" "080a0000000700000000" "01030307"),   # no SACK
     (1460, 7, False)),
    (bytes.fromhex("02040000" "0402" "080a0000000700000000" "01030307"),   # MSS 0
     (None, 7, True)),
    (bytes.fromhex("020405b4" "0402" "080a0000000700000000" "0103030f"),   # shift 15
     (1460, 14, True)),
])
def test_parse_options_of_linux_syn_size_in_other_layouts(
        options: bytes, expected: tuple[int | None, int, bool]) -> None:
    """Linux's SYN options are read in one unpack; 20 bytes in any other
    layout (or values out of range) mean the same as to the general loop."""
    seg, _ = Guest().seg(GUEST_ISN, 0, SYN, 64240, options=options)
    assert (seg.mss, seg.wscale, seg.sack_permitted, seg.timestamp) == (*expected, (7, 0))


def test_parse_payload_without_options() -> None:
    seg, _ = Guest().seg(5, 6, ACK | PSH, 100, payload=b"hello")
    assert (seg.mss, seg.wscale, seg.sack_permitted, seg.timestamp) == (None, None, False, None)
    assert bytes(seg.payload) == b"hello" and seg.flags == ACK | PSH


def test_parse_window_scale_capped_at_14() -> None:
    seg, _ = Guest().seg(1, 0, SYN, options=b"\x03\x03\x0f\x00")
    assert seg.wscale == 14


@pytest.mark.parametrize("options", [b"\x02\x01\x00\x00", b"\x02\x09\x05\xb4",
                                     b"\x01\x01\x01\x02", b"\x08\x0a\x00\x00"])
def test_malformed_options_end_parsing_but_keep_segment(options: bytes) -> None:
    seg, _ = Guest().seg(1, 0, SYN, options=options)
    assert seg.flags == SYN and seg.mss is None


def tcp_inbound(l4: bytes, v6: bool = False) -> packet.Inbound:
    src, dst = (GUEST6, PEER6) if v6 else (GUEST4, PEER4)
    frame = packet.ip_frame(NET.our_mac, GUEST_MAC, src, dst, packet.IPPROTO_TCP, l4)
    return inbound(frame)


def raw_header(flags: int, offset_words: int = 5, sport: int = GPORT) -> bytes:
    return struct.pack("!HHIIHHHH", sport, PPORT, 1, 2, offset_words << 12 | flags, 100, 0, 0)


@pytest.mark.parametrize("l4, reason", [
    (raw_header(ACK)[:19], "tcp_short"),
    (raw_header(ACK, offset_words=4), "tcp_offset"),
    (raw_header(ACK, offset_words=6), "tcp_truncated"),
    (raw_header(SYN | FIN), "tcp_flags"),
    (raw_header(SYN | RST), "tcp_flags"),
    (raw_header(FIN), "tcp_no_ack"),
    (raw_header(0), "tcp_no_ack"),
    (raw_header(SYN, sport=0), "tcp_port_zero"),
])
def test_bad_segments_dropped(l4: bytes, reason: str) -> None:
    with pytest.raises(Drop) as caught:
        tcp_wire.parse_tcp(tcp_inbound(l4))
    assert caught.value.reason == reason


@pytest.mark.parametrize("v6", [False, True])
def test_checksum_verified_only_when_asked(v6: bool) -> None:
    frame = bytearray(Guest(v6).frame(1, 2, ACK, payload=b"data"))
    frame[-1] ^= 0x55
    inb = inbound(bytes(frame))
    with pytest.raises(Drop, match="tcp_checksum"):
        tcp_wire.parse_tcp(inb, verify=True)
    assert bytes(tcp_wire.parse_tcp(inb).payload) == b"dat" + bytes([ord("a") ^ 0x55])


@given(st.binary(max_size=120), st.booleans(), st.booleans())
def test_parse_only_ever_raises_drop(l4: bytes, v6: bool, verify: bool) -> None:
    try:
        tcp_wire.parse_tcp(tcp_inbound(l4, v6), verify)
    except Drop:
        pass


@given(st.binary(max_size=40))
def test_options_of_any_content_parse(options: bytes) -> None:
    options += bytes(-len(options) % 4)
    l4 = raw_header(SYN, offset_words=5 + len(options) // 4) + options
    tcp_wire.parse_tcp(tcp_inbound(l4))


def _general_parse(frame: bytes, verify: bool) -> tuple[bytes, bytes, bytes, TcpSegment]:
    """What the general parsers make of a frame (Drop if they drop it)."""
    inb = inbound(frame)
    if inb.proto != packet.IPPROTO_TCP:
        raise Drop("ip_proto")
    return inb.eth.src, inb.src, inb.dst, tcp_wire.parse_tcp(inb, verify)


def _same_parse(frame: bytes, verify: bool) -> bool:
    """parse_tcp_frame gives what the general parsers give, or None: then
    they take the frame.  True if it took the frame."""
    fast = tcp_wire.parse_tcp_frame(memoryview(frame), verify)
    if fast is None:
        return False
    mac, src, dst, seg = _general_parse(frame, verify)      # never a Drop then
    assert fast[:3] == (mac, src, dst)
    assert fast[3]._replace(payload=b"") == seg._replace(payload=b"")
    assert bytes(fast[3].payload) == bytes(seg.payload)
    return True


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("flags, payload, options", [
    (ACK, b"", b""), (ACK | PSH, b"x", b""), (SYN, b"", LINUX_SYN_OPTIONS),
    (FIN | ACK, b"data" * 300, MSS_1460), (RST, b"", b"")])
def test_common_frames_are_parsed_in_one_go(v6: bool, flags: int, payload: bytes,
                                            options: bytes) -> None:
    frame = Guest(v6).frame(1, 2, flags, 1000, payload, options)
    assert _same_parse(frame, verify=True)
    assert _same_parse(frame + b"ethernet padding", verify=False)


@pytest.mark.parametrize("v6", [False, True])
def test_one_go_leaves_bad_checksums_to_the_general_path(v6: bool) -> None:
    frame = bytearray(Guest(v6).frame(1, 2, ACK, payload=b"data"))
    frame[-1] ^= 0x55
    assert tcp_wire.parse_tcp_frame(memoryview(frame), verify=True) is None
    assert _same_parse(bytes(frame), verify=False)


@pytest.mark.parametrize("v6", [False, True])
@given(data=st.data())
def test_one_go_takes_what_the_general_path_takes(v6: bool, data: st.DataObject) -> None:
    """Any byte of a good frame changed, any length cut or added: the one
    unpack gives the general parsers' result, or leaves the frame to them
    (so that a malformed frame gets their drop reason)."""
    options = data.draw(st.sampled_from([b"", MSS_1460, LINUX_SYN_OPTIONS]))
    frame = bytearray(Guest(v6).frame(1, 2, ACK, payload=b"data", options=options))
    for _ in range(data.draw(st.integers(0, 3))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    frame = frame[:data.draw(st.integers(0, len(frame)))] + data.draw(st.binary(max_size=8))
    verify = data.draw(st.booleans())
    try:
        general = _general_parse(bytes(frame), verify)
    except Drop:
        general = None
    if not _same_parse(bytes(frame), verify):
        return
    assert general is not None


# -- building --------------------------------------------------------------------------
@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("payload", [b"", b"x", b"odd length", bytes(range(256)) * 7])
def test_built_frames_carry_correct_checksums(v6: bool, payload: bytes) -> None:
    guest = Guest(v6)
    frame = bytes(tcp_wire.build_tcp_frame(GUEST_MAC, NET.our_mac, guest.peer, guest.addr,
                                           PPORT, GPORT, 0xDEADBEEF, 0x01020304, ACK | PSH,
                                           0x1234, payload, MSS_1460))
    seg = guest.check(frame)
    assert (seg.seq, seg.ack, seg.flags, seg.window, seg.mss) == (
        0xDEADBEEF, 0x01020304, ACK | PSH, 0x1234, 1460)
    assert bytes(seg.payload) == payload
    inb = inbound(frame)
    l4 = bytes(inb.l4)
    zeroed = l4[:16] + b"\0\0" + l4[18:]
    expected = packet.l4_checksum(inb.src, inb.dst, packet.IPPROTO_TCP, zeroed)
    assert {int.from_bytes(l4[16:18], "big"), expected} <= {expected, expected ^ 0xFFFF}
    assert len(frame) == 14 + (40 if v6 else 20) + 24 + len(payload)


@pytest.mark.parametrize("v6", [False, True])
@given(seq=st.integers(0, tcp_wire.MASK), ack=st.integers(0, tcp_wire.MASK),
       window=st.integers(0, 0xFFFF), flags=st.sampled_from([ACK, ACK | PSH, FIN | ACK, RST]),
       size=st.sampled_from([0, 1, 2, 1459, 1460, 60000]))
def test_template_fast_paths_build_what_build_does(v6: bool, seq: int, ack: int, window: int,
                                                   flags: int, size: int) -> None:
    """``ack`` and ``segment`` are ``build`` without options, cheaper; with
    and without ``partial`` (a template may change it: vhost-user's offload)."""
    guest = Guest(v6)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for partial in (True, False):
        tx = tcp_wire.FrameTemplate(GUEST_MAC, NET.our_mac, guest.peer, guest.addr, PPORT,
                                    GPORT, not partial)
        tx.partial = partial
        assert bytes(tx.segment(seq, ack, flags, window, payload)) == bytes(
            tx.build(seq, ack, flags, window, payload))
        assert bytes(tx.ack(seq, ack, window)) == bytes(tx.build(seq, ack, ACK, window))


def test_template_frames_are_new_objects() -> None:
    """A frame handed to a link may wait there (vhost-user's queue): the
    next one must not be the same buffer, changed."""
    tx = tcp_wire.FrameTemplate(GUEST_MAC, NET.our_mac, PEER4, GUEST4, PPORT, GPORT, True)
    first = tx.ack(1, 2, 3)
    kept = bytes(first)
    tx.ack(4, 5, 6)
    tx.segment(7, 8, ACK, 9, b"x")
    assert bytes(first) == kept


# -- outbound handshake ---------------------------------------------------------------------
def test_guest_syn_waits_for_connect_then_syn_ack_fields() -> None:
    guest = Guest()
    conn = outbound_conn(guest)
    assert conn.state is State.CONNECTING and conn.send_budget() == 0
    seg, _ = guest.seg(GUEST_ISN, 0, SYN, 64240, options=LINUX_SYN_OPTIONS)
    assert conn.on_guest_segment(seg, T0 + 0.5).frames == []   # retransmitted SYN: wait
    [frame] = conn.on_connected(FREE, SNDBUF, T0 + 1).frames
    synack = guest.check(frame)
    assert (synack.seq, synack.ack, synack.flags, synack.window) == (
        OUR_ISN, GUEST_ISN + 1, SYN | ACK, 0xFFFF)
    assert (synack.mss, synack.wscale) == (65520 - 40, tcp.OUR_WSCALE)
    assert not synack.sack_permitted and synack.timestamp is None
    assert conn.state is State.SYN_RCVD


def test_syn_ack_without_window_scale_when_guest_offers_none() -> None:
    guest = Guest()
    conn = outbound_conn(guest, options=MSS_1460)
    synack = guest.check(conn.on_connected(51040, SNDBUF, T0).frames[0])
    room = 51040 * 1460 // (1460 + tcp.SKB_OVERHEAD)             # 30000
    assert (synack.wscale, synack.window, synack.mss) == (None, room, 65480)
    seg, _ = guest.seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 30000)
    conn.on_guest_segment(seg, T0)
    assert conn.send_budget() == 30000                       # unscaled
    data = guest.check(conn.on_socket_data(memoryview(b"x"), T0).frames[0])
    assert data.window == room                               # ours unscaled too


def test_handshake_ack_establishes_and_scales_guest_window() -> None:
    guest = Guest()
    conn = established(guest, window_field=1000)
    assert conn.send_budget() == 1000 << 7


def test_guest_window_becomes_the_socket_window_clamp() -> None:
    guest = Guest()
    conn = outbound_conn(guest)
    conn.on_connected(FREE, SNDBUF, T0)
    seg, _ = guest.seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000)
    assert conn.on_guest_segment(seg, T0).window_clamp == 1000 << 7


@pytest.mark.parametrize("window_field, clamp", [
    (1100, None),                 # a tenth more: not worth a syscall
    (900, None),
    (1300, 1300 << 7),            # a quarter or more: clamped again
    (700, 700 << 7),
    (0, tcp.MIN_CLAMP),           # a zero window keeps the floor
    (0xFFFF, 0xFFFF << 7),
])
def test_window_clamp_follows_guest_window_in_quarters(window_field: int,
                                                       clamp: int | None) -> None:
    guest = Guest()
    conn = established(guest, window_field=1000)
    assert ack(guest, conn, OUR_ISN + 1, window_field).window_clamp == clamp


def test_window_clamp_never_below_floor() -> None:
    guest = Guest()
    conn = established(guest, window_field=100)      # 12800 bytes
    assert conn.clamp == tcp.MIN_CLAMP
    assert ack(guest, conn, OUR_ISN + 1, 10).window_clamp is None


def test_lost_syn_ack_is_sent_again_on_guest_syn() -> None:
    guest = Guest()
    conn = outbound_conn(guest)
    conn.on_connected(FREE, SNDBUF, T0)
    seg, _ = guest.seg(GUEST_ISN, 0, SYN, 64240, options=LINUX_SYN_OPTIONS)
    [frame] = conn.on_guest_segment(seg, T0 + 1).frames
    assert guest.check(frame).flags == SYN | ACK


def test_syn_ack_retries_then_reset() -> None:
    guest = Guest()
    conn = outbound_conn(guest)
    conn.on_connected(FREE, SNDBUF, T0)
    now = T0
    for _ in range(tcp.SYN_RETRIES):
        now = conn.next_deadline()
        actions = conn.on_timer(now)
        assert guest.check(actions.frames[0]).flags == SYN | ACK
    actions = conn.on_timer(conn.next_deadline())
    assert actions.reset and actions.forget
    rst = guest.check(actions.frames[0])
    assert rst.flags == RST | ACK and rst.seq == OUR_ISN + 1


def test_wrong_ack_in_handshake_gets_reset_and_flow_stays() -> None:
    guest = Guest()
    conn = outbound_conn(guest)
    conn.on_connected(FREE, SNDBUF, T0)
    seg, _ = guest.seg(GUEST_ISN + 1, 12345, ACK)
    [frame] = conn.on_guest_segment(seg, T0).frames
    rst = guest.check(frame)
    assert (rst.flags, rst.seq) == (RST, 12345)
    assert conn.state is State.SYN_RCVD


def test_connect_failure_resets_guest_syn() -> None:
    guest = Guest()
    conn = outbound_conn(guest)
    actions = conn.on_connect_failed(T0)
    rst = guest.check(actions.frames[0])
    assert (rst.flags, rst.seq, rst.ack) == (RST | ACK, 0, GUEST_ISN + 1)
    assert conn.state is State.CLOSED and actions.forget


def test_guest_reset_while_connecting() -> None:
    guest = Guest()
    conn = outbound_conn(guest)
    seg, _ = guest.seg(GUEST_ISN + 1, 0, RST)
    actions = conn.on_guest_segment(seg, T0)
    assert actions.reset and actions.forget


# -- inbound handshake ----------------------------------------------------------------------
def accepted(guest: Guest) -> tuple[TcpConn, TcpSegment]:
    conn, actions = TcpConn.for_accepted(guest_mac=GUEST_MAC, guest_addr=guest.addr,
                                         guest_port=GPORT, peer_addr=guest.peer, peer_port=PPORT,
                                         net=guest.net, isn=OUR_ISN, free=100000,
                                         sndbuf=SNDBUF, now=T0)
    [frame] = actions.frames
    assert actions.deadline == T0 + tcp.SYN_TIMEOUT
    return conn, guest.check(frame)


@pytest.mark.parametrize("v6", [False, True])
def test_inbound_syn_then_guest_syn_ack(v6: bool) -> None:
    guest = Guest(v6)
    conn, syn = accepted(guest)
    segment = 1220 if v6 else 536                 # the guest's MSS is not known yet
    window = 100000 * segment // (segment + tcp.SKB_OVERHEAD)
    assert (syn.seq, syn.ack, syn.flags, syn.window) == (OUR_ISN, 0, SYN, window)
    assert (syn.mss, syn.wscale) == (65520 - (60 if v6 else 40), tcp.OUR_WSCALE)
    assert conn.state is State.SYN_SENT
    seg, _ = guest.seg(7000, OUR_ISN + 1, SYN | ACK, 28800,
                       options=struct.pack("!BBH", 2, 4, 1400) + b"\x01\x03\x03\x02")
    actions = conn.on_guest_segment(seg, T0)
    [frame] = actions.frames
    reply = guest.check(frame)
    assert (reply.flags, reply.seq, reply.ack) == (ACK, OUR_ISN + 1, 7001)
    assert reply.window == window >> tcp.OUR_WSCALE
    assert conn.state is State.ESTABLISHED and actions.send_more
    assert conn.send_budget() == 28800                       # SYN-ACK window: unscaled
    frames = conn.on_socket_data(memoryview(bytes(3000)), T0).frames
    assert [len(guest.check(f).payload) for f in frames] == [1400, 1400, 200]


def test_inbound_guest_refuses() -> None:
    guest = Guest()
    conn, _ = accepted(guest)
    seg, _ = guest.seg(0, OUR_ISN + 1, RST | ACK)
    actions = conn.on_guest_segment(seg, T0)
    assert actions.reset and actions.forget and not actions.frames


def test_inbound_reset_with_wrong_ack_ignored() -> None:
    guest = Guest()
    conn, _ = accepted(guest)
    seg, _ = guest.seg(0, OUR_ISN + 7, RST | ACK)
    assert not conn.on_guest_segment(seg, T0).reset
    assert conn.state is State.SYN_SENT


def test_inbound_syn_ack_with_wrong_ack_gets_reset() -> None:
    guest = Guest()
    conn, _ = accepted(guest)
    seg, _ = guest.seg(7000, 99, SYN | ACK)
    [frame] = conn.on_guest_segment(seg, T0).frames
    assert (guest.check(frame).flags, guest.check(frame).seq) == (RST, 99)
    assert conn.state is State.SYN_SENT


def test_inbound_syn_retries_with_backoff_then_gives_up_silently() -> None:
    guest = Guest()
    conn, _ = accepted(guest)
    deadlines = []
    for _ in range(tcp.SYN_RETRIES):
        deadline = conn.next_deadline()
        deadlines.append(deadline)
        [frame] = conn.on_timer(deadline).frames
        assert guest.check(frame).flags == SYN and guest.check(frame).seq == OUR_ISN
    assert [b - a for a, b in zip([T0, *deadlines[:-1]], deadlines, strict=True)] == [1.0, 2.0, 4.0]
    actions = conn.on_timer(conn.next_deadline())
    assert actions.reset and actions.forget and not actions.frames


def test_timer_before_deadline_does_nothing() -> None:
    conn, _ = accepted(Guest())
    actions = conn.on_timer(T0 + 0.5)
    assert actions == tcp.Actions(deadline=T0 + tcp.SYN_TIMEOUT)     # the timer stays


# -- guest to socket --------------------------------------------------------------------
def data_seg(guest: Guest, conn: TcpConn, offset: int, payload: bytes,
             flags: int = ACK | PSH) -> TcpSegment:
    return guest.seg(GUEST_ISN + 1 + offset, conn.snd_una, flags, 1000, payload)[0]


def test_in_order_data_goes_to_socket_and_ack_follows_what_it_took() -> None:
    guest = Guest()
    conn = established(guest)
    actions = conn.on_guest_segment(data_seg(guest, conn, 0, b"a" * 100), T0)
    assert bytes(actions.to_socket) == b"a" * 100 and not actions.frames
    [frame] = conn.on_socket_accepted(100, FREE, SNDBUF, T0).frames
    reply = guest.check(frame)
    assert (reply.flags, reply.ack, reply.window) == (ACK, GUEST_ISN + 101, WINDOW)


def test_partial_accept_acks_part_and_closes_window() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_guest_segment(data_seg(guest, conn, 0, b"b" * 100), T0)
    [frame] = conn.on_socket_accepted(60, 80, SNDBUF, T0).frames
    reply = guest.check(frame)
    assert (reply.ack, reply.window) == (GUEST_ISN + 61, 0)
    assert conn.socket_full
    # the guest sends the rest again, overlapping what the socket has
    actions = conn.on_guest_segment(data_seg(guest, conn, 0, b"b" * 100), T0)
    assert bytes(actions.to_socket) == b"b" * 40
    # the socket drains: a window update, once the room is worth it
    assert conn.on_socket_writable(2000, SNDBUF).frames == []   # 1175 bytes: not a segment
    [update] = conn.on_socket_writable(FREE, SNDBUF).frames
    assert guest.check(update).window == WINDOW and not conn.socket_full


@pytest.mark.parametrize("mss, free, window", [
    (65480, 665040, 654800),             # big segments: nearly all of it is payload
    (1460, 248400, 146000),              # 1500-byte MTU: an skb's overhead per segment
    (536, 156000, 53600),                # small segments: mostly overhead
    (1460, 8 << 20, 1460 * tcp.RCV_SEGMENTS),   # no more than the tap's queue holds
])
def test_window_from_send_buffer_accounting(mss: int, free: int, window: int) -> None:
    guest = Guest()
    conn = established(guest, options=struct.pack("!BBH", 2, 4, mss) + b"\x01\x03\x03\x00")
    conn.on_guest_segment(data_seg(guest, conn, 0, b"f"), T0)
    [frame] = conn.on_socket_accepted(1, free, SNDBUF, T0).frames
    assert guest.check(frame).window == window >> tcp.OUR_WSCALE


@pytest.mark.parametrize("mss, free, sndbuf, full", [
    (1460, 2000, 1 << 20, True),         # 1175 bytes: less than a segment
    (1460, 3000, 1 << 20, False),
    (1460, 1800, 2000, False),           # 1058 bytes: half of a small buffer is enough
    (1460, 1600, 2000, True),            # 940 bytes: not even that
    (65480, 40000, 1 << 20, True),       # 39 KB: less than one of the guest's segments
    (65480, 67000, 1 << 20, False),
])
def test_silly_window_avoidance(mss: int, free: int, sndbuf: int, full: bool) -> None:
    guest = Guest()
    conn = established(guest, options=struct.pack("!BBH", 2, 4, mss) + b"\x01\x03\x03\x00")
    conn.on_guest_segment(data_seg(guest, conn, 0, b"g"), T0)
    [frame] = conn.on_socket_accepted(1, free, sndbuf, T0).frames
    assert conn.socket_full is full and (guest.check(frame).window == 0) is full


def test_a_short_write_answered_from_the_estimated_room() -> None:
    """After one measurement, a short write needs none: the room is what was
    measured less what the writes since took, each with an skb's overhead.
    Its ACK is owed, and sent when due with the window as it stands."""
    guest = Guest()
    conn = established(guest)
    conn.on_guest_segment(data_seg(guest, conn, 0, b"m"), T0)
    conn.on_socket_accepted(1, FREE, FREE, T0)           # an empty buffer
    free = FREE
    for offset, size in ((1, 1), (2, 1023), (1025, 500)):
        conn.on_guest_segment(data_seg(guest, conn, offset, b"n" * size), T0)
        actions = conn.on_socket_took(size, T0)
        assert actions is not None and only_frames_and_deadline(actions)
        assert actions.frames == [] and conn.ack_due
        free -= size + tcp.SKB_OVERHEAD
        due = conn.on_ack_due()
        assert due is not None and not conn.ack_due
        reply = guest.check(due)
        assert (reply.ack, reply.flags) == (GUEST_ISN + 1 + offset + size, ACK)
        assert reply.window == min(free * 1460 // (1460 + tcp.SKB_OVERHEAD),
                                   1460 * tcp.RCV_SEGMENTS) >> tcp.OUR_WSCALE
        assert actions.deadline == conn.next_deadline()


@pytest.mark.parametrize("payload, flags, took, free", [
    (b"r" * 10, ACK | PSH, 4, FREE),                 # refused in part
    (b"r" * 10, ACK | PSH | FIN, 10, FREE),          # the guest's FIN goes with it
    (b"r" * 1024, ACK | PSH, 1024, FREE),            # not short: bulk, measure
    (b"r" * 1460, ACK | PSH, 1460, FREE),            # a segment
    (b"r" * 10, ACK | PSH, 10, FREE // 2 + 1000),    # less than half the buffer left
    (b"r" * 10, ACK | PSH, 10, 0),                   # never measured
])
def test_the_estimate_declined_with_nothing_changed(payload: bytes, flags: int, took: int,
                                                    free: int) -> None:
    guest = Guest()
    conn = established(guest)
    if free:                                         # of a buffer of FREE bytes
        conn.on_guest_segment(data_seg(guest, conn, 0, b"m"), T0)
        conn.on_socket_accepted(1, free, FREE, T0)
    offset = 1 if free else 0
    conn.on_guest_segment(data_seg(guest, conn, offset, payload, flags), T0)
    before = (conn.rcv_nxt, conn.pending, conn.rcv_window, conn.sock_free)
    assert conn.on_socket_took(took, T0) is None
    assert (conn.rcv_nxt, conn.pending, conn.rcv_window, conn.sock_free) == before
    [frame] = conn.on_socket_accepted(took, FREE, SNDBUF, T0).frames
    assert guest.check(frame).ack == GUEST_ISN + 1 + offset + took + bool(flags & FIN)
    assert not conn.ack_due                          # acknowledged at once, as ever


def test_the_estimate_declined_where_the_window_rule_would_close_it() -> None:
    """The estimate follows _set_room's rule: in a 3,000-byte buffer a
    10-byte write leaves room for 1,155 bytes, under a segment and under
    half the buffer, which the rule offers as none; the estimate declines,
    and the measured answer closes the window."""
    guest = Guest()
    conn = established(guest)
    conn.on_guest_segment(data_seg(guest, conn, 0, b"m"), T0)
    conn.on_socket_accepted(1, 3000, 3000, T0)
    assert not conn.socket_full                      # 1,763 bytes of room: open
    conn.on_guest_segment(data_seg(guest, conn, 1, b"r" * 10), T0)
    assert conn.on_socket_took(10, T0) is None
    [frame] = conn.on_socket_accepted(10, 3000 - 10 - tcp.SKB_OVERHEAD, 3000, T0).frames
    assert conn.socket_full and guest.check(frame).window == 0


# -- delayed ACK ------------------------------------------------------------------------
def owing(guest: Guest, payload: bytes = b"q") -> TcpConn:
    """An established flow whose short write's ACK is owed: the room
    measured once (an empty buffer of FREE bytes), then ``payload`` written
    (at offset 1) and taken whole."""
    conn = established(guest)
    conn.on_guest_segment(data_seg(guest, conn, 0, b"m"), T0)
    conn.on_socket_accepted(1, FREE, FREE, T0)
    actions = conn.on_guest_segment(data_seg(guest, conn, 1, payload), T0)
    assert bytes(actions.to_socket) == payload
    took = conn.on_socket_took(len(payload), T0)
    assert took is not None and only_frames_and_deadline(took)
    assert took.frames == [] and conn.ack_due
    return conn


def test_a_short_writes_ack_is_owed_and_the_answer_carries_it() -> None:
    """A request/response exchange: one frame to the guest, not two."""
    guest = Guest()
    conn = owing(guest)
    [frame] = conn.on_socket_data(memoryview(b"answer"), T0).frames
    reply = guest.check(frame)
    assert (bytes(reply.payload), reply.ack) == (b"answer", GUEST_ISN + 3)
    assert not conn.ack_due and conn.on_ack_due() is None


def test_an_owed_ack_goes_once_when_due_with_the_window_as_it_stands() -> None:
    guest = Guest()
    conn = owing(guest)
    frame = conn.on_ack_due()
    assert frame is not None
    reply = guest.check(frame)
    assert (reply.flags, reply.seq, reply.ack, bytes(reply.payload)) == (
        ACK, (OUR_ISN + 1) & tcp_wire.MASK, GUEST_ISN + 3, b"")
    free = FREE - 1 - tcp.SKB_OVERHEAD                # the estimate after the write
    assert reply.window == min(free * 1460 // (1460 + tcp.SKB_OVERHEAD),
                               1460 * tcp.RCV_SEGMENTS) >> tcp.OUR_WSCALE
    assert not conn.ack_due and conn.on_ack_due() is None      # once


def test_an_owed_ack_never_offers_less_than_a_segment() -> None:
    """Room measured too small since the write is offered as none: the
    guest's TCP would hold its data for its persist timer on a window
    smaller than a segment."""
    guest = Guest()
    conn = owing(guest)
    assert conn.on_socket_writable(2000, 1 << 20).frames == []    # 1175 bytes
    frame = conn.on_ack_due()
    assert frame is not None and guest.check(frame).window == 0


def test_a_second_short_write_while_an_ack_is_owed_is_acknowledged_at_once() -> None:
    """Two segments unacknowledged: ACK now (Linux's rule), else a sender
    with Nagle would wait for the delay."""
    guest = Guest()
    conn = owing(guest)
    conn.on_guest_segment(data_seg(guest, conn, 2, b"r"), T0)
    took = conn.on_socket_took(1, T0)
    assert took is not None and only_frames_and_deadline(took)
    [frame] = took.frames
    assert guest.check(frame).ack == GUEST_ISN + 4
    assert not conn.ack_due and conn.on_ack_due() is None
    conn.on_guest_segment(data_seg(guest, conn, 3, b"s"), T0)      # owed again
    took = conn.on_socket_took(1, T0)
    assert took is not None and took.frames == [] and conn.ack_due


@pytest.mark.parametrize("payload, flags, took", [
    (b"b" * 1460, ACK | PSH, 1460),                  # bulk: a segment
    (b"b" * 1023, ACK | PSH, 1000),                  # refused in part
    (b"b" * 10, ACK | PSH | FIN, 10),                # the guest's FIN behind it
])
def test_other_writes_acknowledged_at_once_pay_an_owed_ack(payload: bytes, flags: int,
                                                          took: int) -> None:
    guest = Guest()
    conn = owing(guest)
    conn.on_guest_segment(data_seg(guest, conn, 2, payload, flags), T0)
    assert conn.on_socket_took(took, T0) is None
    [frame] = conn.on_socket_accepted(took, FREE, SNDBUF, T0).frames
    assert guest.check(frame).ack == GUEST_ISN + 3 + took + bool(flags & FIN and took == 10)
    assert not conn.ack_due and conn.on_ack_due() is None


def test_an_owed_ack_paid_by_our_fin_and_dropped_with_a_reset() -> None:
    guest = Guest()
    conn = owing(guest)
    [fin] = conn.on_socket_eof(T0).frames
    assert (guest.check(fin).flags, guest.check(fin).ack) == (FIN | ACK, GUEST_ISN + 3)
    assert conn.on_ack_due() is None
    conn = owing(guest)
    seg, _ = guest.seg(GUEST_ISN + 3, 0, RST)
    assert conn.on_guest_segment(seg, T0).reset
    assert conn.on_ack_due() is None


def test_duplicate_segment_only_reacknowledged() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_guest_segment(data_seg(guest, conn, 0, b"c" * 10), T0)
    conn.on_socket_accepted(10, FREE, SNDBUF, T0)
    actions = conn.on_guest_segment(data_seg(guest, conn, 0, b"c" * 10), T0)
    assert actions.to_socket is None and actions.drop is None
    assert guest.check(actions.frames[0]).ack == GUEST_ISN + 11


def test_guest_zero_window_probe_answered_with_our_window() -> None:
    """Our window update after a full socket can be lost: the guest's probe
    (an old sequence number, no payload) must get the window again."""
    guest = Guest()
    conn = established(guest)
    conn.on_guest_segment(data_seg(guest, conn, 0, b"p" * 100), T0)
    conn.on_socket_accepted(100, 80, SNDBUF, T0)            # full: window 0
    conn.on_socket_writable(FREE, SNDBUF)                     # this update is lost
    [answer] = conn.on_guest_segment(data_seg(guest, conn, 99, b"", ACK), T0).frames
    reply = guest.check(answer)
    assert (reply.ack, reply.window) == (GUEST_ISN + 101, WINDOW)
    # a pure ACK in sequence needs no answer
    assert not conn.on_guest_segment(data_seg(guest, conn, 100, b"", ACK), T0).frames


@pytest.mark.parametrize("offset, reason", [(10, "tcp_out_of_order"),
                                            (10 << 20, "tcp_out_of_window")])
def test_data_after_a_gap_dropped_with_duplicate_ack(offset: int, reason: str) -> None:
    guest = Guest()
    conn = established(guest)
    actions = conn.on_guest_segment(data_seg(guest, conn, offset, b"d" * 10), T0)
    assert actions.to_socket is None and actions.drop == reason
    assert guest.check(actions.frames[0]).ack == GUEST_ISN + 1


def test_ack_of_unsent_data_answered_and_dropped() -> None:
    guest = Guest()
    conn = established(guest)
    seg = guest.seg(GUEST_ISN + 1, OUR_ISN + 500, ACK | PSH, 1000, b"zz")[0]
    actions = conn.on_guest_segment(seg, T0)
    assert actions.drop == "tcp_ack_unsent" and actions.to_socket is None
    assert guest.check(actions.frames[0]).seq == OUR_ISN + 1


# -- socket to guest --------------------------------------------------------------------
def test_segments_cut_to_guest_mss_within_window() -> None:
    guest = Guest()
    conn = established(guest, window_field=40)               # 5120 bytes
    assert conn.send_budget() == 5120
    frames = conn.on_socket_data(memoryview(bytes(range(250)) * 12), T0).frames
    segs = [guest.check(f) for f in frames]
    assert [len(s.payload) for s in segs] == [1460, 1460, 80]
    assert [s.seq for s in segs] == [(OUR_ISN + 1 + i * 1460) & tcp_wire.MASK for i in range(3)]
    assert [s.flags for s in segs] == [ACK, ACK, ACK | PSH]
    assert b"".join(bytes(s.payload) for s in segs) == bytes(range(250)) * 12
    assert conn.send_budget() == 5120 - 3000


def test_mss_never_above_mtu() -> None:
    guest = Guest(net=dataclasses.replace(NET, mtu=1500))
    conn = established(guest, options=struct.pack("!BBH", 2, 4, 9000) + b"\x01\x03\x03\x07")
    frames = conn.on_socket_data(memoryview(bytes(3000)), T0).frames
    assert [len(guest.check(f).payload) for f in frames] == [1460, 1460, 80]


@pytest.mark.parametrize("v6, size", [(False, 536), (True, 1220)])
def test_default_mss_without_option(v6: bool, size: int) -> None:
    guest = Guest(v6)
    conn = established(guest, options=b"")
    frames = conn.on_socket_data(memoryview(bytes(size + 1)), T0).frames
    assert [len(guest.check(f).payload) for f in frames] == [size, 1]


def test_guest_ack_reports_bytes_to_discard() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(bytes(3000)), T0)
    actions = ack(guest, conn, OUR_ISN + 1 + 2920)
    assert actions.acked == 2920 and actions.send_more and not actions.frames
    assert conn.send_budget() == (1000 << 7) - 80


def test_window_opening_asks_for_more() -> None:
    guest = Guest()
    conn = established(guest, window_field=10)
    conn.on_socket_data(memoryview(bytes(1280)), T0)
    assert conn.send_budget() == 0
    actions = ack(guest, conn, OUR_ISN + 1, window_field=20)
    assert actions.send_more and actions.acked == 0 and conn.send_budget() == 1280


def test_fast_retransmit_after_three_duplicate_acks_once_per_window() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(bytes(5 * 1460)), T0)
    assert not ack(guest, conn, OUR_ISN + 1 + 1460).retransmit
    assert not ack(guest, conn, OUR_ISN + 1 + 1460).retransmit
    assert not ack(guest, conn, OUR_ISN + 1 + 1460).retransmit
    actions = ack(guest, conn, OUR_ISN + 1 + 1460)
    assert actions.retransmit and actions.send_more
    assert conn.send_budget() == 1460                        # the first lost segment
    [first] = conn.on_socket_data(memoryview(bytes(1460)), T0).frames
    assert guest.check(first).seq == (OUR_ISN + 1 + 1460) & tcp_wire.MASK
    assert conn.send_budget() == 0                           # until it is acknowledged
    for _ in range(5):                                       # still recovering: no more
        assert not ack(guest, conn, OUR_ISN + 1 + 1460).retransmit


def test_recovery_follows_partial_acks_one_hole_at_a_time() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(bytes(10 * 1000)), T0)   # 6 full segments + 1240
    for _ in range(3):
        ack(guest, conn, OUR_ISN + 1)
    [hole] = conn.on_socket_data(memoryview(bytes(conn.send_budget())), T0).frames
    assert guest.check(hole).seq == (OUR_ISN + 1) & tcp_wire.MASK
    # the guest had all but one more segment: its ACK stops at the next hole
    actions = ack(guest, conn, OUR_ISN + 1 + 4 * 1460)
    assert actions.acked == 4 * 1460 and conn.snd_nxt == conn.snd_una
    assert conn.send_budget() == 1460
    [hole] = conn.on_socket_data(memoryview(bytes(1460)), T0).frames
    assert guest.check(hole).seq == (OUR_ISN + 1 + 4 * 1460) & tcp_wire.MASK
    # everything sent before the loss is in: back to the whole window
    actions = ack(guest, conn, OUR_ISN + 1 + 10 * 1000)
    assert actions.acked == 10 * 1000 - 4 * 1460 and conn.send_budget() == 1000 << 7


def test_ack_beyond_rewound_send_point_accepted() -> None:
    """After a rewind the guest may acknowledge what it had got before it:
    snd_nxt catches up and the peek offset (0 after discarding) stays right."""
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(bytes(4 * 1460)), T0)
    for _ in range(3):
        ack(guest, conn, OUR_ISN + 1)
    assert ack(guest, conn, OUR_ISN + 1).retransmit is False  # 4th dup ack: already rewound
    conn.on_socket_data(memoryview(bytes(1460)), T0)           # one resent
    actions = ack(guest, conn, OUR_ISN + 1 + 4 * 1460)
    assert actions.acked == 4 * 1460
    assert conn.snd_nxt == conn.snd_una == (OUR_ISN + 1 + 4 * 1460) & tcp_wire.MASK


def test_duplicate_ack_with_window_change_is_no_duplicate() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(bytes(3 * 1460)), T0)
    for window in (999, 998, 997):
        assert not ack(guest, conn, OUR_ISN + 1, window_field=window).retransmit


def test_retransmission_timeout_backs_off_then_resets() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(bytes(100)), T0)
    assert conn.next_deadline() == T0 + tcp.ACK_TIMEOUT
    gaps = []
    now = T0
    for _ in range(tcp.MAX_RETRIES):
        deadline = conn.next_deadline()
        gaps.append(deadline - now)
        now = deadline
        actions = conn.on_timer(now)
        assert actions.retransmit and actions.send_more and not actions.frames
        assert conn.send_budget() == 1460                    # again from snd_una
        conn.on_socket_data(memoryview(bytes(100)), now)
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    actions = conn.on_timer(conn.next_deadline())
    assert actions.reset and actions.forget and actions.drop == "tcp_retransmit_limit"
    assert guest.check(actions.frames[0]).flags == RST | ACK


def test_progress_resets_the_retransmission_timer() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(bytes(200)), T0)
    ack(guest, conn, OUR_ISN + 101, now=T0 + 0.9)
    assert conn.next_deadline() == T0 + 0.9 + tcp.ACK_TIMEOUT
    ack(guest, conn, OUR_ISN + 201, now=T0 + 1.2)
    assert conn.next_deadline() == T0 + 1.2 + tcp.INACTIVITY


def test_zero_window_probed() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(bytes(100)), T0)
    ack(guest, conn, OUR_ISN + 101, window_field=0)
    assert conn.send_budget() == 0
    [frame] = conn.on_timer(conn.next_deadline()).frames
    probe = guest.check(frame)
    assert (probe.seq, probe.flags, len(probe.payload)) == (OUR_ISN + 100, ACK, 0)
    assert ack(guest, conn, OUR_ISN + 101, window_field=5).send_more


def test_inactivity_resets_both_ways() -> None:
    guest = Guest()
    conn = established(guest)
    actions = conn.on_timer(T0 + tcp.INACTIVITY)
    assert actions.reset and actions.drop == "tcp_inactive"
    assert guest.check(actions.frames[0]).flags == RST | ACK


# -- ending -----------------------------------------------------------------------------
def test_socket_eof_then_guest_fin_closes_and_lingers() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(b"bye"), T0)
    [frame] = conn.on_socket_eof(T0).frames
    fin = guest.check(frame)
    assert (fin.flags, fin.seq) == (FIN | ACK, OUR_ISN + 4)
    assert conn.send_budget() == 0
    actions = ack(guest, conn, OUR_ISN + 5)
    assert actions.acked == 3 and conn.fin_acked and not actions.closed
    actions = ack(guest, conn, OUR_ISN + 5, flags=FIN | ACK)
    assert actions.shutdown_write and actions.closed and not actions.forget
    assert guest.check(actions.frames[0]).ack == GUEST_ISN + 2
    assert conn.state is State.CLOSED
    # lingering: a retransmitted FIN is acknowledged, not reset
    seg, _ = guest.seg(GUEST_ISN + 1, OUR_ISN + 5, FIN | ACK, 1000)
    [again] = conn.on_guest_segment(seg, T0 + 1).frames
    assert guest.check(again).flags == ACK
    assert not conn.on_timer(T0 + 1).forget
    assert conn.on_timer(conn.next_deadline()).forget


def test_guest_fin_first_then_socket_eof() -> None:
    guest = Guest()
    conn = established(guest)
    actions = ack(guest, conn, OUR_ISN + 1, flags=FIN | ACK)
    assert actions.shutdown_write and not actions.closed
    assert guest.check(actions.frames[0]).ack == GUEST_ISN + 2
    conn.on_socket_data(memoryview(b"answer"), T0)               # half-closed: data still flows
    [fin] = conn.on_socket_eof(T0).frames
    assert guest.check(fin).flags == FIN | ACK
    actions = ack(guest, conn, OUR_ISN + 8)
    assert actions.closed and actions.acked == 6


def test_fin_behind_data_passed_on_only_if_all_data_taken() -> None:
    guest = Guest()
    conn = established(guest)
    actions = conn.on_guest_segment(data_seg(guest, conn, 0, b"e" * 10, ACK | FIN), T0)
    assert bytes(actions.to_socket) == b"e" * 10 and not actions.shutdown_write
    partial = conn.on_socket_accepted(4, FREE, SNDBUF, T0)
    assert not partial.shutdown_write and guest.check(partial.frames[0]).ack == GUEST_ISN + 5
    actions = conn.on_guest_segment(data_seg(guest, conn, 0, b"e" * 10, ACK | FIN), T0)
    assert bytes(actions.to_socket) == b"e" * 6
    whole = conn.on_socket_accepted(6, FREE, SNDBUF, T0)
    assert whole.shutdown_write and guest.check(whole.frames[0]).ack == GUEST_ISN + 12


def only_frames_and_deadline(actions: tcp.Actions) -> bool:
    """Nothing in ``actions`` but frames and the timer's deadline."""
    return actions == tcp.Actions(frames=actions.frames, deadline=actions.deadline)


def test_socket_inputs_without_fin_answer_with_frames_only() -> None:
    """The I/O layer sends these answers' frames without looking at the
    rest: what a write took (no FIN behind it) and bytes peeked hold
    nothing else."""
    guest = Guest()
    conn = established(guest)
    conn.on_guest_segment(data_seg(guest, conn, 0, b"r" * 10), T0)
    taken = conn.on_socket_accepted(10, FREE, SNDBUF, T0)
    assert len(taken.frames) == 1 and only_frames_and_deadline(taken)
    conn.on_guest_segment(data_seg(guest, conn, 10, b"r" * 10), T0)
    refused = conn.on_socket_accepted(3, 0, SNDBUF, T0)
    assert conn.socket_full and only_frames_and_deadline(refused)
    for size in (1, 1460, 5000):
        peeked = conn.on_socket_data(memoryview(bytes(size)), T0)
        assert peeked.frames and only_frames_and_deadline(peeked)


def test_fin_waits_for_window_and_is_retransmitted() -> None:
    guest = Guest()
    conn = established(guest, window_field=1)                 # 128 bytes
    conn.on_socket_data(memoryview(bytes(128)), T0)
    assert conn.on_socket_eof(T0).frames == []                 # the window is full
    actions = ack(guest, conn, OUR_ISN + 129, window_field=1)
    [frame] = actions.frames
    assert guest.check(frame).flags == FIN | ACK
    actions = conn.on_timer(conn.next_deadline())              # the FIN is lost
    assert actions.retransmit
    assert guest.check(actions.frames[0]).flags == FIN | ACK


def test_guest_reset_in_window_closes_with_reset() -> None:
    guest = Guest()
    conn = established(guest)
    seg, _ = guest.seg(GUEST_ISN + 1 + (1 << 30), 0, RST)
    assert not conn.on_guest_segment(seg, T0).reset            # blind: ignored
    seg, _ = guest.seg(GUEST_ISN + 1, 0, RST)
    actions = conn.on_guest_segment(seg, T0)
    assert actions.reset and actions.forget and conn.state is State.CLOSED


def test_socket_error_resets_guest() -> None:
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(bytes(10)), T0)
    actions = conn.on_socket_error(T0)
    rst = guest.check(actions.frames[0])
    assert (rst.flags, rst.seq, rst.ack) == (RST | ACK, OUR_ISN + 11, GUEST_ISN + 1)
    assert actions.forget
    again = conn.on_socket_error(T0)
    assert again.frames == [] and again.forget


def test_syn_on_established_flow_gets_challenge_ack() -> None:
    guest = Guest()
    conn = established(guest)
    seg, _ = guest.seg(555, 0, SYN)
    [frame] = conn.on_guest_segment(seg, T0).frames
    reply = guest.check(frame)
    assert (reply.flags, reply.ack) == (ACK, GUEST_ISN + 1)


# -- no flow, ISNs ----------------------------------------------------------------------
@pytest.mark.parametrize("v6", [False, True])
def test_reset_for_unknown_flows(v6: bool) -> None:
    guest = Guest(v6)
    seg, inb = guest.seg(300, 400, ACK, payload=b"xyz")
    rst = guest.check(tcp_wire.rst_for_unknown(seg, inb, NET.our_mac))
    assert (rst.flags, rst.seq, rst.ack) == (RST, 400, 0)
    seg, inb = guest.seg(300, 0, SYN)
    rst = guest.check(tcp_wire.rst_for_unknown(seg, inb, NET.our_mac))
    assert (rst.flags, rst.seq, rst.ack) == (RST | ACK, 0, 301)
    seg, inb = guest.seg(300, 0, RST)
    assert tcp_wire.rst_for_unknown(seg, inb, NET.our_mac) is None


def test_isn_keyed_by_tuple_and_clocked_at_4_microseconds() -> None:
    secret = bytes(range(16))
    base = tcp.isn_for(secret, PEER4, 80, GUEST4, 40000, 10.0)
    assert tcp.isn_for(secret, PEER4, 80, GUEST4, 40000, 10.0) == base
    assert tcp.isn_for(secret, PEER4, 80, GUEST4, 40000, 11.0) == (base + 250_000) & tcp_wire.MASK
    assert tcp.isn_for(secret, PEER4, 80, GUEST4, 40001, 10.0) != base
    assert tcp.isn_for(bytes(16), PEER4, 80, GUEST4, 40000, 10.0) != base


@pytest.mark.parametrize("v6", [False, True])
def test_whole_exchange_over_ipv6_and_ipv4(v6: bool) -> None:
    """Handshake, data both ways, FINs: every frame verified."""
    guest = Guest(v6)
    conn = established(guest)
    actions = conn.on_guest_segment(data_seg(guest, conn, 0, b"GET /\r\n"), T0)
    guest.check(conn.on_socket_accepted(len(actions.to_socket), FREE, SNDBUF, T0).frames[0])
    frames = conn.on_socket_data(memoryview(b"200 OK"), T0).frames
    assert bytes(guest.check(frames[0]).payload) == b"200 OK"
    guest.check(conn.on_socket_eof(T0).frames[0])
    seg, _ = guest.seg(GUEST_ISN + 8, OUR_ISN + 8, FIN | ACK, 1000)
    actions = conn.on_guest_segment(seg, T0)
    assert actions.acked == 6 and actions.shutdown_write and actions.closed


def test_tso_frames_hold_whole_segments_with_partial_checksums() -> None:
    """With a link that segments and completes checksums (pasta's tap),
    data goes out in frames of whole MTU-sized segments up to what an IP
    packet holds, each carrying only the pseudo-header's sum."""
    guest = Guest(net=dataclasses.replace(NET, mtu=1500))
    conn = established(guest, window_field=0xFFFF)
    conn.tso = True
    mss = conn.snd_mss
    assert mss == conn.mtu_mss
    data = bytes(range(256)) * 1024                       # 256 KiB
    frames = conn.on_socket_data(memoryview(data), T0).frames
    sizes = [len(f) - 54 for f in frames]
    step = tcp.TSO_MAX_PAYLOAD // mss * mss
    assert sizes[:-1] == [step] * (len(sizes) - 1) and sum(sizes) == min(len(data),
                                                                          0xFFFF << 7)
    l4 = bytearray(frames[0][34:])
    pseudo = PEER4 + GUEST4 + struct.pack("!BBH", 0, 6, len(l4))
    assert struct.unpack_from("!H", l4, 16)[0] == reference_checksum(pseudo) ^ 0xFFFF
    # completed as the kernel does (sum from the TCP header on, field
    # included), the checksum verifies against the pseudo-header
    struct.pack_into("!H", l4, 16, reference_checksum(bytes(l4)))
    assert reference_checksum(pseudo + bytes(l4)) == 0


def test_tso_acks_and_resets_carry_partial_checksums() -> None:
    """On a link that completes checksums every frame carries only the
    pseudo-header's sum: a bare ACK, and the reset for an unknown flow."""
    guest = Guest()
    seg, inb = guest.seg(GUEST_ISN, 0, SYN, 64240, options=LINUX_SYN_OPTIONS)
    conn = TcpConn.from_guest_syn(seg, inb, guest.net, OUR_ISN, T0, tso=True)
    ack = bytes(conn.on_connected(FREE, SNDBUF, T0).frames[0])[34:]
    rst = bytes(tcp_wire.rst_for_unknown(*guest.seg(5, 7, ACK), NET.our_mac, partial=True))[34:]
    for l4 in (ack, rst):
        pseudo = PEER4 + GUEST4 + struct.pack("!BBH", 0, 6, len(l4))
        assert struct.unpack_from("!H", l4, 16)[0] == reference_checksum(pseudo) ^ 0xFFFF


def test_no_tso_when_the_guest_mss_is_below_the_mtu() -> None:
    guest = Guest(net=dataclasses.replace(NET, mtu=1500))
    conn = established(guest, options=struct.pack("!BBH", 2, 4, 1000) + b"\x01\x03\x03\x07",
                       window_field=0xFFFF)
    conn.tso = True
    frames = conn.on_socket_data(memoryview(bytes(5000)), T0).frames
    assert [len(f) - 54 for f in frames] == [1000] * 5


def test_every_input_answers_with_actions_and_the_timer() -> None:
    """One output shape: each input returns Actions, and its deadline is
    when the connection wants ``on_timer`` next; for guest data, whose
    input ends with the write's answer, that answer has it."""
    guest = Guest()
    conn = outbound_conn(guest)
    handshake, _ = guest.seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000)
    inputs = [
        lambda: conn.on_connected(FREE, SNDBUF, T0),               # SYN-ACK retry at 1 s
        lambda: conn.on_guest_segment(handshake, T0),              # only the inactivity limit
        lambda: conn.on_socket_data(memoryview(b"abc"), T0 + 1),   # retransmission at 1 s
        lambda: conn.on_guest_segment(data_seg(guest, conn, 0, b"q"), T0 + 1),
        lambda: conn.on_socket_accepted(1, 80, SNDBUF, T0 + 1),
        lambda: conn.on_socket_writable(FREE, SNDBUF),
        lambda: conn.on_socket_eof(T0 + 1),
        lambda: conn.on_timer(T0 + 2),                             # backed off to 2 s
    ]
    deadlines = []
    for call in inputs:
        actions = call()
        assert isinstance(actions, tcp.Actions)
        assert actions.deadline == (None if actions.to_socket else conn.next_deadline())
        deadlines.append(actions.deadline)
    assert deadlines == [T0 + 1, T0 + tcp.INACTIVITY, T0 + 2, None] + [T0 + 2] * 3 + [T0 + 4]
    assert conn.on_socket_error(T0 + 3).forget


def test_one_actions_per_connection_emptied_for_each_input() -> None:
    """The hot path allocates no answer: every input returns the
    connection's own Actions, emptied of what the input before set; what
    a short write took and bytes peeked return a second one, which holds
    only frames and a deadline."""
    guest = Guest()
    conn = established(guest)
    answer = conn.on_guest_segment(data_seg(guest, conn, 0, b"abc"), T0)
    assert bytes(answer.to_socket) == b"abc"
    assert conn.on_socket_accepted(3, FREE, FREE, T0) is answer
    assert answer.to_socket is None and len(answer.frames) == 1
    quick = conn.on_socket_data(memoryview(b"xyz"), T0)
    assert quick is not answer and len(quick.frames) == 1 and only_frames_and_deadline(quick)
    assert ack(guest, conn, OUR_ISN + 4) is answer
    assert answer == tcp.Actions(acked=3, send_more=True, deadline=T0 + tcp.INACTIVITY)
    conn.on_guest_segment(data_seg(guest, conn, 3, b"d"), T0)
    assert conn.on_socket_took(1, T0) is quick and quick.frames == []       # owed
    assert only_frames_and_deadline(quick) and quick.deadline == conn.next_deadline()
    assert conn.on_socket_data(memoryview(b"z"), T0) is quick and len(quick.frames) == 1


@given(seq_offset=st.sampled_from([0, 0, 0, 1, -1, 5]), advance=st.integers(0, 12),
       flags=st.sampled_from([ACK, ACK | PSH, ACK | PSH, ACK | FIN, ACK | URG, RST | ACK]),
       window_field=st.sampled_from([1000, 1000, 999, 0]), size=st.sampled_from([0, 1, 3]),
       eof=st.booleans())
def test_header_prediction_decides_as_the_general_path(seq_offset: int, advance: int,
                                                       flags: int, window_field: int,
                                                       size: int, eof: bool) -> None:
    """The predicted path (or its refusal) leaves the flow and the actions
    exactly as the general path for an established flow would."""
    guest = Guest()
    conn = established(guest)
    conn.on_socket_data(memoryview(b"0123456789"), T0)
    if eof:
        conn.on_socket_eof(T0)
    seg, _ = guest.seg(conn.rcv_nxt + seq_offset, OUR_ISN + 1 + advance, flags, window_field,
                       b"x" * size)
    general = copy.copy(conn)
    expected = tcp.Actions()
    general.last_activity = T0 + 1
    general._seg_established(seg, expected, T0 + 1)
    if expected.to_socket is None:
        expected.deadline = general.next_deadline()
    assert conn.on_guest_segment(seg, T0 + 1) == expected
    assert all(getattr(conn, name) == getattr(general, name) for name in TcpConn.__slots__
               if name not in ("actions", "quick"))     # the answers, shared by the copy
