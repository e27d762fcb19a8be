"""Logging to pre-opened fds: line formats (standard error, the stamped -l
file), levels, --log-size truncation, syslog datagrams, rate limiting,
once-only warnings, the start-up block and exception descriptions."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

import passt_sep
from passt_sep.config import parse_args
from passt_sep.netparams import IPv4Params, IPv6Params, Network
from passt_sep.system import log
from passt_sep.system.log import DEBUG, ERROR, INFO, TRACE, WARNING, Logger, describe_exception
from passt_sep.worker.icmp_io import _socket_failure


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
    assert logger.stream is not None and logger.stream.written == 0


# -- the -l file ------------------------------------------------------------------

def stamped(logger: Logger, at: float) -> Logger:
    """``logger``'s file lines say ``at`` seconds since its start."""
    logger.clock = lambda: logger.start + at
    return logger


def test_file_lines_are_stamped_as_passt_stamps_them(tmp_path) -> None:
    path = tmp_path / "passt.log"
    fd = open_log(path)
    try:
        logger = stamped(Logger("pasta-sep", level=TRACE), 1.23456)
        logger.to_file(fd)
        logger.error("cannot bind")
        logger.warning("port in use")
        logger.info("listening")
        logger.debug("frame")
        logger.log(TRACE, "segment")
        assert path.read_text() == ("1.2346: ERROR:   cannot bind\n"
                                    "1.2346: WARNING: port in use\n"
                                    "1.2346: info:    listening\n"
                                    "1.2346:          frame\n"
                                    "1.2346:          segment\n")
    finally:
        os.close(fd)


def test_file_and_stream_both_get_the_line(tmp_path, pipe: tuple[int, int]) -> None:
    """The foreground with -l: standard error and the file, as passt's."""
    path = tmp_path / "passt.log"
    fd = open_log(path)
    try:
        logger = stamped(Logger("passt-sep"), 0.0)
        logger.to_fd(pipe[1])
        logger.to_file(fd)
        logger.info("guest connected")
        assert drain(pipe[0]) == b"passt-sep: guest connected\n"
        assert path.read_text() == "0.0000: info:    guest connected\n"
        logger.to_file(None)
        logger.info("stream only")
        assert path.read_text() == "0.0000: info:    guest connected\n"
    finally:
        os.close(fd)


def test_multi_line_message_is_stamped_line_by_line() -> None:
    assert log.file_lines(INFO, "You can now start qemu:\n    qemu ...", 2.5) == (
        b"2.5000: info:    You can now start qemu:\n2.5000: info:        qemu ...\n")


def test_file_levels_follow_the_logger_level(tmp_path) -> None:
    """-q: the file gets warnings and errors only, as passt's."""
    path = tmp_path / "passt.log"
    fd = open_log(path)
    try:
        logger = stamped(Logger("p", level=WARNING), 0.5)
        logger.to_file(fd)
        logger.info("Template interface: eth0 (IPv4)")
        logger.warning("no IPv6")
        assert path.read_text() == "0.5000: WARNING: no IPv6\n"
    finally:
        os.close(fd)


def test_header_names_program_version_and_pid(tmp_path) -> None:
    path = tmp_path / "passt.log"
    fd = open_log(path)
    try:
        logger = Logger("pasta-sep")
        logger.header("/usr/bin/pasta-sep")
        assert path.read_text() == ""      # no file yet: nothing
        logger.to_file(fd)
        logger.header("/usr/bin/pasta-sep")
        assert path.read_text() == \
            f"pasta-sep {passt_sep.__version__}: /usr/bin/pasta-sep ({os.getpid()})\n"
    finally:
        os.close(fd)


def test_start_is_shared_with_the_broker(tmp_path) -> None:
    """The worker counts from the broker's start: its lines go on from there."""
    path = tmp_path / "passt.log"
    fd = open_log(path)
    try:
        logger = Logger("p", start=100.0)
        logger.clock = lambda: 103.25
        logger.to_file(fd)
        logger.info("late")
        assert path.read_text() == "3.2500: info:    late\n"
    finally:
        os.close(fd)


# -- --log-size -------------------------------------------------------------------

LINE = len(log.file_lines(INFO, "", 0.0))   # "0.0000: info:    \n": the stamp and level


def test_file_is_truncated_when_the_next_line_would_pass_the_limit(tmp_path) -> None:
    path = tmp_path / "passt.log"
    path.write_bytes(b"x" * 60)             # an earlier run's lines count
    fd = open_log(path)
    try:
        logger = stamped(Logger("p"), 0.0)
        logger.to_file(fd, log_size=60 + 2 * LINE + 10)
        assert logger.file is not None and logger.file.written == 60
        logger.info("a" * 4)
        assert path.read_bytes() == b"x" * 60 + log.file_lines(INFO, "aaaa", 0.0)
        logger.info("b" * 6)                # exactly at the limit: still fits
        assert len(path.read_bytes()) == 60 + 2 * LINE + 10
        logger.info("c")                    # one more would pass it: start over
        assert path.read_bytes() == log.file_lines(INFO, "c", 0.0)
        assert logger.file.written == LINE + 1
    finally:
        os.close(fd)


def test_oversized_old_file_is_truncated_on_the_first_line(tmp_path) -> None:
    path = tmp_path / "passt.log"
    path.write_bytes(b"old\n" * 1000)
    fd = open_log(path)
    try:
        logger = stamped(Logger("p"), 0.0)
        logger.to_file(fd, log_size=1024)
        logger.error("new")
        assert path.read_bytes() == b"0.0000: ERROR:   new\n"
    finally:
        os.close(fd)


def test_line_longer_than_the_limit_is_written_alone(tmp_path) -> None:
    path = tmp_path / "passt.log"
    fd = open_log(path)
    try:
        logger = stamped(Logger("p"), 0.0)
        logger.to_file(fd, log_size=16)
        logger.info("short")
        logger.info("z" * 40)
        assert path.read_bytes() == log.file_lines(INFO, "z" * 40, 0.0)
    finally:
        os.close(fd)


def test_without_a_size_the_file_only_grows(tmp_path) -> None:
    path = tmp_path / "passt.log"
    fd = open_log(path)
    try:
        logger = stamped(Logger("p"), 0.0)
        for size in (None, 0):
            logger.to_file(fd, log_size=size)
            for _ in range(50):
                logger.info("0123456789")
        assert path.read_bytes() == log.file_lines(INFO, "0123456789", 0.0) * 100
    finally:
        os.close(fd)


def test_log_size_on_a_pipe_still_logs(pipe: tuple[int, int]) -> None:
    logger = stamped(Logger("p"), 0.0)
    logger.to_file(pipe[1], log_size=1 << 20)
    logger.info("hello")
    assert drain(pipe[0]) == b"0.0000: info:    hello\n"


@given(st.lists(st.integers(0, 60), max_size=40), st.integers(20, 200))
def test_file_never_passes_the_limit(tmp_path_factory, lengths: list[int], limit: int) -> None:
    path = tmp_path_factory.getbasetemp() / "limit.log"
    path.write_bytes(b"")
    fd = open_log(path)
    try:
        logger = stamped(Logger("p"), 0.0)
        logger.to_file(fd, log_size=limit)
        expected = b""
        for i, length in enumerate(lengths):
            text = chr(97 + i % 26) * length
            line = log.file_lines(INFO, text, 0.0)
            logger.info(text)
            expected = expected + line if len(expected) + len(line) <= limit else line
            content = path.read_bytes()
            assert content == expected
            assert len(content) <= max(limit, len(line))
            assert logger.file is not None and logger.file.written == len(content)
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
        assert drain(pipe[0]) == b"" and logger.stream is None
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


def test_once_says_it_the_first_time_only() -> None:
    logger = Recorder()
    for _ in range(20):
        logger.once("icmp_socket", WARNING, "cannot open a ping socket")
    logger.once("other", WARNING, "something else")
    assert logger.lines == [(WARNING, "cannot open a ping socket"), (WARNING, "something else")]


def test_ping_socket_warning_names_the_sysctl_only_when_it_is_the_cause() -> None:
    denied = _socket_failure(OSError(errno.EACCES, os.strerror(errno.EACCES)))
    assert denied.startswith("cannot open a ping socket: Permission denied; ")
    assert 'net.ipv4.ping_group_range="0 2147483647"' in denied
    assert denied.endswith("further failures are only counted")
    full = _socket_failure(OSError(errno.EMFILE, os.strerror(errno.EMFILE)))
    assert "ping_group_range" not in full and "Too many open files" in full


# -- the start-up block -------------------------------------------------------------

NET = Network(ipv4=IPv4Params(ipaddress.ip_address("198.51.100.2").packed, 24,
                              ipaddress.ip_address("198.51.100.1").packed,
                              (ipaddress.ip_address("203.0.113.1").packed,)),
              ipv6=IPv6Params(ipaddress.ip_address("2001:db8:1::2").packed, 64,
                              ipaddress.ip_address("2001:db8:1::1").packed,
                              (ipaddress.ip_address("2001:db8:2::1").packed,)),
              search=("example.test",))


def block(*argv: str, mode: str = "passt", net: Network = NET,
          templates: tuple[str | None, str | None] = ("eth0", "eth0"),
          ns_ifname: str | None = None) -> list[str]:
    config = parse_args(list(argv), f"{mode}-sep")
    return log.startup_block(config, net, templates, ns_ifname)


def section(lines: list[str], heading: str) -> list[str]:
    """The indented lines under ``heading``."""
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith(" ")),
               len(lines))
    return [line.strip() for line in lines[start:end]]


def test_block_has_passts_sections() -> None:
    lines = block("-t", "8080", "-u", "5353:53")
    assert lines[0] == "Template interface: eth0 (IPv4), eth0 (IPv6)"
    assert section(lines, "MAC:") == ["host: 9a:55:9a:55:9a:55"]
    assert section(lines, "DHCP:") == ["assign: 198.51.100.2", "mask: 255.255.255.0",
                                       "router: 198.51.100.1",
                                       "NAT to host 127.0.0.1: 198.51.100.1"]
    assert section(lines, "NDP/DHCPv6:") == ["assign: 2001:db8:1::2", "router: 2001:db8:1::1",
                                             "our link-local: fe80::9855:9aff:fe55:9a55",
                                             "NAT to host ::1: 2001:db8:1::1"]
    assert [line for line in lines if line.startswith("    2")] == [
        "    203.0.113.1", "    2001:db8:2::1"]         # each family's DNS after its section
    assert section(lines, "DNS search list:") == ["example.test"]
    assert section(lines, "Forwarding:") == ["TCP from the host: */8080",
                                             "UDP from the host: */5353:53"]
    assert "Namespace interface" not in "\n".join(lines)


def test_block_in_pasta_names_the_namespace_side() -> None:
    net = dataclasses.replace(NET, guest_mac=bytes.fromhex("0a0000000001"))
    lines = block("-t", "none", mode="pasta", net=net, ns_ifname="eth0")
    assert lines[1] == "Namespace interface: eth0"
    assert section(lines, "MAC:") == ["host: 9a:55:9a:55:9a:55", "guest: 0a:00:00:00:00:01"]
    assert section(lines, "Forwarding:") == ["UDP from the host: auto",
                                             "TCP from the namespace: auto",
                                             "UDP from the namespace: auto"]


def test_block_follows_the_options() -> None:
    lines = block("--no-dhcp", "--no-ndp", "--no-dhcpv6", "--no-map-gw", "-m", "0",
                  "--dns-forward", "198.51.100.53", "--no-tcp", "-u", "none")
    text = "\n".join(lines)
    assert "IPv4:" in lines and "IPv6:" in lines and "DHCP:" not in lines
    assert "NAT to host" not in text and "Forwarding:" not in lines
    assert "MTU: 65520 (not advertised)" in lines
    assert section(lines, "DNS forward:") == ["198.51.100.53 -> no resolver"]
    mapped = block("--map-host-loopback", "198.51.100.9")
    assert "    NAT to host 127.0.0.1: 198.51.100.9" in mapped
    assert not any("NAT to host ::1" in line for line in mapped)


def test_block_without_host_addresses() -> None:
    lines = block(net=Network(), templates=(None, None))
    assert lines[0] == "Template interface: none, local mode"
    assert not any(h in lines for h in ("DHCP:", "NDP/DHCPv6:", "IPv4:", "IPv6:"))
    v4_only = block(net=dataclasses.replace(NET, ipv6=None), templates=("eth1", None))
    assert v4_only[0] == "Template interface: eth1 (IPv4)"


def test_block_shortens_long_port_lists() -> None:
    ports = ",".join(str(p) for p in range(1000, 1040, 2))
    [line] = section(block("-t", ports), "Forwarding:")
    assert line.startswith("TCP from the host: */1000, */1002") and line.endswith("and 12 more")


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
