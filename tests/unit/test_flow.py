"""The one flow table: keys, the cap shared by every kind of flow, the
sections each protocol works through, idle expiry."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt_sep.flow import SPLICE_TCP, SPLICE_UDP, FlowKey, FlowTable, SpliceKey
from passt_sep.packet import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP

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
    table = FlowTable(4)
    assert table.add(key(1), "a")
    assert table.get(key(1)) == "a"
    assert key(1) in table and len(table) == 1
    assert table.remove(key(1)) == "a"
    assert table.get(key(1)) is None and len(table) == 0
    assert table.remove(key(1)) is None


def test_cap_refuses_and_frees() -> None:
    table = FlowTable(2)
    assert table.add(key(1), 1) and table.add(key(2), 2)
    assert table.full
    assert not table.add(key(3), 3)
    assert table.get(key(3)) is None
    table.remove(key(1))
    assert not table.full
    assert table.add(key(3), 3)


def test_taken_key_is_refused() -> None:
    table = FlowTable(4)
    assert table.add(key(1), 1)
    assert not table.add(key(1), 2)
    assert table.get(key(1)) == 1


def test_iteration_is_a_snapshot() -> None:
    table = FlowTable(8)
    for port in range(5):
        table.add(key(port), port)
    for k in table:
        table.remove(k)
    assert len(table) == 0


# -- one table, one cap, a section per protocol -------------------------------------------

@dataclass
class Entry:
    last_used: float = 0.0


def test_one_cap_for_every_kind() -> None:
    """TCP, spliced TCP, UDP, relayed UDP and echo flows fill one table:
    once it holds ``max_flows`` of them in all, every kind is refused."""
    table = FlowTable(5)
    tcp, udp = table.section(IPPROTO_TCP), table.section(IPPROTO_UDP)
    echo = table.section(IPPROTO_ICMP, IPPROTO_ICMPV6)
    spliced, relayed = table.section(SPLICE_TCP), table.section(SPLICE_UDP)
    assert tcp.add(key(1), Entry()) and udp.add(key(1, IPPROTO_UDP), Entry())
    assert echo.add(FlowKey(IPPROTO_ICMP, GUEST, 7, PEER, 0), Entry())
    assert spliced.add(SpliceKey(SPLICE_TCP, 20), Entry())
    assert not relayed.full
    assert relayed.add(SpliceKey(SPLICE_UDP, 21, ("127.0.0.1", 5000)), Entry())
    assert len(table) == 5 and all(s.full for s in (tcp, udp, echo, spliced, relayed))
    assert not tcp.add(key(2), Entry())
    assert not udp.add(key(2, IPPROTO_UDP), Entry())
    assert not echo.add(FlowKey(IPPROTO_ICMPV6, GUEST, 8, PEER, 0), Entry())
    assert not spliced.add(SpliceKey(SPLICE_TCP, 22), Entry())
    assert not relayed.add(SpliceKey(SPLICE_UDP, 21, ("127.0.0.1", 5001)), Entry())
    assert udp.remove(key(1, IPPROTO_UDP)) is not None       # one ends: room for any kind
    assert spliced.add(SpliceKey(SPLICE_TCP, 22), Entry())
    assert table.counts() == {IPPROTO_TCP: 1, IPPROTO_ICMP: 1, SPLICE_TCP: 2, SPLICE_UDP: 1}


def test_a_section_sees_and_ends_its_own_kinds_only() -> None:
    table = FlowTable(8)
    tcp, udp = table.section(IPPROTO_TCP), table.section(IPPROTO_UDP)
    a, b = Entry(), Entry()
    tcp.add(key(1), a)
    udp.add(key(1, IPPROTO_UDP), b)
    assert tcp.get(key(1)) is a and udp.get(key(1, IPPROTO_UDP)) is b
    assert list(tcp) == [key(1)] and udp.values() == [b] and len(tcp) == len(udp) == 1
    assert key(1, IPPROTO_UDP) not in tcp and key(1, IPPROTO_UDP) in udp
    assert tcp.remove(key(1, IPPROTO_UDP)) is None and len(table) == 2   # not its own
    with pytest.raises(ValueError):
        tcp.add(key(2, IPPROTO_UDP), Entry())
    assert tcp.remove(key(1)) is a and len(tcp) == 0 and len(table) == 1


def test_a_taken_key_is_refused_and_not_counted() -> None:
    table = FlowTable(4)
    udp = table.section(IPPROTO_UDP)
    assert udp.add(key(1, IPPROTO_UDP), Entry())
    assert not udp.add(key(1, IPPROTO_UDP), Entry())
    assert len(udp) == 1 == len(table)


def test_idle_entries_expire_per_section() -> None:
    """``expire`` removes and returns the section's entries idle for longer
    than the timeout; exactly the timeout is not yet; other kinds stay."""
    table = FlowTable(8)
    udp, echo = table.section(IPPROTO_UDP), table.section(IPPROTO_ICMP)
    old, fresh, edge = Entry(0.0), Entry(50.0), Entry(40.0)
    udp.add(key(1, IPPROTO_UDP), old)
    udp.add(key(2, IPPROTO_UDP), fresh)
    udp.add(key(3, IPPROTO_UDP), edge)
    other = Entry(0.0)
    echo.add(FlowKey(IPPROTO_ICMP, GUEST, 1, PEER, 0), other)
    assert udp.expire(now=100.0, timeout=60.0) == [old]
    assert len(udp) == 2 and len(table) == 3 and echo.values() == [other]
    assert udp.expire(now=110.5, timeout=60.0) == [fresh, edge]   # edge: 60 s at 100
    assert len(udp) == 0 and len(table) == 1


KINDS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, SPLICE_TCP, SPLICE_UDP)


def any_key(kind: int, n: int) -> FlowKey | SpliceKey:
    if kind >= SPLICE_TCP:
        return SpliceKey(kind, n)
    return FlowKey(kind, GUEST, n, PEER, 80)


@given(st.integers(1, 12),
       st.lists(st.tuples(st.booleans(), st.sampled_from(KINDS), st.integers(0, 20)),
                max_size=80))
def test_the_cap_holds_whatever_the_mix(cap: int, steps: list) -> None:
    """Any sequence of additions and removals over every kind: the table
    never holds more than its cap, each addition is refused exactly when
    the table is full (or the key taken), and each section counts its own."""
    table = FlowTable(cap)
    sections = {kind: table.section(kind) for kind in KINDS}
    model: dict[FlowKey | SpliceKey, int] = {}
    for adding, kind, n in steps:
        k = any_key(kind, n)
        if adding:
            expected = len(model) < cap and k not in model
            assert sections[kind].add(k, Entry()) == expected
            if expected:
                model[k] = kind
        else:
            assert (sections[kind].remove(k) is not None) == (model.pop(k, None) is not None)
        assert len(table) == len(model) <= cap
        assert table.full == (len(model) >= cap)
        for each, section in sections.items():
            assert len(section) == sum(1 for v in model.values() if v == each)
