"""Test-only entry point: close the real jail and arm the real worker filter,
then make one system call named on the command line.

``sandbox_probe.py CALL precompiled`` arms the program compiled at install
time (exit status 3 if there is none), ``sandbox_probe.py CALL built`` the
filter libseccomp builds from the list now.  Exit status 0 means the call
was allowed (whatever it returned); a filter that refuses it kills this
process with SIGSYS.  Run as root.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import sys
import time

from passt_sep.broker import jail
from passt_sep.system import bpf, sandbox

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SOCK_PACKET = 10
IPPROTO_SCTP = 132
NOT_PRECOMPILED = 3
_NUMBERS: dict[str, int] = {}       # resolved before the filter is armed


def _raw(name: str, *args: int) -> int:
    """The system call itself, as libc makes it without the vDSO."""
    return _libc.syscall(_NUMBERS[name], *[ctypes.c_long(a) for a in args])


_TIMESPEC = ctypes.create_string_buffer(16)

PROBES = {
    "open": lambda: os.open("/etc/hostname", os.O_RDONLY),
    "execve": lambda: os.execv("/bin/true", ["true"]),
    "unix_socket": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
    "netlink_socket": lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "raw_socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "packet_type_socket": lambda: socket.socket(socket.AF_INET, SOCK_PACKET, 0),
    "sctp_socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP),
    "exec_mmap": lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC),
    "shared_mmap": lambda: mmap.mmap(-1, 4096),     # Python's default: MAP_SHARED
    "setns": lambda: ctypes.CDLL(None).setns(0, 0),
    "ptrace": lambda: ctypes.CDLL(None).ptrace(0, 0, 0, 0),
    "inet_socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close(),
    "inet6_socket": lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close(),
    "anon_mmap": lambda: mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS).close(),
    "clock_gettime_syscall": lambda: _raw("clock_gettime", time.CLOCK_MONOTONIC,
                                          ctypes.addressof(_TIMESPEC)),
    "gettimeofday_syscall": lambda: _raw("gettimeofday", ctypes.addressof(_TIMESPEC), 0),
}


def _worker_filter(how: str) -> sandbox.Prepared:
    if how == "built":
        return sandbox.build(sandbox.read_allowlist("worker")[1])
    prepared = sandbox.prepare("worker")
    if not isinstance(prepared, bpf.Program):
        sys.exit(NOT_PRECOMPILED)
    return prepared


def main() -> None:
    probe = PROBES[sys.argv[1]]
    seccomp = sandbox.libseccomp()
    for name in ("clock_gettime", "gettimeofday"):
        _NUMBERS[name] = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
    worker_filter = _worker_filter(sys.argv[2])
    jail.close(None)
    worker_filter.load()
    try:
        probe()
    except OSError:
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
