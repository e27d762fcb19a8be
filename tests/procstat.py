"""A process's memory and file descriptors as /proc shows them, sampled
over time: what the flood tests bound and the soak run reports as slopes;
and the worker's own counters, as it logs them on SIGUSR1."""

from __future__ import annotations

import ast
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            return "\nState:\tZ" not in handle.read()
    except FileNotFoundError:
        return False


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    return wait_for(lambda: not alive(pid), timeout)


def processes_naming(marker: str) -> list[int]:
    """Live processes whose command line names ``marker`` (a path unique to
    one test: whatever passt-sep left behind of that run)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                named = marker.encode() in handle.read()
        except OSError:
            continue
        if named and alive(int(entry)):
            found.append(int(entry))
    return found


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of ``pid`` in KiB: now (VmRSS), or the most it has
    ever held (``field="VmHWM"``, the kernel's own high-water mark, which
    no sampling interval can miss)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise ProcessLookupError(f"no {field} for {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_count(pid: int) -> int:
    """Open sockets of ``pid``: the worker holds one per TCP flow."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
        except FileNotFoundError:
            pass                                  # closed while we looked
    return count


@dataclass
class Sample:
    at: float              # seconds since sampling started
    rss_kib: int
    fds: int
    sockets: int


@dataclass
class Sampler:
    """Samples a process every ``interval`` seconds in a thread, from
    ``start()`` until ``stop()``; a pid of None means "not known yet"
    (``pid`` is called each time, e.g. to read a pid file)."""

    pid: Callable[[], int | None]
    interval: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    gone: bool = False                            # the process went away while sampled

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def start(self) -> Sampler:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        return self.samples

    def sample(self) -> Sample | None:
        try:
            pid = self.pid()
        except (OSError, ValueError):
            return None
        if pid is None:
            return None
        try:
            return Sample(time.monotonic() - self._start, rss_kib(pid), fd_count(pid),
                          socket_count(pid))
        except (ProcessLookupError, FileNotFoundError):
            if self.samples:
                self.gone = True
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = self.sample()
            if sample is not None:
                self.samples.append(sample)
            self._stop.wait(self.interval)

    def peak(self, what: str) -> int:
        return max((getattr(s, what) for s in self.samples), default=0)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if not var:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


def logged_counters(log: str) -> dict[str, int]:
    """The last counters a worker logged on SIGUSR1 ({} if none)."""
    lines = [line for line in log.splitlines() if "counters: {" in line]
    return ast.literal_eval(lines[-1][lines[-1].index("{"):]) if lines else {}
