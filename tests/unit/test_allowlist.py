"""The seccomp allowlist format (the filter itself is tested end to end)."""

from __future__ import annotations

import ctypes.util

import pytest

from passt_sep import sandbox


def test_parse_conditions_and_reasons() -> None:
    entries = sandbox.parse_allowlist(
        "# comment\n\nread   # frames\nsocket arg0==AF_INET|AF_INET6  # sockets\n"
        "mmap arg2&PROT_EXEC==0 # memory\n")
    assert [e.syscall for e in entries] == ["read", "socket", "mmap"]
    assert entries[0].conditions == () and entries[0].reason == "frames"
    assert entries[1].conditions == (sandbox.Condition(0, None, (2, 10)),)
    assert entries[2].conditions == (sandbox.Condition(2, 4, (0,)),)


@pytest.mark.parametrize("line", ["socket arg0=AF_INET", "socket arg9==1", "socket foo==1",
                                  "socket arg0==AF_NOPE"])
def test_bad_lines_are_rejected(line: str) -> None:
    with pytest.raises(sandbox.AllowlistError):
        sandbox.parse_allowlist(line)


def test_shipped_worker_list_parses_and_builds() -> None:
    path = sandbox.allowlist_path("worker")
    with open(path, encoding="utf-8") as handle:
        entries = sandbox.parse_allowlist(handle.read())
    names = sandbox.syscall_names(entries)
    assert len(names) == len(entries), "one line per syscall"
    assert all(e.reason for e in entries), "every syscall says why"
    assert len(names) <= 40
    sandbox.Prepared(entries)  # libseccomp accepts every rule


def test_library_lookup_without_ldconfig_and_else_the_real_one() -> None:
    assert sandbox._find_library("seccomp") == "libseccomp.so.2"
    assert sandbox._find_library("m") == ctypes.util.find_library("m")      # not a known name
    assert ctypes.util.find_library is sandbox._ldconfig_lookup              # put back
