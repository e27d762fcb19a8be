"""The guest side of the worker: frames in and out of the tap device (pasta)
or the passt stream socket (QEMU, libvirt), with optional capture.

A link sends as soon as it is made (frames before a guest is there are
dropped); ``start(receiver)``, once everything it delivers to exists,
registers it with the loop: from then on every complete frame goes to the
receiver's ``on_frame(frame, now)``, and a guest that becomes reachable to
its ``on_connect`` (at once for pasta's tap and passt's ``--fd``).  Reads
fill one preallocated buffer.  Writes never block: a full tap queue drops the
frame (the guest's TCP retransmits), and on the stream socket whole frames
wait in a bounded output buffer so the length framing is never broken.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ..packet import ETH_HLEN
from ..pcap import record
from ..system.log import Logger
from ..tap import (
    TCP_CSUM_HEADERS,
    VNET_HDR_SIZE,
    FramingError,
    StreamDecoder,
    stream_prefix,
    vnet_header,
    vnet_udp_header,
)
from .loop import EPOLLIN, EPOLLOUT, Loop

FrameHandler = Callable[[memoryview, float], None]
READ_SIZE = 65536 + 64
FRAMES_PER_WAKEUP = 128
STREAM_OUT_MAX = 8 << 20


class GuestReceiver(Protocol):
    """What a guest link reports to (``services.GuestServices``)."""

    def on_frame(self, frame: memoryview, now: float) -> None: ...

    def on_connect(self) -> None: ...

    def on_disconnect(self) -> None: ...

    def on_offload(self, on: bool) -> None: ...


class Capture:
    """pcap records of every frame, both ways, to an fd opened by the broker."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def frame(self, frame: bytes | memoryview) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, record(frame, time.time()))
        except OSError:
            self.fd = None


class TapLink:
    """pasta: one frame per read() on the tap fd, behind a virtio-net header
    (``broker.tap``): incoming TCP may arrive as segments of up to 64 KiB
    (TSO), and our frames go out marked as checksummed (DATA_VALID).

    Frames are read until the queue is empty, up to FRAMES_PER_WAKEUP, so
    that a burst is handled in one loop round (UDP leaves in batches per
    round).  A guest that sends one frame per wakeup (request/response)
    would make every second read fail with EAGAIN, an exception here: while
    wakeups find a single frame, read just that one and let the
    level-triggered tap wake the loop again.  Woken again in the very next
    round, frames were left waiting: read them all again."""

    def __init__(self, loop: Loop, fd: int, capture: Capture, log: Logger, mtu: int) -> None:
        self.loop, self.fd, self.capture, self.log = loop, fd, capture, log
        self.largest = ETH_HLEN + mtu
        self.buffer = bytearray(VNET_HDR_SIZE + READ_SIZE)
        self.view = memoryview(self.buffer)
        self.on_frame: FrameHandler = lambda frame, now: None
        self.single = False           # read one frame per wakeup...
        self.single_round = -1        # ...the last time in this loop round
        os.set_blocking(fd, False)

    def start(self, receiver: GuestReceiver) -> None:
        """Read for ``receiver``; the namespace is there already."""
        self.on_frame = receiver.on_frame
        self.loop.add_fd(self.fd, EPOLLIN, self._readable)
        receiver.on_connect()

    @property
    def connected(self) -> bool:
        return True

    def _readable(self, fd: int, events: int, now: float) -> None:
        rounds = self.loop.rounds
        if self.single and rounds != self.single_round + 1:
            self.single_round = rounds
            self._read(fd, now)
            return
        self.single = False
        for count in range(FRAMES_PER_WAKEUP):
            if not self._read(fd, now):
                self.single = count == 1
                self.single_round = rounds
                return

    def _read(self, fd: int, now: float) -> bool:
        """One frame to ``on_frame``; False if there was none to read."""
        try:
            size = os.readv(fd, [self.buffer])
        except BlockingIOError:
            return False
        except OSError as exc:
            self.log.error(f"tap read failed: {exc.strerror}")
            self.loop.stop()
            return False
        if size <= VNET_HDR_SIZE:
            self.loop.counters.add("drop_tap_short")
            return True
        frame = self.view[VNET_HDR_SIZE:size]
        if self.capture.fd is not None:
            self.capture.frame(frame)
        self.on_frame(frame, now)
        return True

    def send(self, frame: bytes) -> None:
        if self.capture.fd is not None:
            self.capture.frame(frame)
        try:                                  # _write, in line: a frame per segment
            os.writev(self.fd, [vnet_header(frame, self.largest), frame])
        except OSError as exc:
            self._write_failed(exc)

    def send_tcp(self, frame: bytes) -> None:
        """A frame of ``tcp_wire.FrameTemplate`` (or ``rst_for_unknown``):
        its virtio-net header by the ethertype alone, up to the MTU; the
        kernel cuts one beyond it (``vnet_header``)."""
        if self.capture.fd is not None:
            self.capture.frame(frame)
        largest = self.largest
        header = (TCP_CSUM_HEADERS[frame[12]] if len(frame) <= largest
                  else vnet_header(frame, largest))
        try:
            os.writev(self.fd, [header, frame])
        except OSError as exc:
            self._write_failed(exc)

    def send_tcp_frames(self, frames: Sequence[bytes | bytearray]) -> None:
        """``send_tcp`` for each of ``frames`` (a write each: the tap takes
        one frame per write)."""
        for frame in frames:
            self.send_tcp(frame)

    def send_datagrams(self, headers: bytes, payload: memoryview, segment: int) -> bool:
        """UDP payload behind ``udp.datagram_headers``: the kernel completes
        the checksum and, with ``segment``, cuts it into datagrams (USO).
        False if this kernel refuses that (before Linux 6.2): nothing sent."""
        datagrams = -(-len(payload) // segment) if segment else 1
        return self._write([vnet_udp_header(len(headers), segment), headers, payload],
                           refused_ok=bool(segment), frames=datagrams)

    def _write(self, parts: list, refused_ok: bool = False, frames: int = 1) -> bool:
        try:
            os.writev(self.fd, parts)
        except OSError as exc:
            if refused_ok and exc.errno == errno.EINVAL:
                return False
            self._write_failed(exc, frames)
        return True

    def _write_failed(self, exc: OSError, frames: int = 1) -> None:
        """Counted, never fatal: the frames are dropped (TCP resends).  The
        counters count frames as the guest would have seen them: a UDP
        write that the kernel cuts into datagrams (USO) counts each.  A tap
        that is down (as pasta leaves it without --config-net, until the
        namespace brings it up) refuses frames with EIO: nothing to say."""
        if isinstance(exc, BlockingIOError):
            self.loop.counters.add("tap_full", frames)
            return
        if exc.errno == errno.EIO:
            self.loop.counters.add("tap_down", frames)
            return
        self.loop.counters.add("tap_write_error", frames)
        self.log.ratelimited("tap_write", 4, f"tap write failed: {exc.strerror}")


class StreamLink:
    """passt: length-prefixed frames on a UNIX stream socket, one guest at a
    time.  A second client is accepted and closed; when the guest goes away
    ``on_disconnect`` runs (exit with ``--one-off``, else wait for the next)."""

    def __init__(self, loop: Loop, capture: Capture, log: Logger,
                 listener: int | None = None, connected: int | None = None) -> None:
        self.loop, self.capture, self.log = loop, capture, log
        self.listener = socket.socket(fileno=listener) if listener is not None else None
        if self.listener is not None:
            self.listener.setblocking(False)
        # -F: attached on start; made a socket here, before the sandbox is armed
        self.preconnected = socket.socket(fileno=connected) if connected is not None else None
        self.conn: socket.socket | None = None
        self.decoder = StreamDecoder()
        self.out = bytearray()
        self.asks_out = False              # EPOLLOUT asked for: frames wait for room
        self.buffer = bytearray(READ_SIZE)
        self.on_frame: FrameHandler = lambda frame, now: None
        self.on_connect: Callable[[], None] = lambda: None
        self.on_disconnect: Callable[[], None] = lambda: None

    def start(self, receiver: GuestReceiver) -> None:
        """Accept guests (and serve the ``--fd`` one) for ``receiver``."""
        self.on_frame = receiver.on_frame
        self.on_connect, self.on_disconnect = receiver.on_connect, receiver.on_disconnect
        if self.listener is not None:
            self.loop.add_fd(self.listener.fileno(), EPOLLIN, self._accept)
        if self.preconnected is not None:
            self._attach(self.preconnected)
            self.preconnected = None

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def _accept(self, fd: int, events: int, now: float) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.conn is not None:
            self.log.info("a guest is already connected: closing the new connection")
            sock.close()
            return
        self.log.info("guest connected")
        self._attach(sock)

    def _attach(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.conn = sock
        self.decoder.reset()
        self.out.clear()
        self.asks_out = False
        self.loop.add_fd(sock.fileno(), EPOLLIN, self._ready)
        self.on_connect()

    def _ready(self, fd: int, events: int, now: float) -> None:
        if events & EPOLLOUT:
            self._flush()
        if events & EPOLLIN and self.conn is not None:
            self._read(now)

    def _read(self, now: float) -> None:
        assert self.conn is not None
        try:
            size = self.conn.recv_into(self.buffer)
        except BlockingIOError:
            return
        except OSError:
            size = 0
        if size == 0:
            self.disconnect("guest disconnected")
            return
        try:
            frames = self.decoder.feed(memoryview(self.buffer)[:size])
        except FramingError as exc:
            self.disconnect(f"bad framing from guest ({exc}): dropping it")
            return
        for frame in frames:
            self.capture.frame(frame)
            self.on_frame(memoryview(frame), now)

    def send(self, frame: bytes) -> None:
        self.send_tcp_frames((frame,))

    send_tcp = send

    def send_tcp_frames(self, frames: Sequence[bytes | bytearray]) -> None:
        """Each frame behind its length, written at once (a peek's
        segments in one write) unless earlier ones wait for room: then
        they go along when the socket reports it (EPOLLOUT)."""
        if self.conn is None:
            return
        out = self.out
        idle = not out
        for frame in frames:
            if len(out) + len(frame) + 4 > STREAM_OUT_MAX:
                self.loop.counters.add("stream_full")
                continue
            self.capture.frame(frame)
            out += stream_prefix(len(frame))
            out += frame
        if idle and out:
            self._flush()

    def _flush(self) -> None:
        """Write what waits; EPOLLOUT asked for while some is left (an
        epoll_ctl only when that changes)."""
        assert self.conn is not None
        try:
            sent = self.conn.send(self.out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                self.disconnect(f"guest write failed: {exc.strerror}")
                return
            sent = 0
        del self.out[:sent]
        if bool(self.out) != self.asks_out:
            self.asks_out = not self.asks_out
            self.loop.modify_fd(self.conn.fileno(), EPOLLIN | (EPOLLOUT if self.asks_out else 0))

    def disconnect(self, reason: str) -> None:
        if self.conn is None:
            return
        self.log.info(reason)
        self.loop.remove_fd(self.conn.fileno())
        self.conn.close()
        self.conn = None
        self.out.clear()
        self.on_disconnect()

