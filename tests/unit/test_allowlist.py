"""The seccomp allowlist format (the filter itself is tested end to end)."""

from __future__ import annotations

import ctypes.util

import pytest

from passt_sep.system import sandbox


def test_parse_conditions_and_reasons() -> None:
    entries = sandbox.parse_allowlist(
        "# comment\n\nread   # frames\nsocket arg0==AF_INET|AF_INET6  # sockets\n"
        "mmap arg2&PROT_EXEC==0 # memory\n")
    assert [e.syscall for e in entries] == ["read", "socket", "mmap"]
    assert entries[0].conditions == () and entries[0].reason == "frames"
    assert entries[1].conditions == (sandbox.Condition(0, None, (2, 10)),)
    assert entries[2].conditions == (sandbox.Condition(2, 4, (0,)),)


def test_flags_join_with_plus_and_a_mask_may_be_complemented() -> None:
    [pipe2, sendto] = sandbox.parse_allowlist(
        "pipe2 arg1==O_NONBLOCK+O_CLOEXEC  # fast path\n"
        "sendto arg3&~(MSG_DONTWAIT+MSG_NOSIGNAL)==0  # only these flags\n")
    assert pipe2.conditions == (sandbox.Condition(1, None, (0o4000 | 0o2000000,)),)
    assert sendto.conditions == (sandbox.Condition(3, 0xFFFFFFFF ^ 0x4040, (0,)),)


def test_a_syscall_on_several_lines_is_each_line_or_the_others() -> None:
    """Alternatives on one line multiply (one rule per combination); lines
    of one syscall add up, so levels and option names never cross."""
    entries = sandbox.parse_allowlist(
        "setsockopt arg1==SOL_SOCKET arg2==SO_ERROR|SO_LINGER  # a\n"
        "setsockopt arg1==IPPROTO_TCP arg2==TCP_NODELAY  # b\n")
    assert sandbox.syscall_names(entries) == ["setsockopt"]
    assert sandbox.Built(entries).rules == 3


@pytest.mark.parametrize("line", ["socket arg0=AF_INET", "socket arg9==1", "socket foo==1",
                                  "socket arg0==AF_NOPE", "mmap arg3&1==0 arg3&2==2"])
def test_bad_lines_are_rejected(line: str) -> None:
    with pytest.raises(sandbox.AllowlistError):
        sandbox.parse_allowlist(line)


def test_shipped_worker_list_parses_and_builds() -> None:
    path = sandbox.allowlist_path("worker")
    with open(path, encoding="utf-8") as handle:
        entries = sandbox.parse_allowlist(handle.read())
    names = sandbox.syscall_names(entries)
    assert all(e.reason for e in entries), "every line says why"
    assert len(names) <= 45
    assert sandbox.Built(entries).rules <= 100  # libseccomp accepts every rule, few of them


def test_library_lookup_without_ldconfig_and_else_the_real_one() -> None:
    real = ctypes.util.find_library
    assert sandbox._find_library("seccomp", real) == "libseccomp.so.2"
    assert sandbox._find_library("m", real) == real("m")      # not a known name
    sandbox.libseccomp()
    assert ctypes.util.find_library is real                   # put back


def test_feature_lines_join_only_their_features_filter() -> None:
    """``?vhost-user`` rules stay out of every other worker's filter."""
    text = "read  # all\n?vhost-user mmap arg3&MAP_TYPE==MAP_SHARED  # guest RAM\n"
    entries = sandbox.parse_allowlist(text)
    assert [(e.syscall, e.feature) for e in entries] == [("read", None), ("mmap", "vhost-user")]
    with pytest.raises(sandbox.AllowlistError, match="no system call"):
        sandbox.parse_allowlist("?vhost-user  # nothing\n")


def test_the_worker_maps_shared_memory_only_for_vhost_user() -> None:
    def shared_mmap(features: frozenset[str]) -> list[sandbox.Entry]:
        _path, text = sandbox.read_allowlist("worker")
        return [e for e in sandbox.build(text, features).entries if e.syscall == "mmap" and any(
            c.arg == 3 and sandbox.CONSTANTS["MAP_SHARED"] in c.values for c in e.conditions)]
    assert shared_mmap(frozenset()) == []
    assert len(shared_mmap(frozenset({"vhost-user"}))) == 1
