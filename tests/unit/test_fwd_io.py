"""auto forwarding's scans, on table files instead of /proc/net."""

from __future__ import annotations

import os
import socket
import tempfile

from passt_sep.system.log import Logger
from passt_sep.worker.fwd_io import AutoDirection, AutoForwarding
from passt_sep.worker.loop import Loop

TCP = (b"  sl  local_address rem_address   st tx_queue rx_queue\n"
       b"   0: 00000000:07E8 00000000:0000 0A 00000000:00000000\n"
       b"   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000\n")


def _table(text: bytes) -> int:
    handle = tempfile.TemporaryFile()
    handle.write(text)
    handle.flush()
    return os.dup(handle.fileno())


def test_a_fresh_namespace_is_not_read_on_the_first_scan() -> None:
    opened: list[int] = []

    def open_port(family: int, port: int) -> int:
        opened.append(port)
        return port

    fresh = AutoDirection("ns", open_port, lambda fd: None, set, known=frozenset())
    loop = Loop()
    fd = _table(TCP)
    try:
        auto = AutoForwarding(loop, Logger("test"), {"ns": [fd]}, False, [socket.AF_INET],
                              [fresh])
        assert opened == [] and fresh.known is None   # nothing read, nothing opened
        auto.scan(1.0)
        assert sorted(opened) == [2024, 3306]          # read from the second scan on
    finally:
        os.close(fd)


def test_both_families_take_one_dual_stack_socket_or_one_each() -> None:
    """With both families on, a port gets the one socket ``open_dual``
    makes; where that cannot be bound, one per family as with one."""
    opened: list[tuple[int, int]] = []

    def open_port(family: int, port: int) -> int:
        opened.append((family, port))
        return len(opened)

    def open_dual(port: int) -> int:
        if port == 3306:
            raise OSError(98, "Address already in use")
        opened.append((0, port))
        return len(opened)

    both = [socket.AF_INET, socket.AF_INET6]
    direction = AutoDirection("ns", open_port, lambda fd: None, set, open_dual=open_dual)
    fd = _table(TCP)
    try:
        AutoForwarding(Loop(), Logger("test"), {"ns": [fd]}, False, both, [direction])
        assert sorted(opened) == [(0, 2024), (socket.AF_INET, 3306), (socket.AF_INET6, 3306)]
        assert {port: len(fds) for port, fds in direction.forwarded.items()} == {2024: 1,
                                                                               3306: 2}
        opened.clear()
        one = AutoDirection("ns", open_port, lambda fd: None, set, open_dual=open_dual)
        AutoForwarding(Loop(), Logger("test"), {"ns": [fd]}, False, [socket.AF_INET], [one])
        assert sorted(opened) == [(socket.AF_INET, 2024), (socket.AF_INET, 3306)]
    finally:
        os.close(fd)


def test_the_host_listeners_known_at_start_are_the_first_scan() -> None:
    """The netlink helper's list stands for the host's tables once: what
    it names is forwarded without a read, then the tables are followed."""
    opened: list[int] = []
    closed: list[int] = []

    def open_port(family: int, port: int) -> int:
        opened.append(port)
        return port

    host = AutoDirection("host", open_port, closed.append, set, known=frozenset({8080}))
    fd = _table(TCP)
    try:
        auto = AutoForwarding(Loop(), Logger("test"), {"host": [fd]}, False, [socket.AF_INET],
                              [host])
        assert opened == [8080] and host.known is None
        auto.scan(1.0)
        assert sorted(opened) == [2024, 3306, 8080] and closed == [8080]
    finally:
        os.close(fd)
