"""seccomp filters built from the allowlists in ``seccomp/``.

Each list is a reviewable text file, one syscall per line::

    # syscall  [condition ...]            # why it is needed
    socket     arg0==AF_INET|AF_INET6     # TCP, UDP and ping sockets
    mmap       arg2&PROT_EXEC==0          # memory, never executable

A condition compares one argument (``argN``) with a value or, after ``&``,
the argument masked; ``|`` separates alternatives (one rule each).  Names
are resolved from ``CONSTANTS``.  Anything not listed kills the process.

The filter is built (and the file read) by ``prepare`` before the jail
closes; ``Prepared.load`` arms it later, after the handoff.
"""

from __future__ import annotations

import ctypes
import ctypes.util  # pyseccomp imports it anyway: see below
import os
import socket
import sys
from dataclasses import dataclass

from .linux import MACHINE

# pyseccomp finds libc and libseccomp with ctypes.util.find_library at
# import, and each lookup runs `ldconfig -p` (a fork and an exec).  While
# pyseccomp imports, the usual sonames are loaded directly; any other name
# goes to the real lookup, which is put back afterwards.
_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
_ldconfig_lookup = ctypes.util.find_library


def _find_library(name: str) -> str | None:
    soname = _SONAMES.get(name)
    if soname is not None:
        try:
            ctypes.CDLL(soname)
            return soname
        except OSError:
            pass
    return _ldconfig_lookup(name)


ctypes.util.find_library = _find_library
try:  # pyseccomp first: a checkout's seccomp/ folder shadows "seccomp"
    import pyseccomp as seccomp
except ImportError:  # pragma: no cover - the distro's python3-seccomp
    import seccomp  # type: ignore[no-redef]
finally:
    ctypes.util.find_library = _ldconfig_lookup

CONSTANTS = {
    "AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6,
    "SOCK_STREAM": socket.SOCK_STREAM, "SOCK_DGRAM": socket.SOCK_DGRAM,
    "PROT_EXEC": 4, "F_GETFL": 3, "F_SETFL": 4, "F_GETFD": 1, "F_SETFD": 2,
    "FIONBIO": 0x5421,
}
_ARCH_NAMES = {"x86_64": "x86_64", "aarch64": "aarch64"}


class AllowlistError(Exception):
    """An allowlist line cannot be understood."""


@dataclass(frozen=True)
class Condition:
    arg: int
    mask: int | None
    values: tuple[int, ...]


@dataclass(frozen=True)
class Entry:
    syscall: str
    conditions: tuple[Condition, ...]
    reason: str


def allowlist_dirs() -> list[str]:
    """Where the lists live: beside the package in a checkout, else in the
    installed data directory."""
    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(os.path.dirname(here), "seccomp"),
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
        try:
            conditions = tuple(_condition(word) for word in words[1:])
        except (ValueError, KeyError) as exc:
            raise AllowlistError(f"line {number}: {raw.strip()!r}: {exc}") from None
        entries.append(Entry(words[0], conditions, reason.strip()))
    return entries


def _condition(word: str) -> Condition:
    left, sep, right = word.partition("==")
    if not sep or not left.startswith("arg"):
        raise ValueError("expected argN==VALUE or argN&MASK==VALUE")
    arg_text, _, mask_text = left.partition("&")
    arg = int(arg_text[3:])
    if not 0 <= arg <= 5:
        raise ValueError("argument index out of range")
    mask = _value(mask_text) if mask_text else None
    return Condition(arg, mask, tuple(_value(v) for v in right.split("|")))


def _value(text: str) -> int:
    return CONSTANTS[text] if text in CONSTANTS else int(text, 0)


def syscall_names(entries: list[Entry]) -> list[str]:
    return sorted({e.syscall for e in entries})


class Prepared:
    """A filter built from an allowlist, ready to be armed."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.filter = seccomp.SyscallFilter(seccomp.KILL_PROCESS)
        for entry in entries:
            for args in _expand(entry.conditions):
                self.filter.add_rule(seccomp.ALLOW, entry.syscall, *args)

    def load(self) -> None:
        self.filter.load()


def _expand(conditions: tuple[Condition, ...]) -> list[list[object]]:
    """One argument list per combination of alternatives."""
    combos: list[list[object]] = [[]]
    for cond in conditions:
        combos = [combo + [_arg(cond, value)] for combo in combos for value in cond.values]
    return combos


def _arg(cond: Condition, value: int) -> object:
    if cond.mask is None:
        return seccomp.Arg(cond.arg, seccomp.EQ, value)
    return seccomp.Arg(cond.arg, seccomp.MASKED_EQ, cond.mask, value)


def prepare(name: str) -> Prepared:
    """Read ``seccomp/<name>.<arch>`` and build its filter (before the jail)."""
    path = allowlist_path(name)
    with open(path, encoding="utf-8") as handle:
        return Prepared(parse_allowlist(handle.read()))
