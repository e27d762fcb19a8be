"""The protocol-neutral flow table: keys, the cap, the fd index."""

from __future__ import annotations

import pytest

from passt_sep.flow import FlowKey, FlowTable
from passt_sep.packet import IPPROTO_TCP, IPPROTO_UDP

GUEST = bytes([192, 0, 2, 2])
PEER = bytes([203, 0, 113, 1])


def key(port: int, proto: int = IPPROTO_TCP) -> FlowKey:
    return FlowKey(proto, GUEST, port, PEER, 80)


def test_key_is_a_frozen_value() -> None:
    assert key(1000) == key(1000)
    assert hash(key(1000)) == hash(key(1000))
    assert key(1000) != key(1000, IPPROTO_UDP)
    with pytest.raises(AttributeError):
        key(1000).guest_port = 1  # type: ignore[misc]


def test_add_get_remove() -> None:
    table: FlowTable[str] = FlowTable(4)
    assert table.add(key(1), "a")
    assert table.get(key(1)) == "a"
    assert key(1) in table and len(table) == 1
    assert table.remove(key(1)) == "a"
    assert table.get(key(1)) is None and len(table) == 0
    assert table.remove(key(1)) is None


def test_cap_refuses_and_frees() -> None:
    table: FlowTable[int] = FlowTable(2)
    assert table.add(key(1), 1) and table.add(key(2), 2)
    assert table.full
    assert not table.add(key(3), 3)
    assert table.get(key(3)) is None
    table.remove(key(1))
    assert not table.full
    assert table.add(key(3), 3)


def test_taken_key_is_refused() -> None:
    table: FlowTable[int] = FlowTable(4)
    assert table.add(key(1), 1)
    assert not table.add(key(1), 2)
    assert table.get(key(1)) == 1


def test_iteration_is_a_snapshot() -> None:
    table: FlowTable[int] = FlowTable(8)
    for port in range(5):
        table.add(key(port), port)
    for k in table:
        table.remove(k)
    assert len(table) == 0
