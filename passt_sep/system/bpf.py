"""seccomp filters compiled ahead of time, and armed without libseccomp.

Building a filter at start-up means importing pyseccomp, and with it
``ctypes.util``, which brings subprocess, shutil, tempfile and random
along: some 5 ms of every start, for a program that changes only with its
allowlist.  ``python -m passt_sep.system.bpf seccomp/*.x86_64`` writes what
libseccomp makes of each allowlist (its BPF program, ``export_bpf``)
beside it, once for every set of the ``?feature``s the list names, as
``NAME.ARCH.bpf`` (no feature) and ``NAME.ARCH+FEATURE.bpf``: ``make
install`` runs it on the installed lists.  ``precompiled`` reads a program
back at start-up, before the jail, and ``Program.load`` arms it with one
prctl.

A program file starts with the CRC-32 of the allowlist text it was made
from and of its features: after an edit of the list the old program no
longer matches and is not used (``precompiled`` returns None:
``sandbox.prepare`` builds the filter as before), and a program is never
taken for another feature set's.  The program is checked for shape (whole
instructions, no more than the kernel's limit); the kernel checks the
rest when it is loaded.

Nothing here imports pyseccomp but ``export``, run at build time.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import sandbox

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_MAXINSNS = 4096
INSTRUCTION_SIZE = 8                 # struct sock_filter
_HEADER = struct.Struct("=4sI")      # magic, CRC-32 of the allowlist text
MAGIC = b"PSBF"

_libc = ctypes.CDLL(None, use_errno=True)


class BpfError(Exception):
    """A program file that cannot be a seccomp filter."""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Program:
    """A compiled filter, ready to be armed (the interface of
    ``sandbox.Prepared``: ``load``)."""

    def __init__(self, code: bytes) -> None:
        if not code or len(code) % INSTRUCTION_SIZE or \
                len(code) // INSTRUCTION_SIZE > BPF_MAXINSNS:
            raise BpfError(f"not a BPF program: {len(code)} bytes")
        self.code = code
        # made now: after the filter is armed, nothing new should be needed
        self._buffer = ctypes.create_string_buffer(code, len(code))
        self._fprog = _SockFprog(len(code) // INSTRUCTION_SIZE,
                                 ctypes.addressof(self._buffer))

    def load(self) -> None:
        """Arm the filter for this process (and what it forks from now on)."""
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
                _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                            ctypes.byref(self._fprog), 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"cannot load the seccomp filter: {os.strerror(errno)}")


def checksum(allowlist: str, features: frozenset[str] = frozenset()) -> int:
    crc = zlib.crc32(allowlist.encode())
    return zlib.crc32(("?" + "+".join(sorted(features))).encode(), crc) if features else crc


def pack(allowlist: str, code: bytes, features: frozenset[str] = frozenset()) -> bytes:
    """A program file: the header, then the instructions."""
    return _HEADER.pack(MAGIC, checksum(allowlist, features)) + code


def unpack(data: bytes, allowlist: str,
           features: frozenset[str] = frozenset()) -> Program | None:
    """The program in ``data`` if it was made from ``allowlist`` with
    ``features``, else None (stale: the list was edited since); ``BpfError``
    if it is no program file at all."""
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise BpfError("not a passt-sep BPF program file")
    _magic, crc = _HEADER.unpack_from(data)
    if crc != checksum(allowlist, features):
        return None
    return Program(data[_HEADER.size:])


def program_path(allowlist_path: str, features: frozenset[str] = frozenset()) -> str:
    """Where the program for an allowlist file and a feature set lives:
    beside the list."""
    return "".join([allowlist_path, *(f"+{f}" for f in sorted(features)), ".bpf"])


def precompiled(allowlist_path: str, allowlist: str,
                features: frozenset[str] = frozenset()) -> Program | None:
    """The program compiled from ``allowlist`` (the text of the file at
    ``allowlist_path``) with ``features``, if one was and still matches;
    else None."""
    try:
        with open(program_path(allowlist_path, features), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    return unpack(data, allowlist, features)


def compile_filter(built: sandbox.Built) -> bytes:
    """The BPF program libseccomp makes of a built filter."""
    read_end, write_end = os.pipe()       # a program is at most 32 KiB: the pipe holds it
    with os.fdopen(read_end, "rb") as source:
        with os.fdopen(write_end, "wb") as sink:
            built.filter.export_bpf(sink)
        return source.read()


def feature_sets(features: frozenset[str]) -> list[frozenset[str]]:
    """Every subset of ``features``: each one a filter may be asked for."""
    sets = [frozenset[str]()]
    for feature in sorted(features):
        sets += [s | {feature} for s in sets]
    return sets


def export(allowlist_path: str) -> dict[str, bytes]:
    """libseccomp's programs for the allowlist at ``allowlist_path``, one
    program file for every set of its features, by the path it belongs at
    (build time: imports pyseccomp through ``sandbox``)."""
    from . import sandbox
    with open(allowlist_path, encoding="utf-8") as handle:
        text = handle.read()
    named = sandbox.features_named(sandbox.parse_allowlist(text))
    return {program_path(allowlist_path, features):
            pack(text, compile_filter(sandbox.build(text, features)), features)
            for features in feature_sets(named)}


def _write(path: str, data: bytes) -> None:
    """Whole or not at all: a program cut short by an interrupted install
    must not be found under the name of a complete one."""
    partial = f"{path}.partial"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    """``python -m passt_sep.system.bpf ALLOWLIST...``: write each one's programs
    beside it (``NAME.ARCH.bpf``, ``NAME.ARCH+FEATURE.bpf``)."""
    if not argv:
        print("usage: python -m passt_sep.system.bpf ALLOWLIST...", file=sys.stderr)
        return 2
    for path in argv:
        for target, data in export(path).items():
            _write(target, data)
            print(f"{target}: {(len(data) - _HEADER.size) // INSTRUCTION_SIZE} instructions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
