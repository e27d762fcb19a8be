"""The capability calls the jail makes (``system/linux.py``), in a forked
child (they cannot be undone), checked against /proc/self/status."""

from __future__ import annotations

import os

import pytest

from passt_sep.system import linux


def _status() -> dict[str, int]:
    with open("/proc/self/status", encoding="ascii") as handle:
        fields = dict(line.split(":", 1) for line in handle if line.startswith("Cap"))
    return {key: int(value, 16) for key, value in fields.items()}


def _in_child(check) -> None:
    """Run ``check`` in a child; its assertion message, if any, fails here."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            check()
            message = b""
        except BaseException as exc:  # reported to the parent
            message = repr(exc).encode() or b"failed"
        os.write(write_end, message)
        os._exit(0)
    os.close(write_end)
    message = os.read(read_end, 4096)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert message == b""


def test_capabilities_reads_what_the_kernel_has() -> None:
    effective, permitted, inheritable = linux.capabilities()
    status = _status()
    assert (effective, permitted, inheritable) == (status["CapEff"], status["CapPrm"],
                                                   status["CapInh"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs CAP_SETPCAP")
def test_the_bounding_set_keeps_only_what_is_kept() -> None:
    def check() -> None:
        linux.drop_bounding_set(frozenset({linux.CAP_NET_BIND_SERVICE}))
        assert _status()["CapBnd"] == 1 << linux.CAP_NET_BIND_SERVICE
    _in_child(check)


@pytest.mark.skipif(os.geteuid() != 0, reason="root's capabilities to drop")
def test_set_capabilities_leaves_only_what_is_asked() -> None:
    def check() -> None:
        kept = 1 << linux.CAP_NET_BIND_SERVICE
        linux.set_capabilities(effective=kept, permitted=kept, inheritable=0)
        status = _status()
        assert (status["CapEff"], status["CapPrm"], status["CapInh"]) == (kept, kept, 0)
        assert linux.capabilities() == (kept, kept, 0)
    _in_child(check)
