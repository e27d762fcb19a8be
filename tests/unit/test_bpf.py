"""Precompiled seccomp programs (``passt_sep/system/bpf.py``): the file format on
bytes, and a program libseccomp made, armed by our prctl in a child: what
its list allows runs, anything else kills the child with SIGSYS."""

from __future__ import annotations

import os
import signal

import pytest

from passt_sep.system import bpf, sandbox

RET_ALLOW = b"\x06\x00\x00\x00\x00\x00\xff\x7f"    # BPF_RET | BPF_K, SECCOMP_RET_ALLOW


def test_a_program_file_round_trips() -> None:
    data = bpf.pack("read\n", RET_ALLOW)
    program = bpf.unpack(data, "read\n")
    assert program is not None and program.code == RET_ALLOW


def test_a_program_made_from_another_list_is_not_used() -> None:
    assert bpf.unpack(bpf.pack("read\n", RET_ALLOW), "read\nwrite\n") is None


@pytest.mark.parametrize("data", [b"", b"ELF\x00", bpf.MAGIC + bytes(3)])
def test_what_is_no_program_file_is_refused(data: bytes) -> None:
    with pytest.raises(bpf.BpfError):
        bpf.unpack(data, "")


@pytest.mark.parametrize("code", [b"", RET_ALLOW[:7], RET_ALLOW * (bpf.BPF_MAXINSNS + 1)],
                         ids=["empty", "partial", "too-long"])
def test_a_program_must_be_whole_instructions_within_the_limit(code: bytes) -> None:
    with pytest.raises(bpf.BpfError):
        bpf.Program(code)


def test_precompiled_is_none_without_a_file(tmp_path) -> None:
    assert bpf.precompiled(str(tmp_path / "worker.x86_64"), "read\n") is None


def _in_child(program: bpf.Program, then_getpid: bool) -> tuple[int, bytes]:
    """Arm ``program`` in a child, write one byte (allowed to the waiter),
    optionally call getpid (not allowed); the child's status and output."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        program.load()
        os.write(write_end, b"w")
        if then_getpid:
            os.getpid()
        os._exit(0)
    os.close(write_end)
    out = os.read(read_end, 16)
    os.close(read_end)
    return os.waitpid(pid, 0)[1], out


@pytest.mark.parametrize("then_getpid", [False, True], ids=["allowed", "unlisted"])
def test_the_waiters_program_armed_without_libseccomp(tmp_path, then_getpid: bool) -> None:
    listed = sandbox.allowlist_path("waiter")
    with open(listed, encoding="utf-8") as handle:
        text = handle.read()
    copy = tmp_path / os.path.basename(listed)
    copy.write_text(text)
    assert bpf.main([str(copy)]) == 0
    program = bpf.precompiled(str(copy), text)
    assert program is not None
    status, out = _in_child(program, then_getpid)
    assert out == b"w"
    if then_getpid:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
    else:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
