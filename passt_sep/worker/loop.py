"""The worker's epoll loop: the only place in passt-sep that does I/O.

Protocol handlers register file descriptors with a callback and ask for
timers; the loop owns one epoll instance and one timerfd that is always set
to the earliest pending deadline.  Time comes from ``time.monotonic`` here
and is passed down as ``now`` so the protocol modules never read a clock.
"""

from __future__ import annotations

import ctypes
import errno
import heapq
import itertools
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from time import monotonic

from ..system.log import Logger

FdCallback = Callable[[int, int, float], None]
TimerCallback = Callable[[float], None]

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLRDHUP = select.EPOLLRDHUP

_TFD_CLOEXEC_NONBLOCK = os.O_CLOEXEC | os.O_NONBLOCK
COMPACT_MIN = 1024          # timers in the heap before cancelled ones are swept out


class Timer:
    """A pending call; ``cancel()`` makes the loop skip it.  The heap holds
    it as ``(deadline, seq, timer)``: tuples compare in C, where a class of
    its own would compare in Python code, log2(n) times per push and pop."""

    __slots__ = ("deadline", "callback")

    def __init__(self, deadline: float, callback: TimerCallback | None) -> None:
        self.deadline, self.callback = deadline, callback

    def cancel(self) -> None:
        self.callback = None


TimerEntry = tuple[float, int, Timer]


class Counters:
    """Named event and drop counters, readable as a dict for logging.

    ``sources`` add counts kept elsewhere (the kernel's, read on demand:
    datagrams dropped at a full socket) to those in ``snapshot``."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.sources: list[Callable[[], dict[str, int]]] = []

    def snapshot(self) -> dict[str, int]:
        """Every counter, the sources' counts added in."""
        merged = dict(self.values)
        for source in self.sources:
            for name, amount in source().items():
                merged[name] = merged.get(name, 0) + amount
        return merged

    def add(self, name: str, amount: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + amount

    def get(self, name: str) -> int:
        return self.values.get(name, 0)


class Loop:
    """epoll + one timerfd.  Callbacks run in the order events arrive.

    An fd removed during a round may be reused at once: a socket closed by
    one event's callback, and one opened by the next, get the same number.
    The round's remaining events for that number belong to the closed one
    (the new one was registered after the wait), so they are skipped
    (``removed``): delivered, a stale hang-up would read as the new
    socket's failed connect."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.callbacks: dict[int, FdCallback] = {}
        self.removed: set[int] = set()        # fds removed in this round
        self.timers: list[TimerEntry] = []
        self.timer_seq = itertools.count()
        self.timerfd = _timerfd_create()
        self.armed_deadline: float | None = None
        self.compact_at = COMPACT_MIN
        self.running = False
        self.spin = 0.0                       # seconds: --busy-poll
        self.awake_until = 0.0                # stay_awake's deadline
        self.rounds = 0                       # poll rounds so far
        self.round_end: list[TimerCallback] = []
        self.counters = Counters()
        self.on_error: Callable[[Exception], None] = _reraise
        self.add_fd(self.timerfd, EPOLLIN, self._on_timerfd)

    # -- file descriptors -------------------------------------------------
    def add_fd(self, fd: int, events: int, callback: FdCallback) -> None:
        self.epoll.register(fd, events)
        self.callbacks[fd] = callback

    def modify_fd(self, fd: int, events: int) -> None:
        self.epoll.modify(fd, events)

    def pause_fd(self, fd: int, seconds: float, events: int) -> None:
        """Stop reporting ``fd`` for a while, then ask for ``events`` again:
        a listener with a connection waiting that we have no fd left to
        accept would otherwise wake the loop for ever."""
        callback = self.callbacks.get(fd)
        self.modify_fd(fd, 0)

        def resume(now: float) -> None:
            if callback is not None and self.callbacks.get(fd) == callback:
                self.modify_fd(fd, events)

        self.call_later(seconds, resume)

    def remove_fd(self, fd: int) -> None:
        if self.callbacks.pop(fd, None) is not None:
            self.epoll.unregister(fd)
            self.removed.add(fd)

    # -- timers -------------------------------------------------------------
    def call_at(self, deadline: float, callback: TimerCallback) -> Timer:
        timer = Timer(deadline, callback)
        heapq.heappush(self.timers, (deadline, next(self.timer_seq), timer))
        if len(self.timers) > self.compact_at:
            self._compact()
        if self.armed_deadline is None or deadline < self.armed_deadline:
            self._arm(deadline)
        return timer

    def _compact(self) -> None:
        """Sweep cancelled timers out of the heap.  Left there, each would stay
        until its deadline, and a TCP flow's idle deadline is two hours away:
        every short connection would leave some behind, and memory would grow
        for two hours.  Swept when the heap has doubled since the last sweep,
        so the cost per timer stays constant."""
        self.timers = [entry for entry in self.timers if entry[2].callback is not None]
        heapq.heapify(self.timers)
        self.compact_at = max(COMPACT_MIN, 2 * len(self.timers))

    def call_later(self, delay: float, callback: TimerCallback) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    def _arm(self, deadline: float) -> None:
        self.armed_deadline = deadline
        delay = max(deadline - time.monotonic(), 1e-6)
        _timerfd_settime(self.timerfd, delay)

    def _on_timerfd(self, fd: int, events: int, now: float) -> None:
        try:
            os.read(fd, 8)
        except BlockingIOError:
            pass
        self.armed_deadline = None
        self.run_due_timers(now)

    def run_due_timers(self, now: float) -> None:
        # self.timers, not a local: a callback's call_at may compact it anew
        while self.timers and self.timers[0][0] <= now:
            timer = heapq.heappop(self.timers)[2]
            if timer.callback is not None:
                callback, timer.callback = timer.callback, None
                self._guarded(callback, now)
        while self.timers and self.timers[0][2].callback is None:
            heapq.heappop(self.timers)
        if self.timers and self.armed_deadline != self.timers[0][0]:
            self._arm(self.timers[0][0])

    def at_round_end(self, callback: TimerCallback) -> None:
        """Call once the events of this poll round are handled: work
        gathered across them (a batch of datagrams) goes out together."""
        self.round_end.append(callback)

    # -- running ------------------------------------------------------------
    def run(self) -> None:
        """Poll rounds until ``stop``, sleeping in between unless a handler
        asked the loop to stay awake (``stay_awake``)."""
        self.running = True
        poll_once, step_aside = self.poll_once, os.sched_yield
        while self.running:
            if self.awake_until <= monotonic():
                poll_once(-1)
            elif not poll_once(0):
                step_aside()

    def stay_awake(self, now: float) -> None:
        """A reply is likely soon (a short request went to a socket, a
        short answer to the guest): poll without sleeping until ``spin``
        seconds from ``now``.  A sleeping worker takes 10-15 us to wake in
        a VM, a fifth to a half of a request/response exchange.  Only
        handlers that expect a prompt reply ask: bulk traffic finds events
        at every poll anyway, and a spin there takes the CPU from the
        processes that make the traffic (the guest's sender and its peer
        share two CPUs with the worker; the scheduler does not move them
        to a CPU that never idles).  Between empty polls the worker
        yields the CPU to whatever else can run on it."""
        self.awake_until = now + self.spin

    def poll_once(self, timeout: float) -> bool:
        """One round: wait up to ``timeout`` seconds (-1: for ever), then
        handle what is ready; whether anything was.  ``rounds`` counts
        the rounds that had events (the spin's empty polls are none)."""
        try:
            ready = self.epoll.poll(timeout, 256)
        except InterruptedError:
            return False
        if not ready:
            if self.round_end:          # what was gathered outside a round
                self._round_end(monotonic())
            return False
        now = monotonic()
        self.rounds += 1
        callbacks, removed = self.callbacks, self.removed
        if removed:
            removed.clear()
        for fd, events in ready:
            # else removed by an event before it, this round (and maybe reused)
            if fd in callbacks and fd not in removed:
                try:             # _guarded, inline: this runs for every event
                    callbacks[fd](fd, events, now)
                except Exception as exc:
                    self._failed(exc)
        if self.round_end:              # most rounds gather nothing: no call
            self._round_end(now)
        return True

    def _round_end(self, now: float) -> None:
        while self.round_end:
            self._guarded(self.round_end.pop(), now)

    def _guarded(self, callback: Callable[..., None], *args: object) -> None:
        """Run a callback; a bug in one flow must not end the others."""
        try:
            callback(*args)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.counters.add("internal_error")
        self.on_error(exc)

    def stop(self) -> None:
        self.running = False


def _reraise(exc: Exception) -> None:
    raise exc


# Python 3.11 has no os.timerfd_*: reach timerfd through libc, loaded at
# import time because nothing can be loaded once the sandbox is closed.
_libc = ctypes.CDLL(None, use_errno=True)


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval_sec", ctypes.c_long), ("interval_nsec", ctypes.c_long),
                ("value_sec", ctypes.c_long), ("value_nsec", ctypes.c_long)]


def _timerfd_create() -> int:
    fd = _libc.timerfd_create(time.CLOCK_MONOTONIC, _TFD_CLOEXEC_NONBLOCK)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return fd


def _timerfd_settime(fd: int, delay: float) -> None:
    seconds = int(delay)
    spec = _Itimerspec(0, 0, seconds, max(int((delay - seconds) * 1e9), 1))
    if _libc.timerfd_settime(fd, 0, ctypes.byref(spec), None) < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


ACCEPTS_PER_WAKEUP = 64
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_PAUSE = 1.0                        # seconds a listener rests when we are out of fds


def accept_ready(loop: Loop, log: Logger, fd: int, listener: socket.socket, what: str,
                 handle: Callable[[socket.socket, tuple], None]) -> None:
    """Accept what waits on ``listener`` (at most ACCEPTS_PER_WAKEUP), each
    to ``handle``.  Out of fds, the listener rests a second instead of
    waking the loop for ever with a connection it cannot take."""
    for _ in range(ACCEPTS_PER_WAKEUP):
        try:
            accepted, address = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            loop.counters.add(f"{what}_accept_error")
            log.ratelimited(f"{what}_accept", 4, f"accept failed: {exc.strerror}")
            if exc.errno in OUT_OF_FDS:
                loop.pause_fd(fd, ACCEPT_PAUSE, EPOLLIN)
            return
        handle(accepted, address)


LINGER_RESET = struct.pack("ii", 1, 0)


def close_socket(sock: socket.socket, reset: bool = False) -> None:
    """Close; with ``reset`` the peer gets an RST instead of a FIN (linger
    0), the way a TCP reset is passed on from the other side."""
    if reset:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        except OSError:
            pass                              # already gone: nothing to reset
    sock.close()
