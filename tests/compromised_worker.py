"""Test-only entry point: the real broker and the real worker, with an
attacker inside the worker.

Run as ``compromised_worker.py pasta|passt ARGS...``: the real command line
goes through the real broker (namespaces, fds, jail, handoff) and the real
worker (``worker.main.run``: close every other fd, receive the handoff, set
up the loop and the handlers).  The one substitution: the worker's filter is
wrapped, so that right before the worker arms it, with every fd it will
ever hold open, the wrapper forks one child per escape attempt; each child
arms the real filter and makes one raw system call.  The worker then arms
the filter itself and serves as usual.

The outcomes go to stderr (kept with ``-f``) as one line: ``REPORT`` and a
JSON object with ``fds`` (each open fd and its file type, by fstat before
the filter) and ``attempts`` (name, fd, outcome: ``sigsys``, ``ok`` or
``errno:NAME``).  x86_64 only: the attempts are raw syscall numbers.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import stat
import sys
from collections.abc import Callable

from passt_sep.system import sandbox

REPORT = "REPORT "
MAX_FD = 1024
ERRNO_BASE = 100                          # a child exits with ERRNO_BASE + errno

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

NR = {"openat": 257, "openat2": 437, "unlinkat": 263, "mkdirat": 258, "mknodat": 259,
      "renameat": 264, "renameat2": 316, "linkat": 265, "symlinkat": 266, "fchmodat": 268,
      "fchownat": 260, "newfstatat": 262, "readlinkat": 267, "faccessat": 269,
      "execveat": 322, "fchdir": 81, "name_to_handle_at": 303, "open_by_handle_at": 304,
      "setns": 308, "pidfd_getfd": 438, "pidfd_send_signal": 424, "ioctl": 16, "fcntl": 72,
      "inotify_add_watch": 254, "mmap": 9, "socket": 41, "socketpair": 53, "setsockopt": 54,
      "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "mprotect": 10,
      "pkey_mprotect": 329, "mremap": 25, "madvise": 28, "unshare": 272, "clone": 56,
      "clone3": 435, "execve": 59, "bpf": 321, "keyctl": 250, "userfaultfd": 323,
      "io_uring_setup": 425, "perf_event_open": 298, "memfd_create": 319, "chroot": 161,
      "mount": 165, "kill": 62, "prctl": 157, "seccomp": 317, "pipe2": 293, "futex": 202,
      "splice": 275, "sendto": 44, "recvfrom": 45, "clock_gettime": 228, "gettimeofday": 96,
      "time": 201, "open": 2, "personality": 135, "setuid": 105, "capset": 126}

BUF = ctypes.create_string_buffer(4096)  # scratch space for what the kernel writes back
AT_EMPTY_PATH = 0x1000
O_DIRECTORY_RDONLY = 0o200000 | 0o2000000   # O_DIRECTORY | O_CLOEXEC
PROT_RW, PROT_RX = 3, 5
MAP_PRIVATE_ANON, MAP_SHARED_ANON = 0x22, 0x21
AF_INET, AF_INET6, AF_UNIX, AF_NETLINK, AF_PACKET = 2, 10, 1, 16, 17
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET, SOCK_PACKET = 1, 2, 3, 5, 10
SOL_SOCKET, SOL_TCP, SO_ATTACH_FILTER, SO_DEBUG, TCP_ULP = 1, 6, 26, 1, 31


def _path(text: str) -> ctypes.c_char_p:
    return ctypes.c_char_p(text.encode())


def _sys(name: str, *args: object) -> Callable[[], int]:
    """One raw system call, made later in the child."""
    def call() -> int:
        return _syscall(ctypes.c_long(NR[name]), *[
            ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return call


def _on_socket(name: str, kind: int, *args: object) -> Callable[[], int]:
    """``name(fd, *args)`` on a fresh IPv4 socket of an allowed ``kind``."""
    def call() -> int:
        fd = _sys("socket", AF_INET, kind, 0)()
        if fd < 0:
            return fd
        return _sys(name, fd, *args)()
    return call


def path_attempts(fd: int) -> dict[str, Callable[[], int]]:
    """Every way to reach a path, or another process, through ``fd``."""
    return {
        "openat ..": _sys("openat", fd, _path(".."), O_DIRECTORY_RDONLY, 0),
        "openat2 ..": _sys("openat2", fd, _path(".."), BUF, 24),
        "unlinkat victim": _sys("unlinkat", fd, _path("victim"), 0),
        "mkdirat": _sys("mkdirat", fd, _path("escape-dir"), 0o700),
        "mknodat": _sys("mknodat", fd, _path("escape-node"), stat.S_IFREG | 0o600, 0),
        "renameat victim": _sys("renameat", fd, _path("victim"), fd, _path("escape-renamed")),
        "renameat2 victim": _sys("renameat2", fd, _path("victim"), fd, _path("escape-renamed"),
                                 0),
        "linkat victim": _sys("linkat", fd, _path("victim"), fd, _path("escape-link"), 0),
        "symlinkat": _sys("symlinkat", _path("/"), fd, _path("escape-symlink")),
        "fchmodat victim": _sys("fchmodat", fd, _path("victim"), 0o777, 0),
        "fchownat victim": _sys("fchownat", fd, _path("victim"), 0, 0, 0),
        "newfstatat ..": _sys("newfstatat", fd, _path(".."), BUF, 0),
        "readlinkat": _sys("readlinkat", fd, _path(""), BUF, 64),
        "faccessat ..": _sys("faccessat", fd, _path(".."), 0),
        "execveat fd": _sys("execveat", fd, _path(""), None, None, AT_EMPTY_PATH),
        "fchdir": _sys("fchdir", fd),
        "name_to_handle_at": _sys("name_to_handle_at", fd, _path(""), BUF, BUF, AT_EMPTY_PATH),
        "open_by_handle_at": _sys("open_by_handle_at", fd, BUF, 0),
        "setns": _sys("setns", fd, 0),
        "pidfd_getfd": _sys("pidfd_getfd", fd, 0, 0),
        "pidfd_send_signal": _sys("pidfd_send_signal", fd, signal.SIGKILL, None, 0),
        "ioctl NS_GET_USERNS": _sys("ioctl", fd, 0xB701, 0),
        "ioctl TUNSETIFF": _sys("ioctl", fd, 0x400454CA, BUF),
        "fcntl F_NOTIFY": _sys("fcntl", fd, 1026, 0x80000000),
        "inotify_add_watch /": _sys("inotify_add_watch", fd, _path("/"), 0xFFF),
        "mmap shared": _sys("mmap", 0, 4096, PROT_RW, 0x1, fd, 0),
        "mmap exec": _sys("mmap", 0, 4096, PROT_RX, 0x2, fd, 0),
    }


OTHER_ATTEMPTS: dict[str, Callable[[], int]] = {
    "open /": _sys("open", _path("/"), O_DIRECTORY_RDONLY, 0),
    "socket inet raw": _sys("socket", AF_INET, SOCK_RAW, 1),
    "socket inet6 raw": _sys("socket", AF_INET6, SOCK_RAW, 58),
    "socket inet packet": _sys("socket", AF_INET, SOCK_PACKET, 0x300),
    "socket inet seqpacket": _sys("socket", AF_INET, SOCK_SEQPACKET, 132),
    "socket inet stream sctp": _sys("socket", AF_INET, SOCK_STREAM, 132),
    "socket inet dgram udplite": _sys("socket", AF_INET, SOCK_DGRAM, 136),
    "socket packet": _sys("socket", AF_PACKET, SOCK_RAW, 0x300),
    "socket netlink": _sys("socket", AF_NETLINK, SOCK_RAW, 0),
    "socket unix": _sys("socket", AF_UNIX, SOCK_STREAM, 0),
    "socketpair unix": _sys("socketpair", AF_UNIX, SOCK_STREAM, 0, BUF),
    "setsockopt SO_ATTACH_FILTER": _on_socket("setsockopt", SOCK_STREAM, SOL_SOCKET,
                                              SO_ATTACH_FILTER, BUF, 16),
    "setsockopt SO_DEBUG": _on_socket("setsockopt", SOCK_STREAM, SOL_SOCKET, SO_DEBUG, BUF, 4),
    "setsockopt TCP_ULP tls": _on_socket("setsockopt", SOCK_STREAM, SOL_TCP, TCP_ULP,
                                         _path("tls"), 3),
    "ptrace attach": _sys("ptrace", 16, 1, 0, 0),
    "process_vm_readv": _sys("process_vm_readv", 1, BUF, 1, BUF, 1, 0),
    "process_vm_writev": _sys("process_vm_writev", 1, BUF, 1, BUF, 1, 0),
    "mmap exec anonymous": _sys("mmap", 0, 4096, PROT_RX, MAP_PRIVATE_ANON, -1, 0),
    "mmap shared anonymous": _sys("mmap", 0, 4096, PROT_RW, MAP_SHARED_ANON, -1, 0),
    "mprotect exec": _sys("mprotect", ctypes.addressof(BUF) & ~0xFFF, 4096, 7),
    "pkey_mprotect exec": _sys("pkey_mprotect", ctypes.addressof(BUF) & ~0xFFF, 4096, 7, -1),
    "mremap fixed": _sys("mremap", ctypes.addressof(BUF) & ~0xFFF, 4096, 4096, 3, 0x10000),
    "madvise mergeable": _sys("madvise", ctypes.addressof(BUF) & ~0xFFF, 4096, 12),
    "unshare user": _sys("unshare", 0x10000000),
    "clone": _sys("clone", 17, 0, 0, 0, 0),
    "clone3": _sys("clone3", BUF, 88),
    "execve": _sys("execve", _path("/bin/sh"), None, None),
    "bpf": _sys("bpf", 0, BUF, 72),
    "keyctl": _sys("keyctl", 0, -3, 0),
    "userfaultfd": _sys("userfaultfd", 0),
    "io_uring_setup": _sys("io_uring_setup", 1, BUF),
    "perf_event_open": _sys("perf_event_open", BUF, 0, -1, -1, 0),
    "memfd_create": _sys("memfd_create", _path("x"), 0),
    "chroot": _sys("chroot", _path("/")),
    "mount": _sys("mount", _path("none"), _path("/"), _path("tmpfs"), 0, None),
    "kill 1": _sys("kill", 1, 0),
    "prctl": _sys("prctl", 4, 1, 0, 0, 0),
    "seccomp": _sys("seccomp", 0, 0, None),
    "personality": _sys("personality", 0xFFFFFFFF),
    "setuid 0": _sys("setuid", 0),
    "capset": _sys("capset", BUF, BUF),
    "pipe2 notification": _sys("pipe2", BUF, 0x80),
    "futex lock_pi": _sys("futex", BUF, 6, 0, None, None, 0),
    "futex cmp_requeue_pi": _sys("futex", BUF, 12, 1, None, BUF, 0),
    "sendto MSG_OOB": _on_socket("sendto", SOCK_DGRAM, BUF, 1, 0x1, None, 0),
    "clock_gettime cpu clock of pid 1": _sys("clock_gettime", (~1 << 3) | 2, BUF),
}

# allowed, as the worker's own traffic needs them: proof that the harness
# tells an allowed call from a refused one
CONTROLS: dict[str, Callable[[], int]] = {
    "socket inet stream": _sys("socket", AF_INET, SOCK_STREAM | 0o4000 | 0o2000000, 0),
    "socket inet6 dgram": _sys("socket", AF_INET6, SOCK_DGRAM, 0),
    "mmap private anonymous": _sys("mmap", 0, 4096, PROT_RW, MAP_PRIVATE_ANON, -1, 0),
    "clock_gettime monotonic": _sys("clock_gettime", 1, BUF),
    "clock_gettime realtime": _sys("clock_gettime", 0, BUF),
    "gettimeofday": _sys("gettimeofday", BUF, None),
    "time": _sys("time", None),
}


def open_fds() -> dict[int, str]:
    """Each open fd and its file type, as the worker holds them."""
    kinds = {}
    for fd in range(MAX_FD):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        kinds[fd] = _kind(mode)
    return kinds


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISCHR, "chr"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISFIFO, "fifo"), (stat.S_ISLNK, "link"),
                       (stat.S_ISBLK, "blk")):
        if test(mode):
            return name
    return "anon"


def attempt(real: sandbox.Prepared, call: Callable[[], int]) -> str:
    """Fork; the child arms the real filter and makes the call."""
    pid = os.fork()
    if pid == 0:
        try:
            real.load()
            result = call()
            os._exit(0 if result >= 0 else ERRNO_BASE + min(ctypes.get_errno(), 150))
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return "sigsys" if signum == signal.SIGSYS else f"signal:{signum}"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return "ok"
    if code >= ERRNO_BASE:
        return f"errno:{errno.errorcode.get(code - ERRNO_BASE, code - ERRNO_BASE)}"
    return f"exit:{code}"


class Attacker:
    """Stands in for the worker's ``Prepared`` filter: ``load`` runs the
    attempts, reports, then arms the real filter in the worker itself."""

    def __init__(self, real: sandbox.Prepared) -> None:
        self.real = real

    def load(self) -> None:
        fds = open_fds()
        results = []
        for fd in fds:
            for name, call in path_attempts(fd).items():
                results.append({"name": name, "fd": fd, "outcome": attempt(self.real, call)})
        for group, attempts in (("escape", OTHER_ATTEMPTS), ("control", CONTROLS)):
            for name, call in attempts.items():
                results.append({"name": name, "fd": None, "group": group,
                                "outcome": attempt(self.real, call)})
        report = {"fds": {str(fd): kind for fd, kind in fds.items()}, "attempts": results}
        os.write(2, (REPORT + json.dumps(report) + "\n").encode())
        self.real.load()


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    real_prepare = sandbox.prepare

    def prepare(name: str, features: frozenset[str] = frozenset()) -> object:
        prepared = real_prepare(name, features)
        return Attacker(prepared) if name == "worker" else prepared

    sandbox.prepare = prepare
    _syscall(ctypes.c_long(NR["time"]), None)   # ctypes binds its call path before the jail
    from passt_sep import cli
    return cli.main([f"{mode}-sep", *args])


if __name__ == "__main__":
    sys.exit(main())
