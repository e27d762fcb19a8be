"""Which --netns paths name a process (PID mode), on strings alone."""

from __future__ import annotations

import pytest

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
