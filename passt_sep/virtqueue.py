"""Split virtqueues in guest memory shared by QEMU (vhost-user), without I/O.

The guest's RAM arrives as regions (``GuestMemory``), each a memoryview on a
shared mapping; a ``Virtqueue`` reads the guest's descriptor table and
available ring and writes the used ring through them.  Everything in guest
memory is written by a party we do not trust and may change while we read
it: every index, length and address is checked against the queue size and
the regions before it is used, each value is read once, and a chain that
fails a check is given back to the guest unused and counted, never raised.

Layout (virtio 1.x, split virtqueue, little-endian):

- descriptor table: ``num`` entries of addr u64, len u32, flags u16, next u16;
- available ring: flags u16, idx u16, ring[num] u16, used_event u16;
- used ring: flags u16, idx u16, ring[num] of (id u32, len u32), avail_event u16.

Ring addresses are QEMU's virtual addresses (vhost-user's convention),
buffer addresses the guest's physical ones.
"""

from __future__ import annotations

import _thread
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT = 1, 2, 4
AVAIL_F_NO_INTERRUPT = 1
DESC_SIZE = 16
MAX_QUEUE_SIZE = 32768
MAX_INDIRECT = 1024                 # descriptors in one indirect table (Linux uses <= 19)

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")

Count = Callable[[str], None]


@dataclass(frozen=True)
class Region:
    """One region of guest RAM: where the guest (``gpa``) and QEMU (``uva``)
    see it, and our view of its ``size`` bytes."""
    gpa: int
    uva: int
    size: int
    view: memoryview


class GuestMemory:
    """Address translation into the mapped regions, bounds-checked: a range
    is only returned when it lies wholly inside one region."""

    def __init__(self, regions: Sequence[Region]) -> None:
        self.regions = tuple(regions)
        # (first address, end, view) of each, guest-physical: the hot
        # loops that look buffers up in line (``deliver``) read these
        self.spans = tuple((region.gpa, region.gpa + region.size, region.view)
                           for region in self.regions)

    def gpa(self, addr: int, length: int) -> memoryview | None:
        """``length`` bytes at guest-physical ``addr``, or None."""
        for region in self.regions:
            offset = addr - region.gpa
            if 0 <= offset and length >= 0 and offset + length <= region.size:
                return region.view[offset:offset + length]
        return None

    def uva(self, addr: int, length: int) -> memoryview | None:
        """``length`` bytes at QEMU's virtual ``addr``, or None."""
        for region in self.regions:
            offset = addr - region.uva
            if 0 <= offset and length >= 0 and offset + length <= region.size:
                return region.view[offset:offset + length]
        return None


class QueueError(Exception):
    """The queue's layout (size, addresses) cannot be used."""


@dataclass
class Chain:
    """A descriptor chain taken from the available ring: its head (to give
    back), the parts we may read and those we may write, in order; ``bad``
    when a check failed (the chain goes back unused)."""
    head: int
    readable: list[memoryview]
    writable: list[memoryview]
    bad: str = ""


def need_event(event: int, new: int, old: int) -> bool:
    """Event index suppression: did the index pass ``event`` moving from
    ``old`` to ``new`` (all modulo 2^16)?"""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


_fence_lock = _thread.allocate_lock()


def full_fence() -> None:
    """A full memory barrier: taking and releasing an uncontended lock is
    an atomic read-modify-write (a locked instruction on x86), which orders
    our earlier stores before our later loads, as publishing an event index
    and then reading the ring's index needs."""
    _fence_lock.acquire()
    _fence_lock.release()


class Virtqueue:
    """One split virtqueue in guest memory.  ``count(name)`` is told of
    every dropped chain.  A queue whose available index jumps by more than
    its size is ``broken``: it is not used again until it is set up anew."""

    def __init__(self, memory: GuestMemory, num: int, desc: int, avail: int, used: int,
                 last_avail: int, event_idx: bool, count: Count) -> None:
        if num < 1 or num > MAX_QUEUE_SIZE or num & (num - 1):
            raise QueueError(f"queue size {num} is not a power of 2 up to {MAX_QUEUE_SIZE}")
        if desc % 16 or avail % 2 or used % 4:
            raise QueueError("misaligned ring address")
        extra = 2 if event_idx else 0
        desc_view = memory.uva(desc, num * DESC_SIZE)
        avail_view = memory.uva(avail, 4 + 2 * num + extra)
        used_view = memory.uva(used, 4 + 8 * num + extra)
        if desc_view is None or avail_view is None or used_view is None:
            raise QueueError("ring outside guest memory")
        self.memory, self.num, self.event_idx, self.count = memory, num, event_idx, count
        self.desc, self.avail, self.used = desc_view, avail_view, used_view
        self.last_avail = last_avail & 0xFFFF
        self.used_idx = _U16.unpack_from(used_view, 2)[0]
        self.signalled = self.used_idx     # used index at our last interrupt
        self.broken = False
        self.seen = self.last_avail         # the available index as last read

    # -- the available ring -------------------------------------------------------
    def avail_idx(self) -> int:
        return _U16.unpack_from(self.avail, 2)[0]

    def pending(self) -> int:
        """Chains waiting; 0 when there are none or the queue is broken."""
        if self.broken:
            return 0
        self.seen = seen = _U16.unpack_from(self.avail, 2)[0]
        waiting = (seen - self.last_avail) & 0xFFFF
        if waiting > self.num:
            self.broken = True
            self.count("vhost_queue_broken")
            return 0
        return waiting

    def pop(self) -> Chain | None:
        """The next available chain, or None.  A chain with a bad head index
        cannot be given back: it is skipped and counted."""
        while self.pending():
            slot = self.last_avail % self.num
            head = _U16.unpack_from(self.avail, 4 + 2 * slot)[0]
            self.last_avail = (self.last_avail + 1) & 0xFFFF
            if head >= self.num:
                self.count("vhost_bad_head")
                continue
            addr, length, flags, _ = _DESC.unpack_from(self.desc, head * DESC_SIZE)
            if not flags:           # one part to read: how a guest sends most frames
                part = self.memory.gpa(addr, length)
                if part is not None:
                    return Chain(head, [part], [])
            return self._walk(head)
        return None

    def unpop(self, chains: int) -> None:
        """Leave the last ``chains`` taken for later (none was used)."""
        self.last_avail = (self.last_avail - chains) & 0xFFFF

    def _walk(self, head: int) -> Chain:
        chain = Chain(head, [], [])
        table, size, index = self.desc, self.num, head
        seen, indirect = 0, False
        while True:
            seen += 1
            if seen > size:
                return self._bad(chain, "vhost_desc_loop")
            addr, length, flags, nxt = _DESC.unpack_from(table, index * DESC_SIZE)
            if flags & DESC_F_INDIRECT:
                if indirect or flags & DESC_F_NEXT or seen > 1:
                    return self._bad(chain, "vhost_bad_indirect")
                if length % DESC_SIZE or not 0 < length // DESC_SIZE <= MAX_INDIRECT:
                    return self._bad(chain, "vhost_bad_indirect")
                sub = self.memory.gpa(addr, length)
                if sub is None:
                    return self._bad(chain, "vhost_bad_address")
                table, size, index, seen, indirect = sub, length // DESC_SIZE, 0, 0, True
                continue
            part = self.memory.gpa(addr, length)
            if part is None:
                return self._bad(chain, "vhost_bad_address")
            if flags & DESC_F_WRITE:
                chain.writable.append(part)
            elif chain.writable:       # readable parts come first
                return self._bad(chain, "vhost_bad_order")
            else:
                chain.readable.append(part)
            if not flags & DESC_F_NEXT:
                return chain
            if nxt >= size:
                return self._bad(chain, "vhost_bad_next")
            index = nxt

    def _bad(self, chain: Chain, why: str) -> Chain:
        self.count(why)
        chain.bad = why
        chain.readable.clear()
        chain.writable.clear()
        return chain

    # -- the used ring --------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Give a chain back with ``written`` bytes in it; seen by the guest
        once ``publish`` runs."""
        _USED_ELEM.pack_into(self.used, 4 + 8 * (self.used_idx % self.num), head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def publish(self) -> None:
        """Make pushed chains visible (after their elements: x86 keeps
        stores in order)."""
        _U16.pack_into(self.used, 2, self.used_idx)

    def need_call(self) -> bool:
        """Whether the guest wants an interrupt for what was published since
        the last one (and take note that it gets one)."""
        old, new = self.signalled, self.used_idx
        if old == new:
            return False
        if self.event_idx:
            event = _U16.unpack_from(self.avail, 4 + 2 * self.num)[0]
            wanted = need_event(event, new, old)
        else:
            wanted = not _U16.unpack_from(self.avail, 0)[0] & AVAIL_F_NO_INTERRUPT
        self.signalled = new
        return wanted

    def want_kicks(self) -> bool:
        """Ask to be kicked when the guest adds chains past those last seen
        (``pending``): all of them taken, or, on the receive ring, too few
        for the frame at hand.  True if it has added some meanwhile (then
        go on without waiting): never for the same chains twice, or a frame
        needing more buffers than the guest posted so far would spin."""
        seen = self.seen
        if self.event_idx:
            _U16.pack_into(self.used, 4 + 8 * self.num, seen)
            full_fence()
        return not self.broken and _U16.unpack_from(self.avail, 2)[0] != seen


def chain_bytes(parts: Sequence[memoryview], into: bytearray) -> int:
    """Copy the chain's readable parts into ``into``; the length, or -1 when
    they do not fit."""
    offset = 0
    for part in parts:
        end = offset + len(part)
        if end > len(into):
            return -1
        into[offset:end] = part
        offset = end
    return offset


def _fill(parts: Sequence[memoryview], pieces: list[memoryview]) -> int:
    """Move the front of ``pieces`` into ``parts`` (consuming what went in);
    the bytes written."""
    written = 0
    for part in parts:
        offset = 0
        while pieces and offset < len(part):
            piece = pieces[0]
            step = min(len(part) - offset, len(piece))
            part[offset:offset + step] = piece[:step]
            offset += step
            if step == len(piece):
                pieces.pop(0)
            else:
                pieces[0] = piece[step:]
        written += offset
        if not pieces:
            break
    return written


NUM_BUFFERS_OFFSET = 10             # in the 12-byte virtio-net header


def deliver(vq: Virtqueue, header: bytes, frame: bytes | bytearray | memoryview,
            mergeable: bool) -> bool | None:
    """Write ``header`` and ``frame`` straight into the guest's receive
    buffers: True once given to the guest (after ``publish``), False when
    there is no room yet (nothing taken), None when the frame was dropped
    (counted).  With mergeable buffers the frame may span several chains,
    and the header's num_buffers says how many.

    A call per frame, so in line and in one pass for chains of one
    writable descriptor each (what Linux posts): the available index read
    once, each buffer filled as it is taken.  Buffers filled and then not
    given back (too few of them) are the guest's to post again, unread; a
    chain of any other kind starts the frame anew the general way."""
    hlen, end = len(header), len(frame)
    waiting = vq.pending()
    if not waiting:
        return False
    last, used_idx = vq.last_avail, vq.used_idx
    avail, desc, used, gpa, mask = vq.avail, vq.desc, vq.used, vq.memory.gpa, vq.num - 1
    # the first buffer: the header, then as much of the frame as fits
    head = _U16.unpack_from(avail, 4 + 2 * (last & mask))[0]
    if head > mask:
        return _deliver_chains(vq, header, frame, mergeable)
    addr, length, flags, _ = _DESC.unpack_from(desc, head * DESC_SIZE)
    first = gpa(addr, length) if flags == DESC_F_WRITE and length >= hlen else None
    if first is None:
        return _deliver_chains(vq, header, frame, mergeable)
    first[:hlen] = header
    chains = 1
    if length - hlen >= end:
        first[hlen:hlen + end] = frame
        _USED_ELEM.pack_into(used, 4 + 8 * (used_idx & mask), head, hlen + end)
    elif not mergeable:
        vq.count("vhost_rx_too_big")
        return None
    else:
        source = memoryview(frame)
        offset = length - hlen
        first[hlen:] = source[:offset]
        _USED_ELEM.pack_into(used, 4 + 8 * (used_idx & mask), head, length)
        # GuestMemory.gpa in line (a 64 KiB frame takes some 40 buffers
        # of Linux's 1.5 KiB)
        spans = vq.memory.spans
        while offset < end:             # then buffer after buffer
            if chains == waiting:
                if chains > mask:
                    vq.count("vhost_rx_too_big")
                    return None
                return False
            head = _U16.unpack_from(avail, 4 + 2 * ((last + chains) & mask))[0]
            if head > mask:
                return _deliver_chains(vq, header, frame, mergeable)
            addr, length, flags, _ = _DESC.unpack_from(desc, head * DESC_SIZE)
            part = None
            if flags == DESC_F_WRITE:
                for start, stop, view in spans:
                    if start <= addr and addr + length <= stop:
                        part = view[addr - start:addr - start + length]
                        break
            if part is None:
                return _deliver_chains(vq, header, frame, mergeable)
            if length > end - offset:
                length = end - offset
            part[:length] = source[offset:offset + length]
            offset += length
            _USED_ELEM.pack_into(used, 4 + 8 * ((used_idx + chains) & mask), head, length)
            chains += 1
    if mergeable:
        _U16.pack_into(first, NUM_BUFFERS_OFFSET, chains)
    vq.last_avail = (last + chains) & 0xFFFF
    vq.used_idx = (used_idx + chains) & 0xFFFF
    return True


def deliver_many(vq: Virtqueue, header: bytes, frames: Sequence[bytes | bytearray],
                 mergeable: bool) -> int:
    """``deliver`` for each of ``frames`` in order, all behind one
    ``header``, until one must wait for buffers: how many were taken
    (given to the guest once ``publish`` runs, or dropped and counted).
    A peek's segments come in one call: the ring's addresses and indexes
    are read once, and a frame that one writable buffer holds with the
    header (Linux's mergeable buffers, at an MTU of 1500) is written in
    line; any other goes through ``deliver``."""
    hlen = len(header)
    if mergeable:                       # as deliver writes it for one buffer
        header = bytearray(header)
        _U16.pack_into(header, NUM_BUFFERS_OFFSET, 1)
    waiting = vq.pending()
    last, used_idx = vq.last_avail, vq.used_idx
    avail, desc, used, mask = vq.avail, vq.desc, vq.used, vq.num - 1
    spans = vq.memory.spans             # GuestMemory.gpa in line
    taken = 0
    for frame in frames:
        if waiting:
            head = _U16.unpack_from(avail, 4 + 2 * (last & mask))[0]
            if head <= mask:
                addr, length, flags, _ = _DESC.unpack_from(desc, head * DESC_SIZE)
                size = hlen + len(frame)
                part = None
                if flags == DESC_F_WRITE and length >= size:
                    for start, end, view in spans:
                        if start <= addr and addr + size <= end:
                            part = view[addr - start:addr - start + size]
                            break
                if part is not None:
                    part[:hlen] = header
                    part[hlen:] = frame
                    _USED_ELEM.pack_into(used, 4 + 8 * (used_idx & mask), head, size)
                    last, used_idx = (last + 1) & 0xFFFF, (used_idx + 1) & 0xFFFF
                    waiting -= 1
                    taken += 1
                    continue
        vq.last_avail, vq.used_idx = last, used_idx     # the general way
        if deliver(vq, header, frame, mergeable) is False:
            return taken
        taken += 1
        waiting = vq.pending()
        last, used_idx = vq.last_avail, vq.used_idx
    vq.last_avail, vq.used_idx = last, used_idx
    return taken


def _deliver_chains(vq: Virtqueue, header: bytes, frame: bytes | bytearray | memoryview,
                    mergeable: bool) -> bool | None:
    """``deliver`` for any chains: several descriptors, indirect ones, a
    first buffer shorter than the header, bad ones."""
    need = len(header) + len(frame)
    start = vq.last_avail
    chains: list[Chain] = []
    room = 0
    while room < need:
        chain = vq.pop()
        if chain is None:
            vq.last_avail = start
            if len(chains) >= vq.num:
                vq.count("vhost_rx_too_big")
                return None
            return False
        if chain.bad or chain.readable:
            for taken in (*chains, chain):
                vq.push(taken.head, 0)
            if not chain.bad:
                vq.count("vhost_rx_bad_chain")      # a readable part: not a receive buffer
            return None
        chains.append(chain)
        room += sum(len(part) for part in chain.writable)
        if not mergeable and room < need:
            vq.last_avail = start
            vq.count("vhost_rx_too_big")
            return None
    if mergeable:
        header = bytearray(header)
        _U16.pack_into(header, NUM_BUFFERS_OFFSET, len(chains))
    pieces = [memoryview(header), memoryview(frame)]
    for chain in chains:
        vq.push(chain.head, _fill(chain.writable, pieces))
    return True
