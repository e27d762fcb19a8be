"""A vhost-user link driven in-process: a VhostUserLink set up as QEMU
would set it up (features, guest RAM in a memfd, the receive ring), and the
guest driver's side of that ring played on bytes, posting buffers as
Linux's virtio-net does with mergeable buffers (one writable descriptor
each).  For the unit tests and bench/vhost_count.py; no root needed."""

from __future__ import annotations

import os
import socket
import struct

from passt_sep import vhost_user as vu
from passt_sep.system.log import Logger
from passt_sep.worker.guest import Capture
from passt_sep.worker.loop import Loop
from passt_sep.worker.vhost_io import Mapping, VhostUserLink

MTU = 65520                       # what passt gives a guest
NUM = 256                         # QEMU's default receive ring
UVA, GPA = 0x7F0000000000, 0
DESC, AVAIL, USED, DATA = 0x0, 0x1000, 0x2000, 0x10000
TX_RING = 0x4000                  # the transmit ring's: its DESC, AVAIL and USED from here
TX_SLOT = 2048                    # bytes of each frame the guest sends
FEATURES = vu.OFFERED & ~(1 << vu.F_PROTOCOL_FEATURES)     # rings enabled from the start


class Guest:
    """The driver's side of the receive ring: buffer ``i`` is descriptor
    ``i``, ``buffer`` bytes at DATA + i * buffer; all posted at first."""

    def __init__(self, view: memoryview, buffer: int, base: int = 0) -> None:
        self.view, self.buffer, self.base = view, buffer, base
        self.avail_idx = self.used_seen = 0
        for index in range(NUM):
            self.describe(index, DATA + index * buffer, buffer, 2)
            self.offer(index)

    def describe(self, index: int, offset: int, length: int, flags: int) -> None:
        struct.pack_into("<QIHH", self.view, self.base + DESC + 16 * index, GPA + offset,
                         length, flags, 0)

    def offer(self, head: int) -> None:
        avail = self.base + AVAIL
        struct.pack_into("<H", self.view, avail + 4 + 2 * (self.avail_idx % NUM), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.view, avail + 2, self.avail_idx)

    def used(self, again: bool = True) -> list[tuple[int, int]]:
        """(head, length) of each buffer used since last time, posted again
        (with ``again``)."""
        used = self.base + USED
        (index,) = struct.unpack_from("<H", self.view, used + 2)
        taken = []
        while self.used_seen != index:
            taken.append(struct.unpack_from("<II", self.view,
                                            used + 4 + 8 * (self.used_seen % NUM)))
            if again:
                self.offer(taken[-1][0])
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        # as Linux does with event_idx: a kick once the device is past this
        struct.pack_into("<H", self.view, self.base + AVAIL + 4 + 2 * NUM, self.used_seen)
        return taken

    def received(self, head: int, length: int) -> bytes:
        start = DATA + head * self.buffer
        return bytes(self.view[start:start + length])


class Sender(Guest):
    """The driver's side of the transmit ring: frame ``i`` in slot ``i``
    (after the receive buffers), one readable descriptor, header and all."""

    def __init__(self, view: memoryview, data: int) -> None:
        self.view, self.base, self.data = view, TX_RING, data
        self.avail_idx = self.used_seen = 0

    def send(self, index: int, frame: bytes) -> None:
        offset = self.data + index * TX_SLOT
        self.view[offset:offset + len(frame)] = frame
        self.describe(index, offset, len(frame), 0)
        self.offer(index)


def message(request: int, payload: bytes, fds: list[int] | None = None) -> vu.Message:
    return vu.Message(request, vu.VERSION, payload, fds or [])


class LinkWithRing:
    """The link with guest RAM and an enabled receive ring, its guest."""

    def __init__(self, buffer: int, features: int = FEATURES, mtu: int = MTU) -> None:
        self.loop = Loop()
        listener, self.other = socket.socketpair()
        self.link = VhostUserLink(self.loop, Capture(None), Logger("vhost_guest"),
                                  listener.detach(), mtu)
        size = DATA + NUM * (buffer + TX_SLOT)
        size += -size % 4096
        self.memfd = os.memfd_create("guest", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, size)
        mapping = Mapping(vu.RegionSpec(GPA, size, UVA, 0, self.memfd))
        self.control(vu.SET_FEATURES, struct.pack("<Q", features))
        self.link._set_memory([mapping])
        self.guest = Guest(mapping.region.view, buffer)
        self.sender = Sender(mapping.region.view, DATA + NUM * buffer)
        self.kick, self.call = (os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                                for _ in range(2))
        for index, base in ((vu.RX, 0), (vu.TX, TX_RING)):
            self.control(vu.SET_VRING_NUM, struct.pack("<II", index, NUM))
            self.control(vu.SET_VRING_BASE, struct.pack("<II", index, 0))
            self.control(vu.SET_VRING_ADDR, struct.pack("<IIQQQQ", index, 0, UVA + base + DESC,
                                                        UVA + base + USED,
                                                        UVA + base + AVAIL, 0))
            self.control(vu.SET_VRING_CALL, struct.pack("<Q", index), [os.dup(self.call)])
            self.control(vu.SET_VRING_KICK, struct.pack("<Q", index), [os.dup(self.kick)])
        assert self.link.connected, "the receive ring did not start"

    def control(self, request: int, payload: bytes, fds: list[int] | None = None) -> None:
        """A message from the front-end, as the link's socket would bring it."""
        self.link._apply(request, self.link.backend.handle(message(request, payload, fds)))

    def close(self) -> None:
        self.guest.view.release()
        self.sender.view.release()
        self.link.conn = self.other          # for disconnect: a socket to close
        self.link.disconnect("done")
        for fd in (self.memfd, self.kick, self.call):
            os.close(fd)
        self.link.listener.close()
        self.loop.epoll.close()
        os.close(self.loop.timerfd)
