"""User and network namespaces: create them, join them, work inside them.

``setns()`` into a user namespace is refused to a multi-threaded process and
cannot be undone, and a rootless process cannot come back to the host's
network namespace once it has left it.  So everything that must happen
inside the target namespace (creating the tap, configuring addresses,
opening its /proc/net tables, making sockets there) runs in a forked
helper that enters the namespace, does the work, sends the results and fds
back over SCM_RIGHTS and exits: the netlink helper (``netlink.py``), which
calls ``forwarding_inside`` once the tap is up.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py's enums cost 1 ms of start-up
import fcntl
import os
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Config, Mode
from ..handoff import FdEntry, Role
from ..ports import Forwarding
from ..system import fdpass, linux

NETNS_RUN_DIR = "/run/netns"


class NamespaceError(Exception):
    """A namespace could not be created, found or entered."""


def create_user_namespace() -> None:
    """Move this process into a new user namespace where it is root.

    Our own uid and gid map to 0, which gives the capabilities needed to
    create network and mount namespaces and a tap device inside them.
    """
    uid, gid = os.geteuid(), os.getegid()
    try:
        linux.unshare(linux.CLONE_NEWUSER)
    except OSError as exc:
        raise NamespaceError(
            f"cannot create a user namespace ({exc.strerror}): enable unprivileged user "
            "namespaces (sysctl kernel.unprivileged_userns_clone=1, "
            "user.max_user_namespaces > 0)") from None
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:   # the codec loaded already
        handle.write(text)


@dataclass
class Target:
    """The network namespace passt-sep serves, and the user namespace that
    owns it when we must enter that first."""

    netns_fd: int
    userns_fd: int | None = None
    holder: CommandHolder | None = None
    path: str | None = None      # --netns file, watched for removal
    pidfd: int | None = None     # PID mode: the process whose namespace it is


# -- a new namespace with a command inside ---------------------------------------

@dataclass
class Prelude:
    """Who started us, seen before any user namespace of ours, and in
    pasta's command mode the command's namespaces, made by ``prelude``."""

    real_root: bool                  # root in the host's user namespace
    caller: tuple[int, int]          # uid and gid
    own_userns: bool = False
    holder: CommandHolder | None = None
    error: Exception | None = None   # the broker raises it where it made them


def prelude(config: Config) -> Prelude:
    """Pasta's command mode: a user namespace of our own (unless real
    root) and the parked command in a new network namespace, made right
    after the netlink helper is forked (``cli.main``), before the broker
    imports most of its code: a fork made later shares a larger process,
    whose pages the broker then copies as it writes them.  The broker
    waits for the namespace later (``command_target``)."""
    found = Prelude(os.geteuid() == 0 and in_initial_user_namespace(), (os.getuid(), os.getgid()))
    if config.mode != Mode.PASTA or config.netns or config.target_pid is not None:
        return found
    try:
        if not found.real_root:
            create_user_namespace()
            found.own_userns = True
        found.holder = start_command(list(config.command)
                                     or [os.environ.get("SHELL") or "/bin/sh"])
    except (NamespaceError, OSError) as exc:
        found.error = exc
    return found


class CommandHolder:
    """The pasta command, forked into a new network namespace and parked
    until the worker serves it; then released to exec the command."""

    def __init__(self, pid: int, release_fd: int, ready_fd: int = -1) -> None:
        self.pid = pid
        self.release_fd = release_fd
        self.ready_fd = ready_fd    # until ``command_target`` has read it

    def release(self) -> None:
        os.write(self.release_fd, b"go")
        os.close(self.release_fd)
        self.release_fd = -1

    def abandon(self) -> None:
        """Let the parked child exit without running the command."""
        for fd in (self.release_fd, self.ready_fd):
            if fd >= 0:
                os.close(fd)
        self.release_fd = self.ready_fd = -1
        reap(self.pid)


def start_command(command: list[str]) -> CommandHolder:
    """Fork a child into a new network namespace that will exec ``command``;
    ``command_target`` waits until the namespace exists.

    A command that cannot be run is an error here, before anything starts,
    as with pasta (not the shell's silent 127 once the worker serves)."""
    _check_command(command[0])
    go_read, go_write = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        os.close(ready_read)
        _parked_child(command, go_read, ready_write)
    os.close(go_read)
    os.close(ready_write)
    return CommandHolder(pid, go_write, ready_read)


def command_target(holder: CommandHolder) -> Target:
    """The command's network namespace, once its child has made it (its
    caller abandons the holder if this fails)."""
    status = os.read(holder.ready_fd, 256)
    os.close(holder.ready_fd)
    holder.ready_fd = -1
    if status != b"ok":
        reason = status.decode(errors="replace")
        raise NamespaceError(f"cannot create a network namespace: {reason}")
    netns_fd = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return Target(netns_fd, holder=holder)


def _check_command(name: str) -> None:
    path = name if "/" in name else _on_path(name)
    if path is None or not os.path.exists(path):
        raise NamespaceError(f"Failed to start command {name}: No such file or directory")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise NamespaceError(f"Failed to start command {name}: Permission denied")


def _on_path(name: str) -> str | None:
    """The first file ``name`` in ``$PATH`` (as execvp will look), whether
    it may be run or not: that is for ``_check_command`` to say.  Not
    shutil.which: its module (with bz2, lzma, fnmatch) is start-up time."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.path.exists(path) and not os.path.isdir(path):
            return path
    return None


def _parked_child(command: list[str], go_read: int, ready_write: int) -> None:
    try:
        linux.unshare(linux.CLONE_NEWNET)
        os.set_inheritable(go_read, False)
        os.write(ready_write, b"ok")
        os.close(ready_write)
        if os.read(go_read, 2) != b"go":
            os._exit(0)
        os.close(go_read)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.execvp(command[0], command)
    except OSError as exc:
        message = f"Failed to start command {command[0]}: {exc.strerror}"
        try:
            os.write(ready_write, message.encode())
        except OSError:          # released already: the caller's stderr is still ours
            os.write(2, f"pasta-sep: {message}\n".encode(errors="replace"))
        os._exit(1)
    os._exit(1)


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# -- an existing namespace ------------------------------------------------------------

def open_existing(netns: str | None, pid: int | None, userns: str | None) -> Target:
    """Open ``--netns PATH|NAME`` or the namespaces of process ``pid``.

    A namespace named through a process (``PID``, or a path under
    ``/proc/PID/``) lives as long as that process, which inotify cannot
    watch: a pidfd of the process stands in for the file watch.  It is
    opened before the namespace, so a recycled pid cannot swap the process
    under us unnoticed.
    """
    if pid is None:
        assert netns is not None
        netns_path = netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)
        pid = process_of(netns_path)
    else:
        netns_path = f"/proc/{pid}/ns/net"
        userns = userns or f"/proc/{pid}/ns/user"
    pidfd = _pidfd(pid) if pid is not None else None
    netns_fd = _open_ns(netns_path, "network")
    userns_fd = _open_ns(userns, "user") if userns else None
    return Target(netns_fd, userns_fd, path=netns_path if pid is None else None, pidfd=pidfd)


_PROC_NS = r"/proc/(\d+)(/task/\d+)?/ns/net"     # compiled when first used


def process_of(netns_path: str) -> int | None:
    """The pid in a ``/proc/PID/ns/net`` path, or None for any other path."""
    match = re.fullmatch(_PROC_NS, os.path.normpath(netns_path))
    return int(match.group(1)) if match else None


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except OSError as exc:
        raise NamespaceError(f"cannot watch process {pid}: {exc.strerror}") from None


NS_GET_NSTYPE = 0xB703
NS_TYPES = {"network": linux.CLONE_NEWNET, "user": linux.CLONE_NEWUSER}


def _open_ns(path: str, kind: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NamespaceError(f"cannot open {kind} namespace {path}: {exc.strerror}") from None
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        nstype = None
    if nstype != NS_TYPES[kind]:
        os.close(fd)
        raise NamespaceError(f"{path} is not a {kind} namespace")
    return fd


# -- working inside ---------------------------------------------------------------------

def in_initial_user_namespace() -> bool:
    """The initial user namespace maps every uid onto itself."""
    try:
        with open("/proc/self/uid_map", encoding="utf-8") as handle:
            return handle.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def spawn_inside(target: Target, serve: Callable[[socket.socket], None]) -> tuple[int, int]:
    """Leave a long-lived process in the target namespace running ``serve``
    on one end of a socket pair; the pid and the other end's fd."""
    def child(theirs: socket.socket) -> None:
        try:
            enter(target)
            _detach_stdio()
            linux.close_all_except({theirs.fileno()})
            serve(theirs)
        except BaseException as exc:  # stderr is still the caller's: say why
            os.write(2, f"ns socket source: {exc}\n".encode(errors="replace"))

    pid, ours = fdpass.fork_peer(child)
    return pid, ours.detach()


def _detach_stdio() -> None:
    """A long-lived helper must not hold the caller's terminal or pipes
    (a daemon's caller waits for them to close); it reports over its socket."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def enter(target: Target) -> None:
    if target.userns_fd is not None and not same_namespace(target.userns_fd, "user"):
        linux.setns(target.userns_fd, linux.CLONE_NEWUSER)
    linux.setns(target.netns_fd, linux.CLONE_NEWNET)


def report_failure(sock: socket.socket, exc: BaseException) -> None:
    """A helper's last words: why it failed, as ``{"error": message}``."""
    message = str(exc) or repr(exc)
    if os.environ.get("PASST_SEP_DEBUG"):
        import traceback  # only here: it is start-up time for every run
        message += "\n" + traceback.format_exc()
    try:
        fdpass.send(sock, {"error": message}, [])
    except OSError:
        pass


def enter_user_namespace(fd: int) -> None:
    """Join a user namespace for good (this process must be single-threaded)."""
    linux.setns(fd, linux.CLONE_NEWUSER)


NS_GET_PARENT = 0xB702
NS_GET_OWNER_UID = 0xB704


def owner_uid(userns_fd: int) -> int:
    """The uid that may join user namespace ``userns_fd`` without any
    capability: the owner of its ancestor that is a child of ours.

    ``setns`` asks for CAP_SYS_ADMIN in the namespace joined, and the uid
    that created a user namespace holds every capability in it and in all
    its descendants, from its parent namespace, whatever its own
    capabilities.  For a namespace made right under ours (a rootless
    container's) that is the namespace's own owner.
    """
    fd = os.dup(userns_fd)
    try:
        while True:
            parent = fcntl.ioctl(fd, NS_GET_PARENT)
            if same_namespace(parent, "user"):
                os.close(parent)
                break
            os.close(fd)
            fd = parent
        return struct.unpack("I", fcntl.ioctl(fd, NS_GET_OWNER_UID, bytes(4)))[0]
    finally:
        os.close(fd)


def same_namespace(fd: int, kind: str) -> bool:
    """Whether namespace ``fd`` is the one this process is in already."""
    mine = os.stat(f"/proc/self/ns/{kind}")
    theirs = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


# -- pasta's forwarding, inside -------------------------------------------------------

def forwarding_inside(config: Config) -> list[FdEntry]:
    """pasta's ``-T`` and ``-U``: sockets on the namespace's loopback; for
    ``auto`` in either direction, the namespace's /proc/net tables.  Made
    by a process in the target namespace with its loopback up."""
    from . import sockets
    v4, v6 = not config.ipv6_only, not config.ipv4_only
    entries = []
    for forwarding, kind, role in ns_static_forwards(config):
        entries += sockets.forward_listeners(forwarding, kind, v4, v6, role=role, loopback=True)
    auto = auto_protocols(config)
    if auto:
        entries += sockets.proc_net_tables("ns", auto)
    return entries


def ns_static_forwards(config: Config) -> list[tuple[Forwarding, int, Role]]:
    static = []
    if not config.no_tcp and config.tcp_ns.mode == "spec":
        static.append((config.tcp_ns, socket.SOCK_STREAM, Role.TCP_NS_LISTENER))
    if not config.no_udp and config.udp_ns.mode == "spec":
        static.append((config.udp_ns, socket.SOCK_DGRAM, Role.UDP_NS_LISTENER))
    return static


def auto_protocols(config: Config) -> list[str]:
    """The protocols forwarded ``auto`` one way or the other."""
    protocols = []
    if not config.no_tcp and "auto" in (config.tcp_ns.mode, config.tcp_ports.mode):
        protocols.append("tcp")
    if not config.no_udp and "auto" in (config.udp_ns.mode, config.udp_ports.mode):
        protocols.append("udp")
    return protocols
