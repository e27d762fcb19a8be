"""The vhost-user control protocol on bytes: framing, feature negotiation,
the memory table and the rings' life, malformed messages; and guest memory
mapped from a real memfd as QEMU sends it."""

from __future__ import annotations

import mmap
import os
import struct

import pytest

from passt_sep import vhost_user as vu
from passt_sep.virtqueue import GuestMemory, Region
from passt_sep.worker.vhost_io import Mapping

UVA, GPA, SIZE = 0x7F0000000000, 0x0, 1 << 20


def message(request: int, payload: bytes = b"", flags: int = vu.VERSION,
            fds: list[int] | None = None) -> vu.Message:
    return vu.Message(request, flags, payload, fds or [])


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def state(index: int, num: int) -> bytes:
    return struct.pack("<II", index, num)


def decode_reply(data: bytes) -> tuple[int, int, bytes]:
    request, flags, size = vu.HEADER.unpack_from(data)
    assert len(data) == vu.HEADER.size + size
    return request, flags, data[vu.HEADER.size:]


def eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def close_effects(effects: vu.Effects) -> None:
    for fd in effects.close:
        os.close(fd)


# -- framing -------------------------------------------------------------------------
def test_decoder_asks_for_the_header_then_the_payload_and_keeps_the_fds() -> None:
    decoder = vu.MessageDecoder()
    wire = vu.HEADER.pack(vu.SET_VRING_KICK, vu.VERSION, 8) + u64(1)
    assert decoder.wanted() == 12
    assert decoder.feed(wire[:5], [7]) is None
    assert decoder.wanted() == 7
    assert decoder.feed(wire[5:12], []) is None
    assert decoder.wanted() == 8
    got = decoder.feed(wire[12:], [])
    assert got == vu.Message(vu.SET_VRING_KICK, vu.VERSION, u64(1), [7])
    assert decoder.wanted() == 12 and decoder.fds == []


def test_decoder_takes_an_empty_payload() -> None:
    decoder = vu.MessageDecoder()
    got = decoder.feed(vu.HEADER.pack(vu.SET_OWNER, vu.VERSION, 0), [])
    assert got is not None and got.request == vu.SET_OWNER and got.payload == b""


@pytest.mark.parametrize("flags, size, error", [
    (0, 0, "version 0"), (2, 0, "version 2"), (vu.VERSION, vu.MAX_PAYLOAD + 1, "payload"),
    (vu.VERSION, 0xFFFFFFFF, "payload"),
])
def test_decoder_refuses_a_bad_header(flags: int, size: int, error: str) -> None:
    with pytest.raises(vu.ProtocolError, match=error):
        vu.MessageDecoder().feed(vu.HEADER.pack(1, flags, size), [])


# -- negotiation -----------------------------------------------------------------------
def test_features_offered_and_acknowledged() -> None:
    backend = vu.Backend(lambda name: None)
    request, flags, payload = decode_reply(backend.handle(message(vu.GET_FEATURES)).reply)
    assert request == vu.GET_FEATURES and flags == vu.VERSION | vu.FLAG_REPLY
    (offered,) = struct.unpack("<Q", payload)
    for bit in (vu.F_VERSION_1, vu.F_MRG_RXBUF, vu.F_PROTOCOL_FEATURES, vu.F_EVENT_IDX,
                vu.F_INDIRECT_DESC):
        assert offered >> bit & 1
    assert not offered >> 26 & 1                  # no dirty log: no migration
    backend.handle(message(vu.SET_PROTOCOL_FEATURES, u64(0xFFFFFFFF)))
    assert backend.protocol_features == vu.OFFERED_PROTOCOL
    effects = backend.handle(message(vu.SET_FEATURES, u64(offered),
                                     vu.VERSION | vu.FLAG_NEED_REPLY))
    assert effects.ok and effects.need_ack
    assert backend.header_len == 12 and backend.offload
    assert vu.ack(vu.SET_FEATURES, True) == vu.HEADER.pack(2, 5, 8) + u64(0)


def test_features_not_offered_are_refused() -> None:
    backend = vu.Backend(lambda name: None)
    backend.handle(message(vu.SET_PROTOCOL_FEATURES, u64(vu.OFFERED_PROTOCOL)))
    effects = backend.handle(message(vu.SET_FEATURES, u64(1 << 26),
                                     vu.VERSION | vu.FLAG_NEED_REPLY))
    assert not effects.ok and effects.need_ack and "not offered" in effects.error
    assert backend.features == 0


def test_without_reply_ack_no_acknowledgement_is_sent() -> None:
    backend = vu.Backend(lambda name: None)
    effects = backend.handle(message(vu.SET_OWNER, flags=vu.VERSION | vu.FLAG_NEED_REPLY))
    assert not effects.need_ack and effects.reply is None


def test_an_unknown_request_fails_and_its_fds_are_closed() -> None:
    backend = vu.Backend(lambda name: None)
    fd = eventfd()
    effects = backend.handle(message(99, b"x", fds=[fd]))
    assert not effects.ok and "unsupported" in effects.error and effects.close == [fd]
    close_effects(effects)


@pytest.mark.parametrize("request_, payload", [
    (vu.SET_FEATURES, b"\x01"), (vu.SET_VRING_NUM, b""), (vu.SET_VRING_ADDR, bytes(8)),
    (vu.SET_VRING_NUM, state(2, 256)), (vu.SET_VRING_NUM, state(0, 300)),
    (vu.SET_VRING_NUM, state(0, 0)), (vu.GET_VRING_BASE, state(7, 0)),
    (vu.SET_MEM_TABLE, bytes(3)),
])
def test_malformed_requests_fail_without_raising(request_: int, payload: bytes) -> None:
    effects = vu.Backend(lambda name: None).handle(message(request_, payload))
    assert not effects.ok and effects.error


# -- memory and rings ------------------------------------------------------------------
def mem_table(regions: list[tuple[int, int, int, int]]) -> bytes:
    return struct.pack("<II", len(regions), 0) + b"".join(
        struct.pack("<QQQQ", *region) for region in regions)


def test_memory_table_regions_come_with_their_descriptors() -> None:
    backend = vu.Backend(lambda name: None)
    fds = [eventfd(), eventfd()]
    effects = backend.handle(message(vu.SET_MEM_TABLE, mem_table(
        [(0, 0xA0000, UVA, 0), (0xC0000, 0x100000, UVA + 0xC0000, 0xC0000)]), fds=fds))
    assert effects.ok and effects.close == []
    assert effects.memory == [vu.RegionSpec(0, 0xA0000, UVA, 0, fds[0]),
                              vu.RegionSpec(0xC0000, 0x100000, UVA + 0xC0000, 0xC0000, fds[1])]
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("regions, nfds", [
    ([(0, 4096, UVA, 0)], 0), ([(0, 4096, UVA, 0)], 2), ([(0, 0, UVA, 0)], 1),
    ([(1 << 63, (1 << 63) + 4096, UVA, 0)], 1), ([(0, 4096, (1 << 64) - 100, 0)], 1),
    ([(0, 4096, UVA, (1 << 64) - 1)], 1), ([(0, 4096, UVA, 0)] * 9, 9),
])
def test_a_bad_memory_table_maps_nothing_and_closes_every_fd(regions, nfds: int) -> None:
    fds = [eventfd() for _ in range(nfds)]
    effects = vu.Backend(lambda name: None).handle(
        message(vu.SET_MEM_TABLE, mem_table(regions), fds=fds))
    assert not effects.ok and effects.memory is None and sorted(effects.close) == sorted(fds)
    close_effects(effects)


def set_up_ring(backend: vu.Backend, index: int, kick: int) -> vu.Effects:
    backend.handle(message(vu.SET_VRING_NUM, state(index, 8)))
    backend.handle(message(vu.SET_VRING_BASE, state(index, 5)))
    backend.handle(message(vu.SET_VRING_ADDR, struct.pack(
        "<IIQQQQ", index, 0, UVA + 0x1000 * (1 + 3 * index), UVA + 0x1000 * (3 + 3 * index),
        UVA + 0x1000 * (2 + 3 * index), 0)))
    return backend.handle(message(vu.SET_VRING_KICK, u64(index), fds=[kick]))


def test_a_ring_starts_with_its_kick_and_stops_at_get_vring_base() -> None:
    area = mmap.mmap(-1, SIZE)
    backend = vu.Backend(lambda name: None)
    backend.handle(message(vu.SET_PROTOCOL_FEATURES, u64(vu.OFFERED_PROTOCOL)))
    backend.handle(message(vu.SET_FEATURES, u64(vu.OFFERED)))
    assert backend.set_memory(GuestMemory([Region(GPA, UVA, SIZE, memoryview(area))])) == []
    kick, call = eventfd(), eventfd()
    effects = set_up_ring(backend, vu.RX, kick)
    assert effects.ok and effects.close == [] and not effects.error
    queue = backend.queue(vu.RX)
    assert queue is not None and queue.last_avail == 5 and queue.event_idx
    assert not backend.rings[vu.RX].enabled            # until SET_VRING_ENABLE
    backend.handle(message(vu.SET_VRING_ENABLE, state(vu.RX, 1)))
    assert backend.rings[vu.RX].enabled
    backend.handle(message(vu.SET_VRING_CALL, u64(vu.RX), fds=[call]))
    assert backend.fds() == [kick, call]
    queue.last_avail = 9
    effects = backend.handle(message(vu.GET_VRING_BASE, state(vu.RX, 0)))
    assert decode_reply(effects.reply)[2] == state(vu.RX, 9)
    assert effects.close == [kick] and backend.queue(vu.RX) is None
    os.close(kick)
    effects = backend.handle(message(vu.RESET_DEVICE))
    assert effects.close == [call] and backend.features == 0
    close_effects(effects)


def test_a_ring_outside_guest_memory_does_not_start() -> None:
    area = mmap.mmap(-1, 4096)
    backend = vu.Backend(lambda name: None)
    backend.set_memory(GuestMemory([Region(GPA, UVA, 4096, memoryview(area))]))
    kick = eventfd()
    effects = set_up_ring(backend, vu.TX, kick)
    assert "outside guest memory" in effects.error and backend.queue(vu.TX) is None
    os.close(kick)


def test_a_kick_for_a_missing_ring_or_without_its_fd_fails_and_closes() -> None:
    backend = vu.Backend(lambda name: None)
    fd = eventfd()
    effects = backend.handle(message(vu.SET_VRING_KICK, u64(5), fds=[fd]))
    assert not effects.ok and effects.close == [fd]
    effects = backend.handle(message(vu.SET_VRING_CALL, u64(0), fds=[]))
    assert not effects.ok
    close_effects(vu.Effects(close=[fd]))


def test_without_protocol_features_rings_start_enabled() -> None:
    backend = vu.Backend(lambda name: None)
    backend.handle(message(vu.SET_FEATURES, u64(1 << vu.F_VERSION_1)))
    assert all(ring.enabled for ring in backend.rings) and not backend.offload


# -- mapping a memfd, as QEMU shares guest RAM -------------------------------------------
def memfd(size: int) -> int:
    fd = os.memfd_create("guest", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def test_a_region_maps_shared_at_its_offset() -> None:
    fd = memfd(3 * mmap.PAGESIZE)
    os.pwrite(fd, b"guest RAM", mmap.PAGESIZE + 100)
    mapping = Mapping(vu.RegionSpec(0x1000, 2 * mmap.PAGESIZE, UVA, mmap.PAGESIZE, fd))
    view = mapping.region.view
    assert bytes(view[100:109]) == b"guest RAM"
    view[0:5] = b"hello"
    assert os.pread(fd, 5, mmap.PAGESIZE) == b"hello"
    assert len(view) == 2 * mmap.PAGESIZE
    del view
    assert mapping.unmap()
    os.close(fd)


def test_a_region_beyond_the_file_is_refused() -> None:
    fd = memfd(mmap.PAGESIZE)
    with pytest.raises(OSError, match="beyond"):
        Mapping(vu.RegionSpec(0, 2 * mmap.PAGESIZE, UVA, 0, fd))
    os.close(fd)


def test_a_region_with_a_live_view_is_not_unmapped() -> None:
    fd = memfd(mmap.PAGESIZE)
    mapping = Mapping(vu.RegionSpec(0, mmap.PAGESIZE, UVA, 0, fd))
    kept = mapping.region.view[10:20]
    assert not mapping.unmap()
    kept[0] = 1                                    # still mapped: no fault
    assert os.pread(fd, 1, 10) == b"\x01"
    os.close(fd)
