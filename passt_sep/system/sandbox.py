"""seccomp filters built from the allowlists in ``seccomp/``.

Each list is a reviewable text file, one rule per line::

    # syscall  [condition ...]            # why it is needed
    socket     arg0==AF_INET|AF_INET6     # TCP, UDP and ping sockets
    mmap       arg2&PROT_EXEC==0          # memory, never executable
    sendto     arg3&~(MSG_DONTWAIT+MSG_NOSIGNAL)==0   # no other flag

A condition compares one argument (``argN``) with a value or, after ``&``,
the argument masked; ``|`` separates alternatives (one rule each).  ``+``
combines flags into one value (``O_NONBLOCK+O_CLOEXEC``), and a mask
after ``~`` is complemented in 32 bits (the flags arguments are C ints):
``argN&~(A+B)==0`` allows no flag but A and B.  Conditions on one line must
all hold.  A syscall may take several lines, each an alternative with its
own reason: ``setsockopt`` takes one line per level, so that a level and
an option name of another level never pair up.  A line that starts with
``?feature`` belongs to that feature's filter alone (``?vhost-user``: the
shared mapping of guest RAM).  Names are resolved from ``CONSTANTS``.
Anything not listed kills the process.

The file is read by ``prepare`` before the jail closes, and its filter
taken from the program compiled from it at install time (``bpf``) or,
without one, built by libseccomp; ``Prepared.load`` arms it later, after
the handoff.
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

from . import bpf
from .linux import MACHINE

# pyseccomp finds libc and libseccomp with ctypes.util.find_library at
# import, and each lookup runs `ldconfig -p` (a fork and an exec).  While
# pyseccomp imports, the usual sonames are loaded directly; any other name
# goes to the real lookup, which is put back afterwards.
_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def _find_library(name: str, lookup: Callable[[str], str | None]) -> str | None:
    soname = _SONAMES.get(name)
    if soname is not None:
        try:
            ctypes.CDLL(soname)
            return soname
        except OSError:
            pass
    return lookup(name)


@functools.cache
def libseccomp() -> ModuleType:
    """pyseccomp, imported when a filter is first built: a start that finds
    its programs precompiled (``bpf``) never imports it, nor ctypes.util."""
    import ctypes.util
    lookup = ctypes.util.find_library
    ctypes.util.find_library = functools.partial(_find_library, lookup=lookup)
    try:  # pyseccomp first: a checkout's seccomp/ folder shadows "seccomp"
        import pyseccomp as seccomp
    except ImportError:  # pragma: no cover - the distro's python3-seccomp
        import seccomp  # type: ignore[no-redef]
    finally:
        ctypes.util.find_library = lookup
    return seccomp


CONSTANTS = {
    # socket(): families, types (SOCK_TYPE_MASK strips SOCK_NONBLOCK and
    # SOCK_CLOEXEC), protocols; setsockopt/getsockopt levels and names
    "AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6,
    "SOCK_STREAM": socket.SOCK_STREAM, "SOCK_DGRAM": socket.SOCK_DGRAM, "SOCK_TYPE_MASK": 0xF,
    "IPPROTO_IP": 0, "IPPROTO_TCP": 6, "IPPROTO_UDP": 17, "IPPROTO_ICMP": 1,
    "IPPROTO_IPV6": 41, "IPPROTO_ICMPV6": 58, "SOL_SOCKET": 1,
    "SO_REUSEADDR": 2, "SO_TYPE": 3, "SO_ERROR": 4, "SO_RCVBUF": 8, "SO_LINGER": 13,
    "SO_BINDTODEVICE": 25,
    "SO_PROTOCOL": 38, "SO_DOMAIN": 39, "SO_PEEK_OFF": 42, "SO_MEMINFO": 55,
    "TCP_NODELAY": 1, "TCP_MAXSEG": 2, "TCP_WINDOW_CLAMP": 10,
    "IP_RECVERR": 11, "IPV6_V6ONLY": 26, "IPV6_RECVERR": 25, "SHUT_WR": 1,
    "MSG_PEEK": 0x2, "MSG_TRUNC": 0x20, "MSG_DONTWAIT": 0x40,
    "MSG_NOSIGNAL": 0x4000, "MSG_ERRQUEUE": 0x2000,
    # files, pipes, splice
    "F_GETFL": 3, "F_SETFL": 4, "F_GETFD": 1, "F_SETFD": 2, "FIONBIO": 0x5421,
    "O_NONBLOCK": os.O_NONBLOCK, "O_CLOEXEC": os.O_CLOEXEC, "SEEK_SET": 0, "SEEK_END": 2,
    "SPLICE_F_MOVE": 1, "SPLICE_F_NONBLOCK": 2,
    # memory
    "PROT_EXEC": 4, "MAP_SHARED": 0x1, "MAP_PRIVATE": 0x2, "MAP_TYPE": 0xF, "MAP_ANONYMOUS": 0x20,
    "MREMAP_MAYMOVE": 1, "MADV_DONTNEED": 4, "MADV_FREE": 8, "MADV_HUGEPAGE": 14,
    # futex commands (FUTEX_CMD_MASK strips FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME)
    "FUTEX_WAIT": 0, "FUTEX_WAKE": 1, "FUTEX_WAIT_BITSET": 9, "FUTEX_WAKE_BITSET": 10,
    "FUTEX_CMD_MASK": 0xFFFFFFFF ^ (128 | 256),
    # clocks
    "CLOCK_REALTIME": 0, "CLOCK_MONOTONIC": 1,
}
_INT_BITS = 0xFFFFFFFF
_ARCH_NAMES = {"x86_64": "x86_64", "aarch64": "aarch64"}


class AllowlistError(Exception):
    """An allowlist line cannot be understood."""


@dataclass(frozen=True)
class Condition:
    """An allowlist entry's condition on one argument."""

    arg: int
    mask: int | None
    values: tuple[int, ...]


@dataclass(frozen=True)
class Entry:
    """One allowlist line: a system call, its conditions and why."""

    syscall: str
    conditions: tuple[Condition, ...]
    reason: str
    feature: str | None = None      # only with this feature (``?feature`` lines)


def allowlist_dirs() -> list[str]:
    """Where the lists live: beside the package in a checkout, else in the
    installed data directory."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(os.path.dirname(package), "seccomp"),
            os.path.join(sys.prefix, "share", "passt-sep", "seccomp")]


def allowlist_path(name: str, arch: str | None = None) -> str:
    arch = arch or _ARCH_NAMES.get(MACHINE, MACHINE)
    for directory in allowlist_dirs():
        path = os.path.join(directory, f"{name}.{arch}")
        if os.path.exists(path):
            return path
    raise AllowlistError(f"no seccomp allowlist {name}.{arch} in {allowlist_dirs()}")


def parse_allowlist(text: str) -> list[Entry]:
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        body, _, reason = raw.partition("#")
        words = body.split()
        if not words:
            continue
        feature = words.pop(0)[1:] if words[0].startswith("?") else None
        if not words:
            raise AllowlistError(f"line {number}: {raw.strip()!r}: no system call")
        try:
            conditions = tuple(_condition(word) for word in words[1:])
            if len({c.arg for c in conditions}) != len(conditions):
                raise ValueError("one condition per argument (libseccomp allows no more)")
        except (ValueError, KeyError) as exc:
            raise AllowlistError(f"line {number}: {raw.strip()!r}: {exc}") from None
        entries.append(Entry(words[0], conditions, reason.strip(), feature))
    return entries


def _condition(word: str) -> Condition:
    left, sep, right = word.partition("==")
    if not sep or not left.startswith("arg"):
        raise ValueError("expected argN==VALUE or argN&MASK==VALUE")
    arg_text, _, mask_text = left.partition("&")
    arg = int(arg_text[3:])
    if not 0 <= arg <= 5:
        raise ValueError("argument index out of range")
    mask = _mask(mask_text) if mask_text else None
    return Condition(arg, mask, tuple(_value(v) for v in right.split("|")))


def _mask(text: str) -> int:
    """``A+B``, or ``~(A+B)``: its complement in 32 bits."""
    if text.startswith("~"):
        return _INT_BITS ^ _value(text[1:].removeprefix("(").removesuffix(")"))
    return _value(text)


def _value(text: str) -> int:
    """A number or a name, or several joined by ``+`` (OR-ed)."""
    value = 0
    for word in text.split("+"):
        value |= CONSTANTS[word] if word in CONSTANTS else int(word, 0)
    return value


def syscall_names(entries: list[Entry]) -> list[str]:
    return sorted({e.syscall for e in entries})


class Prepared(Protocol):
    """A filter ready to be armed: a precompiled ``bpf.Program``, or a
    ``Built`` one."""

    def load(self) -> None: ...


class Built:
    """A filter built by libseccomp from allowlist entries."""

    def __init__(self, entries: list[Entry]) -> None:
        seccomp = libseccomp()
        self.entries = entries
        self.filter = seccomp.SyscallFilter(seccomp.KILL_PROCESS)
        self.rules = 0
        for entry in entries:
            for args in _expand(entry.conditions, seccomp):
                self.filter.add_rule(seccomp.ALLOW, entry.syscall, *args)
                self.rules += 1

    def load(self) -> None:
        self.filter.load()


def _expand(conditions: tuple[Condition, ...], seccomp: ModuleType) -> list[list[object]]:
    """One argument list per combination of alternatives."""
    combos: list[list[object]] = [[]]
    for cond in conditions:
        combos = [combo + [_arg(cond, value, seccomp)]
                  for combo in combos for value in cond.values]
    return combos


def _arg(cond: Condition, value: int, seccomp: ModuleType) -> object:
    if cond.mask is None:
        return seccomp.Arg(cond.arg, seccomp.EQ, value)
    return seccomp.Arg(cond.arg, seccomp.MASKED_EQ, cond.mask, value)


def for_features(entries: list[Entry], features: frozenset[str]) -> list[Entry]:
    """The lines for everyone, and those marked ``?feature`` for
    ``features`` alone (a rule a mode needs stays out of every other
    mode's filter)."""
    return [e for e in entries if e.feature is None or e.feature in features]


def features_named(entries: list[Entry]) -> frozenset[str]:
    return frozenset(e.feature for e in entries if e.feature is not None)


def build(text: str, features: frozenset[str] = frozenset()) -> Built:
    """libseccomp's filter for the allowlist ``text`` (imports pyseccomp)."""
    return Built(for_features(parse_allowlist(text), features))


def read_allowlist(name: str) -> tuple[str, str]:
    """The path and text of ``seccomp/<name>.<arch>``."""
    path = allowlist_path(name)
    with open(path, encoding="utf-8") as handle:
        return path, handle.read()


def prepare(name: str, features: frozenset[str] = frozenset()) -> Prepared:
    """The filter for ``name`` with ``features``, read before the jail.

    The program compiled from this very text at install time when there is
    one (``bpf.precompiled``: its CRC names the text and the features);
    else, when it is missing, stale or damaged, the filter built from the
    list now, as libseccomp would have compiled it: the list decides what
    is allowed either way, a missing program only costs the time to build."""
    path, text = read_allowlist(name)
    try:
        program = bpf.precompiled(path, text, features)
    except bpf.BpfError:
        program = None
    return program if program is not None else build(text, features)
