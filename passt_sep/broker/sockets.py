"""Every socket and file the worker will use, opened before the jail.

Each opener returns ``FdEntry`` records for the handoff manifest, or raises
``SetupError`` with one line saying what is wrong and what to do.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

from .. import linux
from ..handoff import FdEntry
from ..nssource import LOOPBACK
from ..pcap import file_header
from ..ports import Forwarding
from ..portsock import bound_socket, forwarded_receive_buffer


class SetupError(Exception):
    """Something the worker needs cannot be opened."""


def families(ipv4: bool, ipv6: bool) -> list[int]:
    return [f for f, on in ((socket.AF_INET, ipv4), (socket.AF_INET6, ipv6)) if on]


def forward_listeners(forwarding: Forwarding, kind: int, ipv4: bool, ipv6: bool,
                      quiet_conflicts: bool = False, role: str | None = None,
                      loopback: bool = False) -> list[FdEntry]:
    """Listening (TCP) or bound (UDP) sockets for every forwarded port, on
    the wildcard address or, with ``loopback`` (pasta's ``-T``, made in the
    namespace), on 127.0.0.1 and ::1 unless the rule names an address.

    A port that is already taken is an error naming it, except with
    ``quiet_conflicts`` (``all``), where such ports are skipped as passt does.
    UDP sockets share ``FORCED_RCVBUF_TOTAL`` of receive buffer (``portsock``).
    """
    role = role or ("tcp_listener" if kind == socket.SOCK_STREAM else "udp_listener")
    entries: list[FdEntry] = []
    wanted = [(port, target, rule, family) for port, target, rule in forwarding.ports()
              for family in _rule_families(rule.address, ipv4, ipv6)]
    buffer = forwarded_receive_buffer(len(wanted))
    try:
        for port, target, rule, family in wanted:
            address = rule.address or (LOOPBACK[family] if loopback else None)
            sock = _bound(family, kind, address, rule.interface, port, quiet_conflicts, buffer)
            if sock is not None:
                entries.append(FdEntry(role, sock.detach(), {
                    "family": int(family), "port": port, "target": target}))
    except BaseException:
        for entry in entries:
            os.close(entry.fd)
        raise
    return entries


def _rule_families(address: str | None, ipv4: bool, ipv6: bool) -> Iterator[int]:
    if address:
        yield socket.AF_INET6 if ":" in address else socket.AF_INET
        return
    yield from families(ipv4, ipv6)


def _bound(family: int, kind: int, address: str | None, interface: str | None,
           port: int, quiet_conflicts: bool, buffer: int) -> socket.socket | None:
    try:
        return bound_socket(family, kind, port, address, interface, buffer, force=True)
    except OSError as exc:
        if quiet_conflicts and exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return None
        proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        where = f"{address or ('*' if family == socket.AF_INET else '[::]')}:{port}"
        hint = ("is already in use: pick another port or stop what holds it"
                if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc.strerror}")
        raise SetupError(f"{proto} port {where} {hint}") from None


def proc_net_tables(side: str, protocols: list[str]) -> list[FdEntry]:
    """This process's network namespace's tables of ``protocols`` ("tcp",
    "udp"), for ``auto`` forwarding: an open table keeps showing the
    namespace it was opened in."""
    entries = []
    for table in [t for p in protocols for t in (p, p + "6")]:
        try:
            fd = os.open(f"/proc/self/net/{table}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENOENT:       # no IPv6 in this kernel
                continue
            raise SetupError(f"cannot read /proc/net/{table}: {exc.strerror}") from None
        entries.append(FdEntry("proc_net", fd, {"side": side, "table": table}))
    return entries


def unix_listener(path: str | None) -> tuple[FdEntry, str]:
    """passt's guest socket: ``-s PATH`` or a fresh path in the runtime dir."""
    if path is None:
        path = _default_socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        _remove_stale_socket(path)
        sock.bind(path)
        sock.listen(1)
    except OSError as exc:
        sock.close()
        raise SetupError(f"cannot listen on UNIX socket {path}: {exc.strerror}") from None
    sock.setblocking(False)
    return FdEntry("unix_listener", sock.detach(), {"path": path}), path


def _default_socket_path() -> str:
    import tempfile  # passt mode only, before the jail: pasta need not load it

    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    for index in range(1, 100):
        path = os.path.join(runtime, f"passt-sep_{index}.socket")
        if not os.path.exists(path):
            return path
    raise SetupError(f"no free socket path in {runtime}: use -s PATH")


def _remove_stale_socket(path: str) -> None:
    """A socket file nobody listens on any more is left over: remove it."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return
    finally:
        probe.close()
    raise SetupError(f"UNIX socket {path} is in use by another process")


def pcap_file(path: str) -> FdEntry:
    fd = _open_write(path, "capture file", os.O_TRUNC)
    os.write(fd, file_header())
    return FdEntry("pcap", fd, {"path": path})


def log_file(path: str) -> FdEntry:
    return FdEntry("log", _open_write(path, "log file", os.O_APPEND), {"path": path})


def pid_file(path: str) -> int:
    return _open_write(path, "pid file", os.O_TRUNC)


def pidfile_dir(path: str) -> FdEntry:
    """The pid file's directory, so the jailed worker can remove the file."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError(f"cannot open the pid file's directory {directory}: "
                         f"{exc.strerror}") from None
    return FdEntry("pidfile_dir", fd, {"name": name})


def netns_watch(path: str) -> FdEntry:
    """inotify on the ``--netns`` file's directory: when the file goes away
    (Podman removes it with the container), the worker exits."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        fd = linux.inotify_watch(directory, linux.IN_DELETE | linux.IN_MOVED_FROM)
    except OSError as exc:
        raise SetupError(f"cannot watch {directory}: {exc.strerror}") from None
    return FdEntry("netns_watch", fd, {"name": name})


def _open_write(path: str, what: str, mode: int) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | mode, 0o644)
    except OSError as exc:
        raise SetupError(f"cannot open {what} {path}: {exc.strerror}") from None
