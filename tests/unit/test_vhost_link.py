"""VhostUserLink's frames to the guest, on a receive ring in a memfd as
QEMU shares it (tests/vhost_guest.py): the virtio-net header each gets as
the front-end set the features, frames spanning buffers, and frames kept
until the guest posts buffers."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from vhost_guest import FEATURES, NUM, USED, LinkWithRing

from passt_sep import tap
from passt_sep import vhost_user as vu
from passt_sep.packet import ETH_HLEN, IPV4_HLEN, IPV6_HLEN
from passt_sep.tcp_wire import ACK, PSH, FrameTemplate

V4 = (b"\xc0\x00\x02\x01", b"\xc0\x00\x02\x02")
V6 = (bytes(15) + b"\x01", bytes(15) + b"\x02")


def tcp_frame(payload: bytes, v6: bool = False) -> bytes:
    src, dst = V6 if v6 else V4
    template = FrameTemplate(b"\x02" * 6, b"\x04" * 6, src, dst, 80, 40000, partial=True)
    return bytes(template.segment(1, 2, ACK | PSH, 1000, payload))


@pytest.fixture
def rig() -> Iterator[LinkWithRing]:
    built = LinkWithRing(4096)
    yield built
    built.close()


def header(flags: int, l4: int, num_buffers: int) -> bytes:
    return struct.pack("<BBHHHHH", flags, 0, 0, 0, l4, tap.TCP_CHECKSUM_OFFSET, num_buffers)


@pytest.mark.parametrize("v6", [False, True])
def test_a_tcp_frame_gets_the_partial_checksum_header(rig: LinkWithRing, v6: bool) -> None:
    frame = tcp_frame(b"data", v6)
    rig.link.send_tcp(frame)
    [(head, length)] = rig.guest.used()
    l4 = ETH_HLEN + (IPV6_HLEN if v6 else IPV4_HLEN)
    assert rig.guest.received(head, length) == header(tap.VNET_NEEDS_CSUM, l4, 1) + frame


def test_a_frame_over_buffers_says_how_many(rig: LinkWithRing) -> None:
    frame = tcp_frame(bytes(range(256)) * 40)         # 10294 bytes: three buffers
    rig.link.send_tcp(frame)
    used = rig.guest.used()
    assert [length for _, length in used] == [4096, 4096, vu.HDR_LEN + len(frame) - 8192]
    got = b"".join(rig.guest.received(head, length) for head, length in used)
    assert got == header(tap.VNET_NEEDS_CSUM, ETH_HLEN + IPV4_HLEN, 3) + frame


def test_beyond_the_mtu_the_guest_segments() -> None:
    rig = LinkWithRing(4096, mtu=1500)
    frame = tcp_frame(bytes(6000))
    rig.link.send_tcp(frame)
    used = rig.guest.used()
    first = rig.guest.received(*used[0])
    flags, gso, hdr_len, gso_size, _, _, buffers = struct.unpack_from("<BBHHHHH", first)
    assert (flags, gso, buffers) == (tap.VNET_NEEDS_CSUM, tap.VNET_GSO_TCPV4, len(used))
    assert (hdr_len, gso_size) == (ETH_HLEN + 40, 1460)
    rig.close()


def test_without_offloads_the_header_is_zero() -> None:
    rig = LinkWithRing(4096, FEATURES & ~(1 << vu.F_GUEST_TSO4))
    frame = tcp_frame(b"data")
    rig.link.send_tcp(frame)
    rig.link.send(frame)
    frames = [rig.guest.received(*used) for used in rig.guest.used()]
    assert frames == [bytes(10) + b"\x01\x00" + frame] * 2
    rig.close()


def test_a_legacy_header_without_mergeable_buffers() -> None:
    rig = LinkWithRing(4096, FEATURES & ~(1 << vu.F_MRG_RXBUF | 1 << vu.F_VERSION_1))
    frame = tcp_frame(b"data")
    rig.link.send_tcp(frame)
    [used] = rig.guest.used()
    assert rig.guest.received(*used) == header(tap.VNET_NEEDS_CSUM, 34, 0)[:10] + frame
    rig.close()


def test_frames_wait_for_buffers_in_order(rig: LinkWithRing) -> None:
    big = tcp_frame(bytes(60000))                     # 15 buffers each
    sent = [tcp_frame(bytes([n]) * 100) if n % 2 else big for n in range(40)]
    for frame in sent:
        rig.link.send_tcp(frame)
    assert rig.link.pending
    got: list[bytes] = []
    while len(got) < len(sent):
        used = rig.guest.used()                       # read, posted again, then a kick
        assert used
        pieces = [rig.guest.received(*one) for one in used]
        rig.link._flush_pending()
        while pieces:
            count = struct.unpack_from("<H", pieces[0], 10)[0]
            got.append(b"".join(p[vu.HDR_LEN if i == 0 else 0:]
                                for i, p in enumerate(pieces[:count])))
            del pieces[:count]
    assert got == sent and not rig.link.pending


def test_a_peeks_frames_together_wait_in_order_too(rig: LinkWithRing) -> None:
    """send_tcp_frames: what fits goes at once, in one publish; the rest
    waits behind it for buffers, as frame by frame."""
    sent = [tcp_frame(bytes([n % 256]) * 1400) for n in range(NUM + 5)]
    rig.link.send_tcp_frames(sent[:3])
    rig.link.send_tcp_frames(sent[3:])
    assert len(rig.link.pending) == 5
    got: list[bytes] = []
    while len(got) < len(sent):
        used = rig.guest.used()
        assert used
        got += [rig.guest.received(*one)[vu.HDR_LEN:] for one in used]
        rig.link._flush_pending()
    assert got == sent and not rig.link.pending


def test_frames_from_the_guest_arrive_without_their_header(rig: LinkWithRing) -> None:
    got: list[bytes] = []
    rig.link.on_frame = lambda frame, now: got.append(bytes(frame))
    sent = [tcp_frame(bytes([n]) * n) for n in range(1, 40)]
    for index, frame in enumerate(sent):
        rig.sender.send(index, bytes(vu.HDR_LEN) + frame)
    rig.link._transmitted(0.0)
    assert got == sent
    assert [head for head, _ in rig.sender.used(again=False)] == list(range(len(sent)))


def test_too_few_buffers_for_the_next_frame_wait_for_a_kick(rig: LinkWithRing) -> None:
    """A frame over 15 buffers, fewer posted: the link waits for the
    guest's kick (the event index past them), it does not spin on them."""
    queue = rig.link.rx
    assert queue is not None
    looks = 0
    real = queue.want_kicks

    def counted() -> bool:
        nonlocal looks
        looks += 1
        assert looks < 100, "spinning on buffers that are not enough"
        return real()

    queue.want_kicks = counted                        # type: ignore[method-assign]
    big = tcp_frame(bytes(60000))
    while not rig.link.pending:                       # 17 frames, then 1 buffer left
        rig.link.send_tcp(big)
    for head, _ in rig.guest.used(again=False)[:8]:
        rig.guest.offer(head)
    rig.link._flush_pending()
    assert rig.link.pending and looks == 2
    event = struct.unpack_from("<H", rig.guest.view, USED + 4 + 8 * NUM)   # avail_event
    assert event == (rig.guest.avail_idx,)            # a kick on the next buffer posted
