"""Precompiled seccomp programs (``passt_sep/system/bpf.py``): the file format on
bytes, and a program libseccomp made, armed by our prctl in a child: what
its list allows runs, anything else kills the child with SIGSYS.  The
programs ``make install`` compiled are, byte for byte, the filters built
from the installed lists, for every feature set a start asks for; a start
takes them without importing pyseccomp, and a missing, stale or damaged
program makes ``sandbox.prepare`` build the filter instead."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from passt_sep.system import bpf, sandbox

RET_ALLOW = b"\x06\x00\x00\x00\x00\x00\xff\x7f"    # BPF_RET | BPF_K, SECCOMP_RET_ALLOW
VHOST_USER = frozenset({"vhost-user"})
# every filter the broker asks for (broker/main.py)
STARTS = [("worker", frozenset()), ("worker", VHOST_USER), ("waiter", frozenset()),
          ("nssource", frozenset())]
INSTALLED = os.path.join(sys.prefix, "share", "passt-sep", "seccomp")


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


def test_a_program_made_for_other_features_is_not_used() -> None:
    data = bpf.pack("read\n", RET_ALLOW, VHOST_USER)
    assert bpf.unpack(data, "read\n") is None
    assert bpf.unpack(bpf.pack("read\n", RET_ALLOW), "read\n", VHOST_USER) is None
    assert bpf.unpack(data, "read\n", VHOST_USER) is not None


def test_each_feature_set_has_its_own_file() -> None:
    assert bpf.program_path("/s/worker.x86_64") == "/s/worker.x86_64.bpf"
    assert bpf.program_path("/s/worker.x86_64", VHOST_USER) == "/s/worker.x86_64+vhost-user.bpf"
    assert bpf.feature_sets(frozenset({"b", "a"})) == [
        frozenset(), frozenset("a"), frozenset("b"), frozenset("ab")]


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


def _installed(name: str) -> tuple[str, str]:
    path = os.path.join(INSTALLED, os.path.basename(sandbox.allowlist_path(name)))
    with open(path, encoding="utf-8") as handle:
        return path, handle.read()


@pytest.mark.parametrize(("name", "features"), STARTS,
                         ids=["worker", "worker+vhost-user", "waiter", "nssource"])
def test_the_installed_program_is_the_filter_built_from_the_list(name, features) -> None:
    """Same instructions, so the same system calls allowed and killed."""
    path, text = _installed(name)
    program = bpf.precompiled(path, text, features)
    assert program is not None, f"no program beside {path}: `make install` compiles them"
    assert program.code == bpf.compile_filter(sandbox.build(text, features))


def test_a_start_takes_the_programs_without_pyseccomp() -> None:
    """The installed package (``-P``, from /): every filter a start asks
    for is a precompiled program, and neither pyseccomp nor ctypes.util
    (its ``ldconfig`` runs) is imported."""
    code = ("import sys\n"
            "from passt_sep import cli\nfrom passt_sep.system import sandbox\n"
            "from passt_sep.broker import main\n"
            f"kinds = [type(sandbox.prepare(n, f)).__name__ for n, f in {STARTS!r}]\n"
            "print((kinds, [m for m in ('pyseccomp', 'seccomp', 'ctypes.util') "
            "if m in sys.modules]))\n")
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True,
                            text=True, cwd="/", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == str((["Program"] * len(STARTS), []))


@pytest.fixture
def lists(tmp_path, monkeypatch):
    """The worker's and the waiter's lists alone in a directory of their own."""
    for name in ("worker", "waiter"):
        with open(sandbox.allowlist_path(name), encoding="utf-8") as handle:
            (tmp_path / os.path.basename(handle.name)).write_text(handle.read())
    monkeypatch.setattr(sandbox, "allowlist_dirs", lambda: [str(tmp_path)])
    return tmp_path


def test_prepare_takes_a_program_for_every_feature_set(lists) -> None:
    assert bpf.main([sandbox.allowlist_path("worker"), sandbox.allowlist_path("waiter")]) == 0
    for features in (frozenset(), VHOST_USER):
        assert isinstance(sandbox.prepare("worker", features), bpf.Program)
    assert isinstance(sandbox.prepare("waiter"), bpf.Program)


def test_prepare_builds_without_a_program(lists) -> None:
    assert isinstance(sandbox.prepare("waiter"), sandbox.Built)


def test_prepare_builds_for_a_feature_set_without_its_program(lists) -> None:
    assert bpf.main([sandbox.allowlist_path("worker")]) == 0
    os.unlink(bpf.program_path(sandbox.allowlist_path("worker"), VHOST_USER))
    assert isinstance(sandbox.prepare("worker"), bpf.Program)
    built = sandbox.prepare("worker", VHOST_USER)
    assert isinstance(built, sandbox.Built)
    assert "vhost-user" in {e.feature for e in built.entries}


def test_prepare_builds_after_the_list_was_edited(lists) -> None:
    path = sandbox.allowlist_path("waiter")
    assert bpf.main([path]) == 0
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("getpid  # edited after the program was compiled\n")
    built = sandbox.prepare("waiter")
    assert isinstance(built, sandbox.Built)
    assert "getpid" in sandbox.syscall_names(built.entries)


@pytest.mark.parametrize("data", [b"", b"PSBF", bpf.pack("", RET_ALLOW)[:6]],
                         ids=["empty", "header-cut", "cut"])
def test_prepare_builds_over_a_damaged_program(lists, data: bytes) -> None:
    path = sandbox.allowlist_path("waiter")
    with open(bpf.program_path(path), "wb") as handle:
        handle.write(data)
    assert isinstance(sandbox.prepare("waiter"), sandbox.Built)
