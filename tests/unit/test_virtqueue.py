"""Split virtqueues on hand-built rings in an anonymous shared mapping,
well-formed and hostile: every bad chain is given back or skipped and
counted, never raised."""

from __future__ import annotations

import collections
import mmap
import struct

import pytest

from passt_sep.virtqueue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    GuestMemory,
    QueueError,
    Region,
    Virtqueue,
    chain_bytes,
    deliver,
    deliver_many,
    need_event,
)

GPA, UVA, SIZE = 0x100000, 0x7F0000000000, 1 << 20
NUM = 8
DESC, AVAIL, USED = 0x0, 0x1000, 0x2000          # offsets in the region
DATA = 0x10000                                   # buffers from here on


class Rings:
    """A guest driver's side of one queue, written by hand."""

    def __init__(self, event_idx: bool = False, num: int = NUM) -> None:
        self.map = mmap.mmap(-1, SIZE)
        self.view = memoryview(self.map)
        self.memory = GuestMemory([Region(GPA, UVA, SIZE, self.view)])
        self.num = num
        self.counts: collections.Counter[str] = collections.Counter()
        self.avail_idx = 0
        self.queue = Virtqueue(self.memory, num, UVA + DESC, UVA + AVAIL, UVA + USED, 0,
                               event_idx, self.count)

    def count(self, name: str) -> None:
        self.counts[name] += 1

    def desc(self, index: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
             table: int = DESC) -> None:
        struct.pack_into("<QIHH", self.view, table + 16 * index, addr, length, flags, nxt)

    def offer(self, head: int) -> None:
        struct.pack_into("<H", self.view, AVAIL + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.view, AVAIL + 2, self.avail_idx)

    def used(self) -> tuple[int, list[tuple[int, int]]]:
        (idx,) = struct.unpack_from("<H", self.view, USED + 2)
        return idx, [struct.unpack_from("<II", self.view, USED + 4 + 8 * i) for i in range(idx)]

    def put(self, offset: int, data: bytes) -> int:
        self.view[offset:offset + len(data)] = data
        return GPA + offset


def test_a_chain_of_readable_then_writable_parts() -> None:
    rings = Rings()
    rings.desc(0, rings.put(DATA, b"hello "), 6, DESC_F_NEXT, 3)
    rings.desc(3, rings.put(DATA + 100, b"world"), 5, DESC_F_NEXT, 5)
    rings.desc(5, GPA + DATA + 200, 64, DESC_F_WRITE)
    rings.offer(0)
    chain = rings.queue.pop()
    assert chain is not None and not chain.bad and chain.head == 0
    buffer = bytearray(100)
    assert chain_bytes(chain.readable, buffer) == 11 and buffer[:11] == b"hello world"
    assert [len(p) for p in chain.writable] == [64]
    assert rings.queue.pop() is None
    rings.queue.push(0, 7)
    assert rings.used() == (0, [])                 # not published yet
    rings.queue.publish()
    assert rings.used() == (1, [(0, 7)])


def test_an_indirect_table() -> None:
    rings = Rings()
    table = DATA + 0x1000
    rings.desc(0, rings.put(DATA, b"abc"), 3, DESC_F_NEXT, 1, table=table)
    rings.desc(1, rings.put(DATA + 64, b"def"), 3, table=table)
    rings.desc(2, GPA + table, 32, DESC_F_INDIRECT)
    rings.offer(2)
    chain = rings.queue.pop()
    assert chain is not None and not chain.bad
    assert b"".join(bytes(p) for p in chain.readable) == b"abcdef"


@pytest.mark.parametrize("build, counter", [
    # a loop in the descriptor table
    (lambda r: (r.desc(0, GPA + DATA, 10, DESC_F_NEXT, 1), r.desc(1, GPA + DATA, 10,
                                                                  DESC_F_NEXT, 0)),
     "vhost_desc_loop"),
    # a descriptor pointing to itself
    (lambda r: r.desc(0, GPA + DATA, 10, DESC_F_NEXT, 0), "vhost_desc_loop"),
    # below, beyond and straddling the end of guest memory
    (lambda r: r.desc(0, GPA - 16, 10), "vhost_bad_address"),
    (lambda r: r.desc(0, GPA + SIZE, 1), "vhost_bad_address"),
    (lambda r: r.desc(0, GPA + SIZE - 8, 16), "vhost_bad_address"),
    (lambda r: r.desc(0, (1 << 64) - 8, 16), "vhost_bad_address"),
    # a huge length
    (lambda r: r.desc(0, GPA + DATA, 0xFFFFFFFF), "vhost_bad_address"),
    # next beyond the table
    (lambda r: r.desc(0, GPA + DATA, 10, DESC_F_NEXT, NUM), "vhost_bad_next"),
    # readable after writable
    (lambda r: (r.desc(0, GPA + DATA, 10, DESC_F_WRITE | DESC_F_NEXT, 1),
                r.desc(1, GPA + DATA, 10)), "vhost_bad_order"),
    # indirect tables: not a multiple of 16, empty, huge, out of memory
    (lambda r: r.desc(0, GPA + DATA, 24, DESC_F_INDIRECT), "vhost_bad_indirect"),
    (lambda r: r.desc(0, GPA + DATA, 0, DESC_F_INDIRECT), "vhost_bad_indirect"),
    (lambda r: r.desc(0, GPA + DATA, 16 << 20, DESC_F_INDIRECT), "vhost_bad_indirect"),
    (lambda r: r.desc(0, GPA + SIZE, 32, DESC_F_INDIRECT), "vhost_bad_address"),
    # indirect with next, and an indirect table inside one
    (lambda r: r.desc(0, GPA + DATA, 32, DESC_F_INDIRECT | DESC_F_NEXT, 1),
     "vhost_bad_indirect"),
    (lambda r: (r.desc(0, GPA + DATA, 32, DESC_F_INDIRECT),
                r.desc(0, GPA + DATA, 32, DESC_F_INDIRECT, table=DATA)), "vhost_bad_indirect"),
    # a loop inside an indirect table
    (lambda r: (r.desc(0, GPA + DATA, 32, DESC_F_INDIRECT),
                r.desc(0, GPA + DATA + 0x100, 4, DESC_F_NEXT, 1, table=DATA),
                r.desc(1, GPA + DATA + 0x100, 4, DESC_F_NEXT, 0, table=DATA)),
     "vhost_desc_loop"),
])
def test_a_bad_chain_is_given_back_empty_and_counted(build, counter: str) -> None:
    rings = Rings()
    build(rings)
    rings.offer(0)
    chain = rings.queue.pop()
    assert chain is not None and chain.bad == counter
    assert chain.readable == [] and chain.writable == []
    assert rings.counts[counter] == 1
    assert rings.queue.pop() is None


def test_a_head_beyond_the_table_is_skipped() -> None:
    rings = Rings()
    rings.desc(1, rings.put(DATA, b"x"), 1)
    rings.offer(NUM + 3)
    rings.offer(1)
    chain = rings.queue.pop()
    assert chain is not None and chain.head == 1 and not chain.bad
    assert rings.counts["vhost_bad_head"] == 1


def test_an_index_that_jumps_breaks_the_queue() -> None:
    rings = Rings()
    rings.desc(0, rings.put(DATA, b"x"), 1)
    struct.pack_into("<H", rings.view, AVAIL + 2, NUM + 1)
    assert rings.queue.pop() is None
    assert rings.queue.broken and rings.counts["vhost_queue_broken"] == 1
    struct.pack_into("<H", rings.view, AVAIL + 2, 1)     # even once it looks sane again
    assert rings.queue.pop() is None


def test_indices_wrap_around() -> None:
    rings = Rings()
    rings.queue.last_avail = rings.avail_idx = 0xFFFF
    rings.desc(0, rings.put(DATA, b"x"), 1)
    rings.desc(1, rings.put(DATA, b"y"), 1)
    rings.offer(0)
    rings.offer(1)
    assert rings.queue.pending() == 2
    assert [rings.queue.pop().head, rings.queue.pop().head] == [0, 1]   # type: ignore[union-attr]


@pytest.mark.parametrize("num, desc, message", [
    (6, DESC, "power of 2"), (0, DESC, "power of 2"), (65536, DESC, "power of 2"),
    (NUM, DESC + 8, "misaligned"), (NUM, SIZE - 16, "outside"), (NUM, -0x1000, "outside"),
])
def test_a_queue_that_cannot_be_laid_out(num: int, desc: int, message: str) -> None:
    rings = Rings()
    with pytest.raises(QueueError, match=message):
        Virtqueue(rings.memory, num, UVA + desc, UVA + AVAIL, UVA + USED, 0, False, print)


def receive_buffers(rings: Rings, sizes: list[int]) -> None:
    for index, size in enumerate(sizes):
        rings.desc(index, GPA + DATA + index * 0x1000, size, DESC_F_WRITE)
        rings.offer(index)


def test_a_frame_spans_mergeable_buffers() -> None:
    rings = Rings()
    receive_buffers(rings, [100, 100, 100])
    header, frame = bytes(12), bytes(range(200))
    assert deliver(rings.queue, header, frame, mergeable=True) is True
    rings.queue.publish()
    assert rings.used() == (3, [(0, 100), (1, 100), (2, 12)])
    first = bytes(rings.view[DATA:DATA + 100])
    assert struct.unpack_from("<H", first, 10) == (3,)          # num_buffers
    got = first[12:] + bytes(rings.view[DATA + 0x1000:DATA + 0x1064])
    assert got + bytes(rings.view[DATA + 0x2000:DATA + 0x200c]) == frame


def test_a_frame_in_one_buffer_and_the_next_one_after_it() -> None:
    rings = Rings()
    receive_buffers(rings, [2048, 2048])
    header = bytes(range(12))
    assert deliver(rings.queue, header, b"first", mergeable=True) is True
    assert deliver(rings.queue, header, b"second", mergeable=False) is True
    rings.queue.publish()
    assert rings.used() == (2, [(0, 17), (1, 18)])
    assert bytes(rings.view[DATA:DATA + 17]) == header[:10] + b"\1\0first"
    assert bytes(rings.view[DATA + 0x1000:DATA + 0x1000 + 18]) == header + b"second"


@pytest.mark.parametrize("second", ["two descriptors", "indirect", "bad head"])
def test_a_chain_of_another_kind_starts_the_frame_anew(second: str) -> None:
    """A frame half written into plain buffers when another kind of chain
    comes: written again the general way, each bad chain counted once."""
    rings = Rings()
    receive_buffers(rings, [100])
    if second == "two descriptors":
        rings.desc(1, GPA + DATA + 0x1000, 50, DESC_F_WRITE | DESC_F_NEXT, 2)
        rings.desc(2, GPA + DATA + 0x2000, 100, DESC_F_WRITE)
        rings.offer(1)
    elif second == "indirect":
        table = DATA + 0x8000
        rings.desc(0, GPA + DATA + 0x1000, 50, DESC_F_WRITE | DESC_F_NEXT, 1, table=table)
        rings.desc(1, GPA + DATA + 0x2000, 100, DESC_F_WRITE, table=table)
        rings.desc(1, GPA + table, 32, DESC_F_INDIRECT)
        rings.offer(1)
    else:
        struct.pack_into("<H", rings.view, AVAIL + 4 + 2, NUM)      # head out of range
        rings.avail_idx = 2
        struct.pack_into("<H", rings.view, AVAIL + 2, 2)
        rings.desc(3, GPA + DATA + 0x1000, 150, DESC_F_WRITE)
        rings.offer(3)
    frame = bytes(range(200))
    assert deliver(rings.queue, bytes(12), frame, mergeable=True) is True
    rings.queue.publish()
    idx, elements = rings.used()
    if second == "bad head":
        assert rings.counts == {"vhost_bad_head": 1} and elements == [(0, 100), (3, 112)]
        got = bytes(rings.view[DATA + 12:DATA + 100]) + bytes(rings.view[DATA + 0x1000:
                                                                         DATA + 0x1070])
    else:
        assert not rings.counts and elements == [(0, 100), (1, 112)]
        got = (bytes(rings.view[DATA + 12:DATA + 100]) + bytes(rings.view[DATA + 0x1000:
                                                                          DATA + 0x1032])
               + bytes(rings.view[DATA + 0x2000:DATA + 0x203e]))
    assert got == frame and struct.unpack_from("<H", rings.view, DATA + 10) == (2,)


def lay_out(rings: Rings) -> None:
    """Plain buffers, two too small for a frame alone, an indirect chain
    and one of two descriptors among them."""
    receive_buffers(rings, [2048, 2048, 100, 100, 2048])
    table = DATA + 0x8000
    rings.desc(0, GPA + DATA + 0x5000, 20, DESC_F_WRITE | DESC_F_NEXT, 1, table=table)
    rings.desc(1, GPA + DATA + 0x6000, 100, DESC_F_WRITE, table=table)
    rings.desc(5, GPA + table, 32, DESC_F_INDIRECT)
    rings.offer(5)
    rings.desc(6, GPA + DATA + 0x7000, 30, DESC_F_WRITE | DESC_F_NEXT, 7)
    rings.desc(7, GPA + DATA + 0x7800, 2048, DESC_F_WRITE)
    rings.offer(6)


@pytest.mark.parametrize("mergeable", [True, False])
def test_deliver_many_writes_what_deliver_does_frame_by_frame(mergeable: bool) -> None:
    frames = [b"a" * 10, b"b" * 20, bytes(range(150)), b"c" * 50, b"d" * 90, b"e" * 200]
    header = bytes(range(12))
    one, many = Rings(), Rings()
    for rings in (one, many):
        lay_out(rings)
    for frame in frames:
        assert deliver(one.queue, header, frame, mergeable) is not False
    assert deliver_many(many.queue, header, frames, mergeable) == len(frames)
    for rings in (one, many):
        rings.queue.publish()
    assert many.used() == one.used() and many.counts == one.counts
    assert bytes(many.view[DATA:DATA + 0x9000]) == bytes(one.view[DATA:DATA + 0x9000])
    assert many.queue.last_avail == one.queue.last_avail


def test_deliver_many_stops_at_the_first_frame_without_room() -> None:
    rings = Rings()
    receive_buffers(rings, [2048, 2048])
    frames = [b"first", b"second", b"third"]
    assert deliver_many(rings.queue, bytes(12), frames, mergeable=True) == 2
    assert rings.queue.last_avail == 2
    rings.desc(2, GPA + DATA + 0x2000, 2048, DESC_F_WRITE)
    rings.offer(2)
    assert deliver_many(rings.queue, bytes(12), frames[2:], mergeable=True) == 1
    rings.queue.publish()
    assert rings.used() == (3, [(0, 17), (1, 18), (2, 17)])
    assert bytes(rings.view[DATA + 0x2000:DATA + 0x2011]) == bytes(10) + b"\1\0third"


def test_deliver_many_drops_a_frame_too_big_and_goes_on() -> None:
    rings = Rings()
    receive_buffers(rings, [100, 100])
    frames = [bytes(50), bytes(200), b"x" * 60]
    assert deliver_many(rings.queue, bytes(12), frames, mergeable=False) == 3
    rings.queue.publish()
    assert rings.counts == {"vhost_rx_too_big": 1}
    assert rings.used() == (2, [(0, 62), (1, 72)])


def test_a_first_buffer_shorter_than_the_header() -> None:
    rings = Rings()
    receive_buffers(rings, [8, 100])
    header = bytes(range(12))
    assert deliver(rings.queue, header, b"frame", mergeable=True) is True
    rings.queue.publish()
    assert rings.used() == (2, [(0, 8), (1, 9)])
    got = bytes(rings.view[DATA:DATA + 8]) + bytes(rings.view[DATA + 0x1000:DATA + 0x1009])
    assert got == header[:10] + b"\2\0frame"


def test_buffers_filled_but_too_few_are_not_given_back() -> None:
    rings = Rings()
    receive_buffers(rings, [100, 100])
    assert deliver(rings.queue, bytes(12), bytes(300), mergeable=True) is False
    rings.queue.publish()
    assert rings.queue.last_avail == 0 and rings.used() == (0, [])
    rings.desc(2, GPA + DATA + 0x2000, 100, DESC_F_WRITE)
    rings.offer(2)
    assert deliver(rings.queue, bytes(12), bytes(250), mergeable=True) is True
    rings.queue.publish()
    assert rings.used() == (3, [(0, 100), (1, 100), (2, 62)])


def test_a_frame_waits_for_buffers_without_taking_any() -> None:
    rings = Rings()
    receive_buffers(rings, [100])
    assert deliver(rings.queue, bytes(12), bytes(200), mergeable=True) is False
    assert rings.queue.last_avail == 0 and rings.used() == (0, [])
    receive_buffers(rings, [100, 100])                          # (head 0 again, and 1)
    assert deliver(rings.queue, bytes(12), bytes(200), mergeable=True) is True


def test_without_mergeable_buffers_a_frame_too_big_is_dropped_buffer_kept() -> None:
    rings = Rings()
    receive_buffers(rings, [100])
    assert deliver(rings.queue, bytes(12), bytes(200), mergeable=False) is None
    assert rings.counts["vhost_rx_too_big"] == 1 and rings.queue.last_avail == 0
    assert deliver(rings.queue, bytes(12), bytes(50), mergeable=False) is True


def test_a_frame_bigger_than_the_whole_ring_is_dropped() -> None:
    rings = Rings()
    receive_buffers(rings, [100] * NUM)
    assert deliver(rings.queue, bytes(12), bytes(2000), mergeable=True) is None
    assert rings.counts["vhost_rx_too_big"] == 1


def test_a_readable_receive_buffer_is_given_back_and_the_frame_dropped() -> None:
    rings = Rings()
    rings.desc(0, GPA + DATA, 100)
    rings.offer(0)
    assert deliver(rings.queue, bytes(12), bytes(20), mergeable=True) is None
    rings.queue.publish()
    assert rings.used() == (1, [(0, 0)]) and rings.counts["vhost_rx_bad_chain"] == 1


def test_event_index_decides_interrupts_and_kicks() -> None:
    rings = Rings(event_idx=True)
    receive_buffers(rings, [100, 100, 100])
    struct.pack_into("<H", rings.view, AVAIL + 4 + 2 * NUM, 1)   # used_event: after 2 used
    assert deliver(rings.queue, bytes(12), bytes(10), mergeable=True)
    rings.queue.publish()
    assert not rings.queue.need_call()
    assert deliver(rings.queue, bytes(12), bytes(10), mergeable=True)
    rings.queue.publish()
    assert rings.queue.need_call()
    assert not rings.queue.need_call()                           # nothing new since
    # a kick once the guest adds past the chains seen (one was left over)
    assert rings.queue.want_kicks() is False
    assert struct.unpack_from("<H", rings.view, USED + 4 + 8 * NUM) == (3,)
    receive_buffers(rings, [100])
    assert rings.queue.want_kicks() is True                      # it did meanwhile


def test_no_interrupt_flag_without_event_index() -> None:
    rings = Rings()
    receive_buffers(rings, [100, 100])
    struct.pack_into("<H", rings.view, AVAIL, 1)                 # VRING_AVAIL_F_NO_INTERRUPT
    deliver(rings.queue, bytes(12), bytes(10), mergeable=True)
    assert not rings.queue.need_call()
    struct.pack_into("<H", rings.view, AVAIL, 0)
    deliver(rings.queue, bytes(12), bytes(10), mergeable=True)
    assert rings.queue.need_call()


@pytest.mark.parametrize("event, new, old, wanted", [
    (0, 1, 0, True), (1, 1, 0, False), (5, 10, 3, True), (10, 10, 3, False),
    (0xFFFF, 1, 0xFFFE, True), (0, 0xFFFF, 0xFFFE, False),
])
def test_need_event(event: int, new: int, old: int, wanted: bool) -> None:
    assert need_event(event, new, old) is wanted
