"""The worker loop's timers: cancelled ones do not pile up, live ones fire
in deadline order.  A real epoll and timerfd, no sandbox."""

from __future__ import annotations

import socket
import time

from passt_sep.worker.loop import COMPACT_MIN, Loop

IDLE = 7200.0                       # a TCP flow's idle deadline: two hours away


def test_cancelled_far_timers_do_not_pile_up() -> None:
    """A short connection's two-hour idle timer is cancelled when it ends;
    100k of them leave the heap no bigger than twice the live timers."""
    loop = Loop()
    now = time.monotonic()
    live = [loop.call_at(now + IDLE + i, lambda _: None) for i in range(100)]
    for _ in range(100_000):
        loop.call_at(now + IDLE, lambda _: None).cancel()
    assert len(loop.timers) <= max(COMPACT_MIN, 2 * len(live)) + 1
    assert all(timer.callback is not None for timer in live)


def test_live_timers_fire_in_order_after_a_sweep() -> None:
    loop = Loop()
    fired: list[int] = []
    now = time.monotonic()
    for _ in range(3 * COMPACT_MIN):
        loop.call_at(now + IDLE, lambda _: None).cancel()
    for i in (3, 1, 2):
        loop.call_at(now + i / 100, lambda _, i=i: fired.append(i))
    deadline = time.monotonic() + 2
    while len(fired) < 3 and time.monotonic() < deadline:
        loop.poll_once(0.1)
    assert fired == [1, 2, 3]


def test_counter_snapshot_adds_the_sources_counts() -> None:
    """Counts kept elsewhere (the kernel's, read when asked) add to the
    loop's own under the same name."""
    loop = Loop()
    loop.counters.add("udp_rcvbuf_drops", 3)
    loop.counters.add("tap_full")
    loop.counters.sources.append(lambda: {"udp_rcvbuf_drops": 4, "other": 1})
    assert loop.counters.snapshot() == {"udp_rcvbuf_drops": 7, "tap_full": 1, "other": 1}
    assert loop.counters.get("udp_rcvbuf_drops") == 3


def test_an_fd_number_reused_in_a_round_gets_none_of_the_old_fds_events() -> None:
    """Two readable sockets: whichever event comes first closes the other
    and opens a socket that takes its number; the event the closed one
    still had in this round must not reach the new one's callback."""
    loop = Loop()
    pairs = [socket.socketpair() for _ in range(2)]
    reached_new: list[int] = []
    replacement: list[socket.socket] = []

    def readable(fd: int, events: int, now: float) -> None:
        if replacement:
            return
        other = next(end for end, _ in pairs if end.fileno() != fd)
        number = other.fileno()
        loop.remove_fd(number)
        other.close()
        fresh = socket.socket()
        assert fresh.fileno() == number          # the lowest free number: reused
        replacement.append(fresh)
        loop.add_fd(number, 1, lambda fd, events, now: reached_new.append(events))

    for end, peer in pairs:
        peer.send(b"x")
        loop.add_fd(end.fileno(), 1, readable)
    loop.poll_once(0.5)
    assert replacement and reached_new == []
    for sock in [*replacement, *(end for pair in pairs for end in pair)]:
        sock.close()


def _timeouts_of_a_run(spin: float, asks: bool) -> list[float]:
    """The timeouts ``run`` polls with around one event whose handler asks
    the loop to stay awake (``asks``) or not, stopped by a timer 50 ms
    later."""
    loop = Loop()
    loop.spin = spin
    end, peer = socket.socketpair()

    def readable(fd: int, events: int, now: float) -> None:
        end.recv(1)
        if asks:
            loop.stay_awake(now)

    loop.add_fd(end.fileno(), 1, readable)
    timeouts: list[float] = []
    real_poll = loop.poll_once

    def recording_poll(timeout: float) -> bool:
        timeouts.append(timeout)
        return real_poll(timeout)

    loop.poll_once = recording_poll           # type: ignore[method-assign]
    peer.send(b"x")
    loop.call_later(0.05, lambda now: loop.stop())
    loop.run()
    end.close()
    peer.close()
    return timeouts


def test_asked_to_stay_awake_the_loop_polls_without_sleeping_for_its_spin() -> None:
    """The event's round, then polls that do not sleep for the spin's
    length (the reply to a short request often comes that soon), then a
    sleep until the timer."""
    timeouts = _timeouts_of_a_run(0.005, asks=True)
    assert timeouts[0] == -1 and timeouts[1] == 0
    spinning = timeouts[1:timeouts.index(-1, 1)]
    assert spinning and set(spinning) == {0}
    assert -1 in timeouts[1:]                      # it slept once the spin was over


def test_unasked_or_without_a_spin_the_loop_sleeps_at_every_poll() -> None:
    """Bulk traffic does not ask (a spin would take the CPU its sender
    needs), and --busy-poll 0 never spins."""
    assert set(_timeouts_of_a_run(0.005, asks=False)) == {-1}
    assert set(_timeouts_of_a_run(0, asks=True)) == {-1}
