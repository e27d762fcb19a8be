"""Every socket and file the worker will use, opened before the jail.

Each opener returns ``FdEntry`` records for the handoff manifest, or raises
``SetupError`` with one line saying what is wrong and what to do.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from collections.abc import Iterator

from ..handoff import FdEntry, ListenerMeta, LogMeta, NetnsWatchMeta, ProcNetMeta, Role
from ..pcap import file_header
from ..ports import Forwarding
from ..system import linux
from ..system.nssource import LOOPBACK
from ..system.portsock import bound_socket, forwarded_receive_buffer

OUTPUT_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class SetupError(Exception):
    """Something the worker needs cannot be opened."""


def families(ipv4: bool, ipv6: bool) -> list[int]:
    return [f for f, on in ((socket.AF_INET, ipv4), (socket.AF_INET6, ipv6)) if on]


def forward_listeners(forwarding: Forwarding, kind: int, ipv4: bool, ipv6: bool,
                      quiet_conflicts: bool = False, role: Role | None = None,
                      loopback: bool = False, freebind: bool = False) -> list[FdEntry]:
    """Listening (TCP) or bound (UDP) sockets for every forwarded port, on
    the wildcard address or, with ``loopback`` (pasta's ``-T``, made in the
    namespace), on 127.0.0.1 and ::1 unless the rule names an address.

    A wildcard port of both families gets one dual-stack socket, as passt's
    (half the fds of one per family); where that cannot be bound (one
    family's port taken, no IPv6 in the kernel), one socket per family, as
    for a single family: a port that is already taken is an error naming
    it, except with ``quiet_conflicts`` (``all``) or an exclusion-only spec,
    where such ports (and those below ip_unprivileged_port_start, without
    the privilege) are skipped as passt does, unless none is left.  UDP
    sockets share ``FORCED_RCVBUF_TOTAL`` of receive buffer (``portsock``).
    """
    quiet_conflicts = quiet_conflicts or forwarding.skip_unavailable
    role = role or (Role.TCP_LISTENER if kind == socket.SOCK_STREAM else Role.UDP_LISTENER)
    entries: list[FdEntry] = []
    wanted = [(port, target, rule, list(_rule_families(rule.address, ipv4, ipv6)))
              for port, target, rule in forwarding.ports()]
    count = sum(len(fams) for *_, fams in wanted)
    buffer, dual_buffer = forwarded_receive_buffer(count), forwarded_receive_buffer(count, 2)
    try:
        for port, target, rule, fams in wanted:
            if len(fams) == 2 and not rule.address and not loopback:
                sock = _dual_stack(kind, rule.interface, port, dual_buffer)
                if sock is not None:
                    entries.append(FdEntry(role, sock.detach(), ListenerMeta(
                        int(socket.AF_INET6), port, target, dual=True)))
                    continue
            for family in fams:
                address = rule.address or (LOOPBACK[family] if loopback else None)
                sock = _bound(family, kind, address, rule.interface, port, quiet_conflicts,
                              freebind, buffer)
                if sock is not None:
                    entries.append(FdEntry(role, sock.detach(),
                                           ListenerMeta(int(family), port, target)))
    except BaseException:
        for entry in entries:
            os.close(entry.fd)
        raise
    if quiet_conflicts and forwarding.rules and not entries:
        proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        raise SetupError(f"no {proto} port of the forwarding spec could be bound")
    return entries


def _rule_families(address: str | None, ipv4: bool, ipv6: bool) -> Iterator[int]:
    if address:
        yield socket.AF_INET6 if ":" in address else socket.AF_INET
        return
    yield from families(ipv4, ipv6)


def _dual_stack(kind: int, interface: str | None, port: int,
                buffer: int) -> socket.socket | None:
    """One socket for both families' wildcard ``port``, or None: then one
    per family, which also says what is wrong, or skips."""
    try:
        return bound_socket(socket.AF_INET6, kind, port, None, interface, False, buffer,
                            force=True, dual=True)
    except OSError:
        return None


def _bound(family: int, kind: int, address: str | None, interface: str | None,
           port: int, quiet_conflicts: bool, freebind: bool, buffer: int) -> socket.socket | None:
    try:
        return bound_socket(family, kind, port, address, interface, freebind, buffer,
                            force=True)
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
        entries.append(FdEntry(Role.PROC_NET, fd, ProcNetMeta(side, table)))
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
    return FdEntry(Role.UNIX_LISTENER, sock.detach()), path


def _default_socket_path() -> str:
    import tempfile  # passt mode only, before the jail: pasta need not load it

    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    for index in range(1, 100):
        path = os.path.join(runtime, f"passt-sep_{index}.socket")
        if not os.path.lexists(path):
            return path
    raise SetupError(f"no free socket path in {runtime}: use -s PATH")


def _remove_stale_socket(path: str) -> None:
    """A socket file nobody listens on any more is left over: remove it.
    Only a socket: anything else at ``path`` is the caller's mistake, and
    removing it could destroy a file (or, through a link, another one)."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SetupError(f"cannot listen on UNIX socket {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(before.st_mode):
        raise SetupError(f"--socket {path}: {_kind(before.st_mode)} is there, not a socket: "
                         "refusing to replace it (remove it or pick another path)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        _unlink_if_same(path, before)
        return
    except OSError:
        return
    finally:
        probe.close()
    raise SetupError(f"UNIX socket {path} is in use by another process")


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return kind
    return "a special file"


def _unlink_if_same(path: str, before: os.stat_result) -> None:
    """Remove ``path`` only if it is still the socket ``before`` describes."""
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
            os.unlink(path)
    except FileNotFoundError:
        pass


class OutputFile:
    """A file the broker opened for the worker (or itself) to write, and
    how to take it back if start-up fails: its directory's fd, which still
    works once the jail has closed, and the file's identity, so that only
    this file is removed (a copy of its fd stays open meanwhile: its inode
    number cannot pass to another file).  The broker holds both until the
    worker serves and then closes them: the worker never gets a directory."""

    def __init__(self, fd: int, path: str, directory: int, name: str, created: bool) -> None:
        self.fd = fd
        self.path = path
        self.created = created
        self._directory = directory
        self._name = name
        self._held = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        info = os.fstat(fd)
        self._identity = (info.st_dev, info.st_ino)

    def remove(self) -> None:
        """Unlink the file if it is still the one opened, then release."""
        if self._directory < 0:
            return
        try:
            info = os.stat(self._name, dir_fd=self._directory, follow_symlinks=False)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self._name, dir_fd=self._directory)
        except FileNotFoundError:
            pass
        finally:
            self.release()

    def release(self) -> None:
        """Keep the file; close the directory fd and the copy."""
        if self._directory >= 0:
            os.close(self._directory)
            os.close(self._held)
            self._directory = self._held = -1


def pcap_file(path: str) -> tuple[FdEntry, OutputFile]:
    output = open_output(path, "--pcap", "capture file", os.O_TRUNC)
    try:
        os.write(output.fd, file_header())
    except OSError as exc:
        _discard(output)
        raise SetupError(f"cannot write capture file {path}: {exc.strerror}") from None
    return FdEntry(Role.PCAP, output.fd), output


def log_file(path: str, start: float) -> tuple[FdEntry, OutputFile]:
    """``start``: the time the worker's lines count from, as the broker's."""
    output = open_output(path, "--log-file", "log file", os.O_APPEND)
    return FdEntry(Role.LOG, output.fd, LogMeta(start)), output


def pid_file(path: str) -> OutputFile:
    return open_output(path, "--pid-file", "pid file", os.O_TRUNC)


def _discard(output: OutputFile) -> None:
    os.close(output.fd)
    if output.created:
        output.remove()
    else:
        output.release()


def netns_watch(path: str) -> FdEntry:
    """inotify on the ``--netns`` file's directory: when the file goes away
    (Podman removes it with the container), the worker exits."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        fd = linux.inotify_watch(directory, linux.IN_DELETE | linux.IN_MOVED_FROM)
    except OSError as exc:
        raise SetupError(f"cannot watch {directory}: {exc.strerror}") from None
    return FdEntry(Role.NETNS_WATCH, fd, NetnsWatchMeta(os.fsencode(name)))


def open_output(path: str, option: str, what: str, flags: int) -> OutputFile:
    """Open ``path`` for writing, never through a symbolic link; a file
    made here is private to its owner (0600) and marked as created.

    Creating with ``O_EXCL`` first tells a new file from an existing one
    (and an existing link, which ``O_NOFOLLOW`` then refuses)."""
    directory, name = os.path.split(os.path.abspath(path))
    if not name:                    # "/"
        raise SetupError(f"cannot open {what} {path}: {os.strerror(errno.EISDIR)}")
    try:
        dir_fd = _above_stdio(os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as exc:
        raise SetupError(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        fd, created = _open_in(dir_fd, name, flags)
    except OSError as exc:
        os.close(dir_fd)
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise SetupError(f"{option} {path}: is a symbolic link, "
                             "refusing to follow it") from None
        raise SetupError(f"cannot open {what} {path}: {exc.strerror}") from None
    return OutputFile(fd, path, dir_fd, name, created)


def _open_in(dir_fd: int, name: str, flags: int) -> tuple[int, bool]:
    for _ in range(3):              # a file that comes and goes meanwhile: look again
        try:
            return os.open(name, OUTPUT_FLAGS | os.O_CREAT | os.O_EXCL | flags, 0o600,
                           dir_fd=dir_fd), True
        except FileExistsError:
            pass
        try:
            return os.open(name, OUTPUT_FLAGS | flags, dir_fd=dir_fd), False
        except FileNotFoundError:
            continue
    raise OSError(errno.EAGAIN, "the file keeps appearing and disappearing")


def _above_stdio(fd: int) -> int:
    """Move ``fd`` above 0-2: the worker keeps whatever is there as stdio."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)
