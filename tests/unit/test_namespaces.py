"""Which --netns paths name a process (PID mode), on strings alone; where
pasta's command is found on $PATH."""

from __future__ import annotations

import os

import pytest

from passt_sep.broker import namespaces
from passt_sep.broker.namespaces import process_of


@pytest.mark.parametrize("path, pid", [
    ("/proc/1234/ns/net", 1234),
    ("/proc/1234/task/1240/ns/net", 1234),
    ("/proc//1234/./ns/net", 1234),
    ("/run/netns/mine", None),
    ("/run/user/1000/netns/netns-8a1b", None),
    ("/proc/self/ns/net", None),
    ("/proc/1234/ns/user", None),
    ("/tmp/proc/1234/ns/net", None),
])
def test_process_of(path: str, pid: int | None) -> None:
    assert process_of(path) == pid


# pasta's command, looked up on $PATH before anything starts (``_on_path``): the
# first file of that name, runnable or not (``_check_command`` says which).

def test_first_file_on_path_wins_and_directories_are_skipped(tmp_path, monkeypatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "cmd").mkdir()                  # a directory of that name: skipped
    (second / "cmd").write_text("")          # not executable: found all the same
    monkeypatch.setenv("PATH", os.pathsep.join([str(first), str(second)]))
    assert namespaces._on_path("cmd") == str(second / "cmd")
    assert namespaces._on_path("nothing-by-this-name") is None


def test_without_path_the_default_one_is_searched(monkeypatch) -> None:
    monkeypatch.delenv("PATH", raising=False)
    assert namespaces._on_path("sh") in {os.path.join(d, "sh") for d in os.defpath.split(":")}
