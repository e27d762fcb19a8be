"""passt --vhost-user: the guest's virtio-net rings, read and written in
its own memory.

QEMU connects to the UNIX socket the broker listens on and drives the
vhost-user protocol (``vhost_user.Backend``): its messages come with the
guest's RAM (descriptors of shared files, mapped here shared, read-write,
never executable) and one eventfd per ring to be woken by (kick) and one to
wake the guest with (call).  Frames to the guest are written straight into
the buffers the guest posted on the receive ring; frames from the guest are
copied out of the transmit ring's buffers once, into our buffer, so that
nothing the protocol handlers look at can change under them.

Memory is mapped through libc (Python's mmap would fstat and dup each
descriptor, two more system calls for the sandbox).  A mapping is only
unmapped once no view of it is left; if one were, the mapping is kept
(and counted) rather than risk a read of unmapped memory.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import socket
import struct
import sys
from collections.abc import Callable, Sequence

from .. import vhost_user
from ..packet import ETH_HLEN
from ..system.log import Logger
from ..tap import TCP_CSUM_HEADERS, VNET_HDR_SIZE, vnet_header
from ..vhost_user import RX, TX, Backend, Effects, MessageDecoder, ProtocolError, RegionSpec
from ..virtqueue import GuestMemory, Region, Virtqueue, chain_bytes, deliver, deliver_many
from .guest import READ_SIZE, Capture, FrameHandler, GuestReceiver
from .loop import EPOLLERR, EPOLLHUP, EPOLLIN, Loop

PENDING_MAX = 8 << 20          # bytes of frames waiting for receive buffers
TX_BUDGET = 1024               # frames from the guest per wakeup, then the rest next round
_ONE = struct.pack("<Q", 1)
_FD_SPACE = socket.CMSG_SPACE(vhost_user.MAX_FDS * 4)

_libc = ctypes.CDLL(None, use_errno=True)      # loaded before the sandbox closes
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class Mapping:
    """One region of guest RAM mapped from the descriptor QEMU sent."""

    def __init__(self, spec: RegionSpec) -> None:
        end = os.lseek(spec.fd, 0, os.SEEK_END)     # a shorter file would fault (SIGBUS)
        if spec.offset + spec.size > end:
            raise OSError(f"region of {spec.size} bytes at {spec.offset} beyond the "
                          f"{end} bytes shared")
        start = spec.offset - spec.offset % mmap.PAGESIZE
        self.length = spec.offset + spec.size - start
        addr = _libc.mmap(None, self.length, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_SHARED, spec.fd, start)
        if addr in (None, _MAP_FAILED):
            errno = ctypes.get_errno()
            raise OSError(errno, f"mmap: {os.strerror(errno)}")
        self.addr = addr
        self.array = (ctypes.c_char * self.length).from_address(addr)
        view = memoryview(self.array).cast("B")
        self.region = Region(spec.gpa, spec.uva, spec.size, view[spec.offset - start:])
        self._view = view

    def unmap(self) -> bool:
        """Unmap unless a view is still alive (False then: kept mapped)."""
        self.region = None      # type: ignore[assignment]
        self._view.release()
        if sys.getrefcount(self.array) > 2:        # ours and getrefcount's argument
            return False
        del self.array
        _libc.munmap(self.addr, self.length)
        return True


class VhostUserLink:
    """The guest link over vhost-user: one QEMU at a time on the listening
    socket; when it goes, ``on_disconnect`` (the next one starts afresh)."""

    def __init__(self, loop: Loop, capture: Capture, log: Logger, listener: int,
                 mtu: int) -> None:
        self.loop, self.capture, self.log = loop, capture, log
        self.largest = ETH_HLEN + mtu
        self.listener = socket.socket(fileno=listener)
        self.listener.setblocking(False)
        self.conn: socket.socket | None = None
        self.backend = Backend(loop.counters.add)
        self.decoder = MessageDecoder()
        self.mappings: list[Mapping] = []
        self.kicks: dict[int, int] = {}          # registered kick fd -> ring
        self.pending: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.pending_bytes = 0
        self.buffer = bytearray(READ_SIZE + vhost_user.HDR_LEN)
        self.view = memoryview(self.buffer)
        self.calls_due = False
        self.announced = False
        self._rx_format()
        self.on_frame: FrameHandler = lambda frame, now: None
        self.on_connect: Callable[[], None] = lambda: None
        self.on_disconnect: Callable[[], None] = lambda: None
        self.on_offload: Callable[[bool], None] = lambda offload: None

    def start(self, receiver: GuestReceiver) -> None:
        """Accept front-ends for ``receiver``; a guest is reachable once its
        rings are (``on_connect``)."""
        self.on_frame = receiver.on_frame
        self.on_connect, self.on_disconnect = receiver.on_connect, receiver.on_disconnect
        self.on_offload = receiver.on_offload
        self.loop.add_fd(self.listener.fileno(), EPOLLIN, self._accept)

    @property
    def connected(self) -> bool:
        return self._rx() is not None

    def _rx(self) -> Virtqueue | None:
        queue = self.backend.queue(RX)
        return queue if queue is not None and self.backend.rings[RX].enabled else None

    def _rx_format(self) -> None:
        """What a frame to the guest needs, as the front-end set it up: the
        receive queue (None: none to write to), whether buffers merge,
        the padding after a ``vnet_header``, and the whole header of a
        frame of ``send_tcp``'s by its ethertype's first byte (kept here:
        only control messages change them, not a call per frame)."""
        self.rx = self._rx()
        self.mergeable = self.backend.has(vhost_user.F_MRG_RXBUF)
        self.offload = self.backend.offload
        self.header_pad = bytes(self.backend.header_len - VNET_HDR_SIZE)
        self.tcp_headers = {key: (header if self.offload else bytes(VNET_HDR_SIZE))
                            + self.header_pad for key, header in TCP_CSUM_HEADERS.items()}

    # -- the control socket ----------------------------------------------------------
    def _accept(self, fd: int, events: int, now: float) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.conn is not None:
            self.log.info("a front-end is already connected: closing the new connection")
            sock.close()
            return
        self.log.info("vhost-user front-end connected")
        sock.setblocking(False)
        self.conn = sock
        self.loop.add_fd(sock.fileno(), EPOLLIN, self._control)

    def _control(self, fd: int, events: int, now: float) -> None:
        assert self.conn is not None
        try:
            data, ancillary, flags, _ = self.conn.recvmsg(self.decoder.wanted(), _FD_SPACE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.disconnect(f"vhost-user socket: {exc.strerror}")
            return
        fds = _received_fds(ancillary)
        if flags & socket.MSG_CTRUNC:
            _close_all(fds)
            self.disconnect("vhost-user: too many descriptors in one message")
            return
        if not data:
            _close_all(fds)
            self.disconnect("vhost-user front-end disconnected")
            return
        try:
            message = self.decoder.feed(data, fds)
        except ProtocolError as exc:
            _close_all(self.decoder.fds)
            self.disconnect(f"vhost-user: {exc}: dropping the front-end")
            return
        if message is not None:
            self.log.debug(f"vhost-user request {message.request}, flags {message.flags:#x}, "
                           f"{len(message.payload)} bytes, {len(message.fds)} fds")
            self._apply(message.request, self.backend.handle(message))

    def _apply(self, request: int, effects: Effects) -> None:
        if effects.error:
            self.loop.counters.add("vhost_request_error")
            self.log.ratelimited("vhost_error", 4, f"vhost-user: {effects.error}")
        if effects.memory is not None:
            effects.ok = self._map(effects.memory)
        self._rx_format()                       # before _sync's on_connect
        self._sync()                            # no longer watched: then closed
        _close_all(effects.close)
        answer = effects.reply
        if answer is None and effects.need_ack:
            answer = vhost_user.ack(request, effects.ok)
        if answer is not None and self.conn is not None:
            try:
                sent = self.conn.send(answer)
            except OSError:
                sent = 0
            if sent != len(answer):
                self.disconnect("vhost-user: cannot answer the front-end")
        if request == vhost_user.SET_FEATURES and effects.ok:
            self.on_offload(self.backend.offload)

    def _map(self, specs: list[RegionSpec]) -> bool:
        """Map the new table and drop the old one; False if a region failed
        (then the old table stays)."""
        mapped: list[Mapping] = []
        try:
            for spec in specs:
                mapped.append(Mapping(spec))
        except OSError as exc:
            self.log.ratelimited("vhost_map", 4, f"vhost-user: cannot map guest memory: {exc}")
            for mapping in mapped:
                mapping.unmap()
            return False
        finally:
            _close_all([spec.fd for spec in specs])
        self._set_memory(mapped)
        return True

    def _set_memory(self, mapped: list[Mapping]) -> None:
        old, self.mappings = self.mappings, mapped
        memory = GuestMemory([m.region for m in mapped]) if mapped else None
        for error in self.backend.set_memory(memory):
            self.log.ratelimited("vhost_ring", 4, f"vhost-user: {error}")
        for mapping in old:
            if not mapping.unmap():
                self.loop.counters.add("vhost_unmap_deferred")

    def _sync(self) -> None:
        """Watch the kick descriptors of the rings as they are now."""
        wanted = {ring.kick: index for index, ring in enumerate(self.backend.rings)
                  if ring.kick is not None and ring.queue is not None}
        for fd in [fd for fd in self.kicks if self.kicks[fd] != wanted.get(fd)]:
            self.loop.remove_fd(fd)
            del self.kicks[fd]
        for fd, index in wanted.items():
            if fd not in self.kicks:
                try:
                    os.set_blocking(fd, False)
                    self.loop.add_fd(fd, EPOLLIN, self._kicked)
                except OSError as exc:
                    self.log.ratelimited("vhost_kick", 4, f"vhost-user: kick fd: {exc}")
                    continue
                self.kicks[fd] = index
                self.loop.call_later(0, lambda now, i=index: self._service(i, now))
        if not self.announced and self._rx() is not None:
            self.announced = True
            self.log.info("guest connected (vhost-user)")
            self.on_connect()

    def disconnect(self, reason: str) -> None:
        if self.conn is None:
            return
        self.log.info(reason)
        for fd in list(self.kicks):
            self.loop.remove_fd(fd)
        self.kicks.clear()
        _close_all(self.backend.fds())
        self._set_memory([])
        self.loop.remove_fd(self.conn.fileno())
        self.conn.close()
        self.conn = None
        self.backend = Backend(self.loop.counters.add)
        self.decoder = MessageDecoder()
        self.pending.clear()
        self.pending_bytes = 0
        self.announced = False
        self._rx_format()
        self.on_disconnect()

    # -- the rings --------------------------------------------------------------------
    def _kicked(self, fd: int, events: int, now: float) -> None:
        try:
            got = os.read(fd, 8)
        except BlockingIOError:
            got = _ONE
        except OSError:
            got = b""
        index = self.kicks.get(fd)
        if not got or events & (EPOLLERR | EPOLLHUP):   # not an eventfd: stop watching
            self.loop.remove_fd(fd)
            self.kicks.pop(fd, None)
            self.loop.counters.add("vhost_kick_error")
            return
        if index is not None:
            self._service(index, now)

    def _service(self, index: int, now: float) -> None:
        if index == TX:
            self._transmitted(now)
        else:
            self._flush_pending()

    def _transmitted(self, now: float) -> None:
        """Frames the guest sent: each copied out, its buffer given back."""
        queue = self.backend.queue(TX)
        if queue is None:
            return
        enabled = self.backend.rings[TX].enabled
        header = self.backend.header_len
        for _ in range(TX_BUDGET):
            chain = queue.pop()
            if chain is None:
                if not queue.want_kicks():
                    break
                continue
            size = -1 if chain.bad else chain_bytes(chain.readable, self.buffer)
            queue.push(chain.head, 0)
            if size < header + ETH_HLEN:
                if not chain.bad:
                    self.loop.counters.add("vhost_tx_bad_frame")
                continue
            if not enabled:                    # a disabled ring's frames are dropped
                continue
            frame = self.view[header:size]
            if self.capture.fd is not None:
                self.capture.frame(frame)
            self.on_frame(frame, now)
        else:
            self.loop.call_later(0, self._transmitted)      # more next round
        queue.publish()
        self._call_soon()

    def send(self, frame: bytes) -> None:
        queue = self.rx
        if queue is None:
            self.loop.counters.add("vhost_not_ready")
            return
        if self.capture.fd is not None:
            self.capture.frame(frame)
        header = vnet_header(frame, self.largest) if self.offload else bytes(VNET_HDR_SIZE)
        header += self.header_pad
        if self.pending or not self._deliver(queue, header, frame):
            self._wait(queue, header, frame)

    def send_tcp(self, frame: bytes) -> None:
        """A frame of ``tcp_wire.FrameTemplate`` (or ``rst_for_unknown``) up
        to the MTU: its header by a lookup, written straight into the
        receive buffers; anything else goes the way of ``send``."""
        queue = self.rx
        if queue is None or len(frame) > self.largest or self.capture.fd is not None:
            self.send(frame)
            return
        header = self.tcp_headers[frame[12]]
        if self.pending or deliver(queue, header, frame, self.mergeable) is False:
            self._wait(queue, header, frame)
            return
        queue.publish()
        if not self.calls_due:
            self._call_soon()

    def send_tcp_frames(self, frames: Sequence[bytes | bytearray]) -> None:
        """``send_tcp`` for each of ``frames``, those of one flow (one
        header by their ethertype), up to the MTU, as a peek's segments
        are: written together (``deliver_many``), published once; those the
        ring has no buffers for yet wait, in order."""
        queue = self.rx
        if (queue is None or self.pending or self.capture.fd is not None or not frames
                or max(map(len, frames)) > self.largest):
            for frame in frames:
                self.send_tcp(frame)
            return
        header = self.tcp_headers[frames[0][12]]
        taken = deliver_many(queue, header, frames, self.mergeable)
        if taken:
            queue.publish()
            if not self.calls_due:
                self._call_soon()
        for frame in frames[taken:]:
            self._wait(queue, header, frame)

    def _wait(self, queue: Virtqueue, header: bytes, frame: bytes) -> None:
        """Keep the frame until the guest posts buffers (within bounds).
        The first to wait asks for a kick, and looks again (buffers may
        have come meanwhile); the others wait for that kick."""
        if self.pending_bytes + len(frame) > PENDING_MAX:
            self.loop.counters.add("vhost_rx_full")
            return
        first = not self.pending
        self.pending.append((header, frame))
        self.pending_bytes += len(frame)
        if first and queue.want_kicks():
            self._flush_pending()

    def _deliver(self, queue: Virtqueue, header: bytes, frame: bytes) -> bool:
        """True unless the frame must wait for buffers (dropped ones count
        as done)."""
        if deliver(queue, header, frame, self.mergeable) is False:
            return False
        queue.publish()
        self._call_soon()
        return True

    def _flush_pending(self) -> None:
        """Waiting frames into the buffers the guest posted, published
        together; a kick asked for when buffers run out again."""
        queue, pending = self.rx, self.pending
        if queue is None or not pending:
            return
        mergeable, taken = self.mergeable, 0
        while pending:
            header, frame = pending[0]
            if deliver(queue, header, frame, mergeable) is False:
                if queue.want_kicks():
                    continue
                break
            pending.popleft()
            self.pending_bytes -= len(frame)
            taken += 1
        if taken:
            queue.publish()
            self._call_soon()

    def _call_soon(self) -> None:
        if not self.calls_due:
            self.calls_due = True
            self.loop.at_round_end(self._calls)

    def _calls(self, now: float) -> None:
        """Interrupt the guest once per round for each ring that wants it."""
        self.calls_due = False
        for index, ring in enumerate(self.backend.rings):
            queue = self.backend.queue(index)
            if queue is None or ring.call is None or not queue.need_call():
                continue
            try:
                os.write(ring.call, _ONE)
            except OSError:
                self.loop.counters.add("vhost_call_error")


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += struct.unpack(f"{usable // 4}i", data[:usable])
    return fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
