"""Logging to a pre-opened fd: line format, levels, --log-size truncation,
syslog datagrams, rate limiting and exception descriptions."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt_sep import log
from passt_sep.log import DEBUG, ERROR, INFO, TRACE, WARNING, Logger, describe_exception


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def drain(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


def open_log(path) -> int:
    """As the broker opens -l files."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_APPEND, 0o644)


# -- line format and levels ---------------------------------------------------------

def test_line_format(pipe: tuple[int, int]) -> None:
    logger = Logger("passt-sep", level=TRACE)
    logger.to_fd(pipe[1])
    logger.error("cannot bind")
    logger.warning("port in use")
    logger.info("listening")
    logger.debug("frame")
    logger.log(TRACE, "segment")
    assert drain(pipe[0]) == (b"passt-sep: ERROR: cannot bind\n"
                              b"passt-sep: WARNING: port in use\n"
                              b"passt-sep: listening\n"
                              b"passt-sep: DEBUG: frame\n"
                              b"passt-sep: TRACE: segment\n")


@pytest.mark.parametrize("level, shown", [
    (ERROR, [ERROR]), (WARNING, [ERROR, WARNING]), (INFO, [ERROR, WARNING, INFO]),
    (DEBUG, [ERROR, WARNING, INFO, DEBUG]), (TRACE, [ERROR, WARNING, INFO, DEBUG, TRACE])])
def test_level_filter(pipe: tuple[int, int], level: int, shown: list[int]) -> None:
    logger = Logger("p", level=level)
    logger.to_fd(pipe[1])
    for each in (ERROR, WARNING, INFO, DEBUG, TRACE):
        logger.log(each, str(each))
    lines = drain(pipe[0]).decode().splitlines()
    assert [int(line.rsplit(" ", 1)[1]) for line in lines] == shown


def test_default_level_is_info(pipe: tuple[int, int]) -> None:
    logger = Logger("p")
    logger.to_fd(pipe[1])
    logger.debug("hidden")
    logger.info("shown")
    assert drain(pipe[0]) == b"p: shown\n"


def test_unencodable_text_is_replaced(pipe: tuple[int, int]) -> None:
    logger = Logger("p")
    logger.to_fd(pipe[1])
    logger.warning("name \udcff: caf\u00e9")
    assert drain(pipe[0]) == "p: WARNING: name ?: café\n".encode()


def test_no_target_and_broken_target_are_silent(pipe: tuple[int, int]) -> None:
    logger = Logger("p")
    logger.to_fd(None)
    logger.error("nowhere")                 # no fd: nothing, no error
    logger.to_fd(pipe[1])
    os.close(pipe[0])
    logger.error("reader gone")             # EPIPE is swallowed
    assert logger.written == 0


# -- --log-size -------------------------------------------------------------------

def test_file_is_truncated_when_the_next_line_would_pass_the_limit(tmp_path) -> None:
    path = tmp_path / "passt.log"
    path.write_bytes(b"x" * 60)             # an earlier run's lines count
    fd = open_log(path)
    try:
        logger = Logger("p")
        logger.to_fd(fd, log_size=100)
        assert logger.written == 60
        logger.info("a" * 26)               # 30 bytes with "p: " and newline: 90
        assert path.read_bytes() == b"x" * 60 + b"p: " + b"a" * 26 + b"\n"
        logger.info("b" * 6)                # 10 more: exactly 100, still fits
        assert len(path.read_bytes()) == 100
        logger.info("c")                    # 101 would pass it: start over
        assert path.read_bytes() == b"p: c\n"
        assert logger.written == 5
    finally:
        os.close(fd)


def test_oversized_old_file_is_truncated_on_the_first_line(tmp_path) -> None:
    path = tmp_path / "passt.log"
    path.write_bytes(b"old\n" * 1000)
    fd = open_log(path)
    try:
        logger = Logger("p")
        logger.to_fd(fd, log_size=1024)
        logger.error("new")
        assert path.read_bytes() == b"p: ERROR: new\n"
    finally:
        os.close(fd)


def test_line_longer_than_the_limit_is_written_alone(tmp_path) -> None:
    path = tmp_path / "passt.log"
    fd = open_log(path)
    try:
        logger = Logger("p")
        logger.to_fd(fd, log_size=16)
        logger.info("short")
        logger.info("z" * 40)
        assert path.read_bytes() == b"p: " + b"z" * 40 + b"\n"
    finally:
        os.close(fd)


def test_without_a_size_the_file_only_grows(tmp_path) -> None:
    path = tmp_path / "passt.log"
    fd = open_log(path)
    try:
        logger = Logger("p")
        for size in (None, 0):
            logger.to_fd(fd, log_size=size)
            for _ in range(50):
                logger.info("0123456789")
        assert path.read_bytes() == b"p: 0123456789\n" * 100
    finally:
        os.close(fd)


def test_log_size_on_a_pipe_still_logs(pipe: tuple[int, int]) -> None:
    logger = Logger("p")
    logger.to_fd(pipe[1], log_size=1 << 20)
    logger.info("hello")
    assert drain(pipe[0]) == b"p: hello\n"


@given(st.lists(st.integers(0, 60), max_size=40), st.integers(20, 200))
def test_file_never_passes_the_limit(tmp_path_factory, lengths: list[int], limit: int) -> None:
    path = tmp_path_factory.getbasetemp() / "limit.log"
    path.write_bytes(b"")
    fd = open_log(path)
    try:
        logger = Logger("p")
        logger.to_fd(fd, log_size=limit)
        expected = b""
        for i, length in enumerate(lengths):
            line = b"p: " + bytes([97 + i % 26]) * length + b"\n"
            logger.info(line[3:-1].decode())
            expected = expected + line if len(expected) + len(line) <= limit else line
            content = path.read_bytes()
            assert content == expected
            assert len(content) <= max(limit, len(line))
            assert logger.written == len(content)
    finally:
        os.close(fd)


# -- syslog -----------------------------------------------------------------------

def test_syslog_datagrams_carry_daemon_facility_and_level() -> None:
    ours, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        logger = Logger("pasta-sep", level=DEBUG)
        logger.to_syslog(ours)
        logger.error("e")
        logger.warning("w")
        logger.info("i")
        logger.debug("d")
        logger.log(TRACE, "t")              # below the level: nothing
        daemon.setblocking(False)
        got = []
        while True:
            try:
                got.append(daemon.recv(1024))
            except BlockingIOError:
                break
        assert got == [b"<27>pasta-sep: e", b"<28>pasta-sep: w", b"<30>pasta-sep: i",
                       b"<31>pasta-sep: d"]
        daemon.close()
        logger.error("daemon gone")         # ECONNREFUSED is swallowed
    finally:
        ours.close()
        daemon.close()


def test_switching_targets(pipe: tuple[int, int]) -> None:
    ours, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        logger = Logger("p")
        logger.to_fd(pipe[1])
        logger.to_syslog(ours)
        logger.info("to syslog")
        assert drain(pipe[0]) == b"" and logger.fd is None
        assert daemon.recv(100) == b"<30>p: to syslog"
        logger.to_fd(pipe[1])
        logger.info("to the fd")
        assert drain(pipe[0]) == b"p: to the fd\n" and logger.syslog is None
    finally:
        ours.close()
        daemon.close()


# -- rate limiting ----------------------------------------------------------------

class Recorder(Logger):
    def __init__(self, level: int = INFO) -> None:
        super().__init__("p", level)
        self.lines: list[tuple[int, str]] = []

    def log(self, level: int, message: str) -> None:
        self.lines.append((level, message))


def test_burst_then_suppression_then_summary() -> None:
    logger = Recorder()
    for i in range(8):
        logger.ratelimited("tap", WARNING, f"m{i}", now=100.0 + i / 10)
    assert logger.lines == [(WARNING, f"m{i}") for i in range(5)]
    logger.ratelimited("tap", WARNING, "later", now=101.0)
    assert logger.lines[5:] == [(WARNING, "3 more 'tap' messages suppressed"),
                                (WARNING, "later")]
    logger.ratelimited("tap", WARNING, "again", now=101.5)
    assert logger.lines[7:] == [(WARNING, "again")]


def test_keys_are_limited_separately() -> None:
    logger = Recorder()
    for i in range(6):
        logger.ratelimited("a", ERROR, f"a{i}", now=0.0)
        logger.ratelimited("b", ERROR, f"b{i}", now=0.0)
    assert [m for _, m in logger.lines] == [x for i in range(5) for x in (f"a{i}", f"b{i}")]
    assert logger.suppressed == {"a": 1, "b": 1}


def test_no_summary_when_nothing_was_suppressed() -> None:
    logger = Recorder()
    for t in (0.0, 0.5, 2.0, 2.1, 10.0):
        logger.ratelimited("k", INFO, str(t), now=t)
    assert [m for _, m in logger.lines] == ["0.0", "0.5", "2.0", "2.1", "10.0"]


def test_ratelimited_uses_the_monotonic_clock_by_default(pipe: tuple[int, int]) -> None:
    logger = Logger("p")
    logger.to_fd(pipe[1])
    for _ in range(log.RATE_BURST * 3):
        logger.ratelimited("flood", WARNING, "x")
    assert drain(pipe[0]) == b"p: WARNING: x\n" * log.RATE_BURST


@given(st.lists(st.tuples(st.sampled_from("ab"), st.floats(0, 3)), max_size=60))
def test_rate_limit_properties(calls: list[tuple[str, float]]) -> None:
    """Per key: at most RATE_BURST messages per window, and every message is
    either logged, counted in a summary, or still pending."""
    logger = Recorder()
    now = 0.0
    sent = {"a": 0, "b": 0}
    for key, step in calls:
        now += step
        logger.ratelimited(key, INFO, key, now=now)
        sent[key] += 1
    for key in "ab":
        logged = sum(1 for _, m in logger.lines if m == key)
        summarised = sum(int(m.split()[0]) for _, m in logger.lines
                         if m.endswith(f"'{key}' messages suppressed"))
        assert logged + summarised + logger.suppressed.get(key, 0) == sent[key]
        assert logged >= min(sent[key], log.RATE_BURST)


# -- exceptions ---------------------------------------------------------------------

def _inner() -> None:
    raise ValueError("bad value")


def _outer() -> None:
    _inner()


def test_describe_exception_lists_frames_without_source() -> None:
    try:
        _outer()
    except ValueError as exc:
        text = describe_exception(exc)
    lines = text.splitlines()
    assert lines[0] == "ValueError: bad value"
    assert [line.rsplit(" in ", 1)[1] for line in lines[1:]] == [
        "test_describe_exception_lists_frames_without_source", "_outer", "_inner"]
    assert all(line.startswith(f"  at {__file__}:") for line in lines[1:])
    assert "raise ValueError" not in text


def test_describe_exception_not_raised() -> None:
    assert describe_exception(KeyError("k")) == "KeyError: 'k'"
