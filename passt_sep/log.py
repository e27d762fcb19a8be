"""Logging to an fd that was opened before the jail: never touches a path.

Targets: a log file (``-l``; at ``--log-size`` it is truncated and starts
over, since without a path there is nothing to rename it to), stderr
(foreground or ``-e``), or the syslog socket.  Per-packet messages go
through ``ratelimited`` so a flood cannot fill the disk or stall the loop.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config
    from .netparams import Network
    from .ports import Forwarding

ERROR, WARNING, INFO, DEBUG, TRACE = 3, 4, 6, 7, 8
_NAMES = {ERROR: "ERROR", WARNING: "WARNING", INFO: "INFO", DEBUG: "DEBUG", TRACE: "TRACE"}
RATE_INTERVAL = 1.0
RATE_BURST = 5


class Logger:
    def __init__(self, prog: str, level: int = INFO) -> None:
        self.prog = prog
        self.level = level
        self.fd: int | None = None
        self.syslog: socket.socket | None = None
        self.log_size: int | None = None
        self.written = 0
        self.rate: dict[str, tuple[float, int]] = {}
        self.suppressed: dict[str, int] = {}

    def to_fd(self, fd: int | None, log_size: int | None = None) -> None:
        """Log to ``fd``; with ``log_size``, a file is emptied before it would
        grow past it (a pipe or terminal cannot be, and is left unbounded)."""
        self.fd, self.syslog, self.log_size, self.written = fd, None, log_size, 0
        if fd is not None and log_size:
            try:
                self.written = os.lseek(fd, 0, os.SEEK_END)
            except OSError:
                self.log_size = None

    def to_syslog(self, sock: socket.socket | None) -> None:
        self.fd, self.syslog = None, sock

    def log(self, level: int, message: str) -> None:
        if level > self.level:
            return
        if self.syslog is not None:
            self._send_syslog(level, message)
        elif self.fd is not None:
            self._write(f"{self.prog}: {_NAMES[level]}: {message}\n".encode(errors="replace")
                        if level != INFO else f"{self.prog}: {message}\n".encode(errors="replace"))

    def _write(self, data: bytes) -> None:
        assert self.fd is not None
        try:
            if self.log_size and self.written + len(data) > self.log_size:
                os.ftruncate(self.fd, 0)
                os.lseek(self.fd, 0, os.SEEK_SET)
                self.written = 0
            os.write(self.fd, data)
            self.written += len(data)
        except OSError:
            pass             # nowhere left to say it: the log must never stop the loop

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


def config_summary(config: Config, net: Network) -> list[str]:
    """The configuration in force, line by line, for ``-d``: interfaces,
    addresses, gateways, resolvers, search list and forwards."""
    lines = [f"Template interface: {config.interface or 'from the default route'}",
             f"MAC: ours {net.our_mac.hex(':')}"
             + (f", guest {net.guest_mac.hex(':')}" if net.guest_mac else ""),
             f"MTU: {net.mtu}" + (" (not advertised)" if config.mtu == 0 else "")]
    for name, params in (("IPv4", net.ipv4), ("IPv6", net.ipv6)):
        if params is None:
            lines.append(f"{name}: off")
            continue
        lines.append(f"{name}: address {_ip(params.addr)}/{params.prefix_len}, "
                     f"gateway {_ip(params.gateway)}, "
                     f"DNS {' '.join(_ip(a) for a in params.dns) or 'none'}")
    lines.append(f"DNS search: {' '.join(net.search) or 'none'}")
    if config.dns_forward:
        lines.append(f"DNS forward: {' '.join(config.dns_forward)} -> "
                     f"{' '.join(net.host_resolvers) or 'no resolver'}")
    for label, forwarding in (("TCP in", config.tcp_ports), ("UDP in", config.udp_ports),
                              ("TCP out", config.tcp_ns), ("UDP out", config.udp_ns)):
        lines.append(f"{label}: {_forwards(forwarding)}")
    return lines


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
