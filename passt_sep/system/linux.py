"""Thin wrappers for Linux calls Python 3.11 lacks (through libc/ctypes).

Loaded at import time: after the worker's sandbox closes nothing can be
loaded any more.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_SYSCALLS = {  # name -> number, per architecture
    "x86_64": {"pivot_root": 155, "close_range": 436},
    "aarch64": {"pivot_root": 41, "close_range": 436},
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


MACHINE = os.uname().machine        # once: uname() is not allowed under the filters


def _syscall_number(name: str) -> int:
    return _SYSCALLS[MACHINE][name]


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str, target: str, fstype: str, flags: int, data: str = "") -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode(),
                       ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(ctypes.c_long(_syscall_number("pivot_root")),
                         new_root.encode(), put_old.encode()), "pivot_root")


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    """Close every fd from ``first`` to ``last`` in one call."""
    _check(_libc.syscall(ctypes.c_long(_syscall_number("close_range")),
                         ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(0)),
           "close_range")


def close_all_except(keep: set[int]) -> None:
    """Close every fd above stderr that is not in ``keep``."""
    previous = 2
    for fd in sorted(keep | {0xFFFFFFFF + 1}):
        if fd > previous + 1:
            close_range(previous + 1, min(fd - 1, 0xFFFFFFFF))
        previous = max(previous, fd)


IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
IN_MOVED_FROM = 0x40
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
_INOTIFY_EVENT_HEADER = 16  # int wd; u32 mask, cookie, len


def inotify_watch(directory: str, mask: int) -> int:
    """A non-blocking inotify fd watching ``directory`` for ``mask``."""
    fd = _check(_libc.inotify_init1(ctypes.c_int(IN_NONBLOCK | IN_CLOEXEC)), "inotify_init1")
    try:
        _check(_libc.inotify_add_watch(fd, directory.encode(), ctypes.c_uint32(mask)),
               f"inotify_add_watch {directory}")
    except OSError:
        os.close(fd)
        raise
    return fd


def inotify_names(events: bytes) -> list[bytes]:
    """The file names in a buffer of inotify events, as the kernel has them."""
    names = []
    offset = 0
    while offset + _INOTIFY_EVENT_HEADER <= len(events):
        length = int.from_bytes(events[offset + 12:offset + 16], "little")
        raw = events[offset + 16:offset + 16 + length]
        names.append(raw.split(b"\0", 1)[0])
        offset += _INOTIFY_EVENT_HEADER + length
    return names
