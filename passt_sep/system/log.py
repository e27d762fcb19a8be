"""Logging to fds that were opened before the jail: never touches a path.

Targets: standard error (plain ``prog: message`` lines), the log file of
``-l`` (each line stamped with the seconds since start-up and its level,
as passt writes it; at ``--log-size`` it is emptied and starts over, since
without a path there is nothing to rename it to), or the syslog socket.
Per-packet messages go through ``ratelimited`` or ``once`` so a flood
cannot fill the disk, the terminal, or stall the loop.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from typing import TYPE_CHECKING

from .. import __version__
from ..loglevel import DEBUG, ERROR, INFO, TRACE, WARNING, level_for

__all__ = ["DEBUG", "ERROR", "INFO", "TRACE", "WARNING", "Logger", "level_for"]

if TYPE_CHECKING:
    from ..config import Config
    from ..netparams import Network
    from ..ports import Forwarding

_NAMES = {ERROR: "ERROR", WARNING: "WARNING", INFO: "INFO", DEBUG: "DEBUG", TRACE: "TRACE"}
# in the log file, the level in a column of its own: debug and trace lines
# leave it blank, as passt's do
_FILE_LABELS = {ERROR: "ERROR:", WARNING: "WARNING:", INFO: "info:", DEBUG: "", TRACE: ""}
_LABEL_WIDTH = 9
RATE_INTERVAL = 1.0
RATE_BURST = 5


class _Sink:
    """One fd lines are written to; with ``size``, a file that is emptied
    before it would grow past it (a pipe or terminal cannot be, and is
    left unbounded)."""

    def __init__(self, fd: int, size: int | None = None) -> None:
        self.fd, self.size, self.written = fd, size, 0
        if size:
            try:
                self.written = os.lseek(fd, 0, os.SEEK_END)
            except OSError:
                self.size = None

    def write(self, data: bytes) -> None:
        try:
            if self.size and self.written + len(data) > self.size:
                os.ftruncate(self.fd, 0)
                os.lseek(self.fd, 0, os.SEEK_SET)
                self.written = 0
            os.write(self.fd, data)
            self.written += len(data)
        except OSError:
            pass             # nowhere left to say it: the log must never stop the loop


class Logger:
    def __init__(self, prog: str, level: int = INFO, start: float | None = None) -> None:
        self.prog = prog
        self.level = level
        self.clock = time.monotonic
        self.start = self.clock() if start is None else start     # the file counts from it
        self.stream: _Sink | None = None
        self.file: _Sink | None = None
        self.syslog: socket.socket | None = None
        self.rate: dict[str, tuple[float, int]] = {}
        self.suppressed: dict[str, int] = {}
        self.said: set[str] = set()

    def to_fd(self, fd: int | None) -> None:
        """Plain lines to ``fd`` (standard error), or none with None."""
        self.stream = None if fd is None else _Sink(fd)
        self.syslog = None

    def to_file(self, fd: int | None, log_size: int | None = None) -> None:
        """Stamped lines to ``fd`` (the ``-l`` file) too, or no more with None."""
        self.file = None if fd is None else _Sink(fd, log_size)

    def to_syslog(self, sock: socket.socket | None) -> None:
        self.stream, self.syslog = None, sock

    def header(self, executable: str) -> None:
        """The file's first line for this run: who writes what follows."""
        if self.file is not None:
            self.file.write(f"{self.prog} {__version__}: {executable} ({os.getpid()})\n"
                            .encode(errors="replace"))

    def log(self, level: int, message: str) -> None:
        if level > self.level:
            return
        if self.syslog is not None:
            self._send_syslog(level, message)
        elif self.stream is not None:
            self.stream.write(stream_line(self.prog, level, message))
        if self.file is not None:
            self.file.write(file_lines(level, message, self.clock() - self.start))

    def _send_syslog(self, level: int, message: str) -> None:
        assert self.syslog is not None
        facility_daemon = 3 << 3
        try:
            line = f"<{facility_daemon | level}>{self.prog}: {message}"
            self.syslog.send(line.encode(errors="replace"))
        except OSError:
            pass

    def error(self, message: str) -> None:
        self.log(ERROR, message)

    def warning(self, message: str) -> None:
        self.log(WARNING, message)

    def info(self, message: str) -> None:
        self.log(INFO, message)

    def debug(self, message: str) -> None:
        self.log(DEBUG, message)

    def ratelimited(self, key: str, level: int, message: str, now: float | None = None) -> None:
        """At most RATE_BURST messages per key per RATE_INTERVAL seconds."""
        now = time.monotonic() if now is None else now
        start, count = self.rate.get(key, (now, 0))
        if now - start >= RATE_INTERVAL:
            missed = self.suppressed.pop(key, 0)
            if missed:
                self.log(level, f"{missed} more '{key}' messages suppressed")
            start, count = now, 0
        if count < RATE_BURST:
            self.log(level, message)
        else:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
        self.rate[key] = (start, count + 1)

    def once(self, key: str, level: int, message: str) -> None:
        """Only the first time for ``key``: a condition that lasts (a sysctl
        refusing us) said again on every packet is noise on the user's
        terminal; the caller counts the rest."""
        if key not in self.said:
            self.said.add(key)
            self.log(level, message)


def stream_line(prog: str, level: int, message: str) -> bytes:
    label = "" if level == INFO else f"{_NAMES[level]}: "
    return f"{prog}: {label}{message}\n".encode(errors="replace")


def file_lines(level: int, message: str, elapsed: float) -> bytes:
    """``SECONDS.FRACTION: LEVEL:  text``, one line per line of ``message``."""
    prefix = f"{max(elapsed, 0.0):.4f}: {_FILE_LABELS[level]:<{_LABEL_WIDTH}}"
    return "".join(f"{prefix}{line}\n" for line in message.split("\n")).encode(errors="replace")


def describe_exception(exc: BaseException) -> str:
    """Type, message and frames, without reading source files (the jailed
    worker has no filesystem, and seccomp kills it on open())."""
    parts = [f"{type(exc).__name__}: {exc}"]
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        parts.append(f"  at {code.co_filename}:{tb.tb_lineno} in {code.co_name}")
        tb = tb.tb_next
    return "\n".join(parts)


def startup_block(config: Config, net: Network, templates: tuple[str | None, str | None],
                  ns_ifname: str | None = None) -> list[str]:
    """What the guest is given, in the sections passt prints at start-up:
    the host interfaces it was taken from (``templates``: IPv4's, IPv6's),
    addresses, what DHCP, NDP and DHCPv6 hand out, resolvers, and the
    forwarded ports."""
    lines = [f"Template interface: {_templates(*templates)}"]
    if ns_ifname:
        lines.append(f"Namespace interface: {ns_ifname}")
    lines += ["MAC:", f"    host: {net.our_mac.hex(':')}"]
    if net.guest_mac:
        lines.append(f"    guest: {net.guest_mac.hex(':')}")
    lines.append(f"MTU: {net.mtu}" + (" (not advertised)" if config.mtu == 0 else ""))
    loopback4, loopback6 = _loopback_aliases(config, net)
    if net.ipv4 is not None:
        lines += _ipv4_section(config, net, loopback4)
    if net.ipv6 is not None:
        lines += _ipv6_section(config, net, loopback6)
    if net.search:
        lines += ["DNS search list:"] + [f"    {name}" for name in net.search]
    if config.dns_forward:
        lines += ["DNS forward:", f"    {' '.join(config.dns_forward)} -> "
                                  f"{' '.join(net.host_resolvers) or 'no resolver'}"]
    return lines + _forwarding_section(config)


def _templates(v4: str | None, v6: str | None) -> str:
    named = [f"{name} ({family})" for name, family in ((v4, "IPv4"), (v6, "IPv6")) if name]
    return ", ".join(named) or "none, local mode"


def _loopback_aliases(config: Config, net: Network) -> tuple[bytes | None, bytes | None]:
    """The guest's addresses for the host's loopback (as ``fwd.AddressMap``)."""
    if config.map_host_loopback:
        mapped = ipaddress.ip_address(config.map_host_loopback).packed
        return (mapped, None) if len(mapped) == 4 else (None, mapped)
    if config.no_map_gw:
        return None, None
    return (net.ipv4.gateway if net.ipv4 else None, net.ipv6.gateway if net.ipv6 else None)


def _ipv4_section(config: Config, net: Network, loopback: bytes | None) -> list[str]:
    params = net.ipv4
    assert params is not None
    mask = ipaddress.IPv4Network(f"0.0.0.0/{params.prefix_len}").netmask
    lines = ["IPv4:" if config.no_dhcp else "DHCP:", f"    assign: {_ip(params.addr)}",
             f"    mask: {mask}", f"    router: {_ip(params.gateway)}"]
    if loopback:
        lines.append(f"    NAT to host 127.0.0.1: {_ip(loopback)}")
    if params.dns:
        lines += ["DNS:"] + [f"    {_ip(a)}" for a in params.dns]
    return lines


def _ipv6_section(config: Config, net: Network, loopback: bytes | None) -> list[str]:
    params = net.ipv6
    assert params is not None
    served = not (config.no_ndp and config.no_dhcpv6)
    lines = ["NDP/DHCPv6:" if served else "IPv6:", f"    assign: {_ip(params.addr)}",
             f"    router: {_ip(params.gateway)}",
             f"    our link-local: {_ip(net.our_link_local)}"]
    if loopback:
        lines.append(f"    NAT to host ::1: {_ip(loopback)}")
    if params.dns:
        lines += ["DNS:"] + [f"    {_ip(a)}" for a in params.dns]
    return lines


def _forwarding_section(config: Config) -> list[str]:
    """The forwarded ports, by protocol and direction ("none" left out)."""
    lines = []
    for label, forwarding, off in (
            ("TCP from the host", config.tcp_ports, config.no_tcp),
            ("UDP from the host", config.udp_ports, config.no_udp),
            ("TCP from the namespace", config.tcp_ns, config.no_tcp),
            ("UDP from the namespace", config.udp_ns, config.no_udp)):
        if not off and (forwarding.mode != "none" or forwarding.rules):
            lines.append(f"    {label}: {_forwards(forwarding)}")
    return ["Forwarding:"] + lines if lines else []


def _ip(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def _forwards(forwarding: Forwarding) -> str:
    if forwarding.mode in ("none", "auto") and not forwarding.rules:
        return forwarding.mode
    rules = [(f"{r.address or '*'}{'%' + r.interface if r.interface else ''}/"
              f"{r.first}" + (f"-{r.last}" if r.last != r.first else "")
              + (f":{r.target}" if r.target != r.first else "")) for r in forwarding.rules]
    shown = ", ".join(rules[:8]) + (f" and {len(rules) - 8} more" if len(rules) > 8 else "")
    return f"{forwarding.mode}: {shown}" if forwarding.mode != "spec" else shown
