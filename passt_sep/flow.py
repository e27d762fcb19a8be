"""The flow table: every connection or datagram stream the worker relays,
whatever its protocol, in one table under one cap.

Theory
------
A *flow* joins two endpoints the worker relays between: one guest endpoint
and one host socket (TCP, UDP, ICMP echo), or, in pasta's loopback fast
paths, two host sockets (spliced TCP, relayed UDP).  Every flow is an entry
of the one :class:`FlowTable`, named by a key whose first field is its
*kind*: the IP protocol for a flow with the guest, ``SPLICE_TCP`` or
``SPLICE_UDP`` for a spliced one.  Each protocol keeps its per-flow state
in its entry (a TCP connection's, a UDP flow's socket and peer, ...).

A guest flow is named by a :class:`FlowKey` in the guest's terms: the
guest's address and port and the peer's address and port *as the guest
sees them* (before any special-address mapping of :mod:`passt_sep.fwd`),
so a frame from the guest finds its flow with one lookup and no
translation.  ICMP echo flows use the echo identifier as the guest's port
and 0 as the peer's.  A spliced flow is never looked up from a frame: it
is named by a :class:`SpliceKey` (the socket it starts from, and the peer
on it for relayed UDP).

Who creates a flow:

* the guest, with its first packet towards a new peer (a TCP SYN, a UDP
  datagram, an echo request): outbound;
* the host, when a forwarded port's listener accepts a connection or
  receives a datagram: inbound, or spliced when it comes from the host
  itself.

Each protocol handler reaches the table through its :class:`FlowSection`:
a view of its own kinds of entries.  Every flow is created there
(``add``: admitted under the table's cap or refused), looked up (``get``),
timed out (``expire``: the entries idle for longer than a timeout, for the
protocols without a state of their own that ends them) and ended
(``remove``).  TCP flows end when their protocol says so (both ends
closed, a reset, its own timers); spliced TCP when both sockets close.

The cap (``--max-flows``) is the table's, one for all kinds: when the
table is full ``add`` refuses, whatever the kind, and the caller refuses
the flow (TCP: RST to the guest or to the accepted peer; spliced TCP: a
reset to the accepted peer; UDP and echo: the datagram dropped) and counts
it.  A socket's events reach its flow without the table: the I/O layer
registers each socket with its flow bound to the callback, or keeps an
index by socket fd built from the entries it adds and emptied as it
removes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, cast

V = TypeVar("V")

SPLICE_TCP = 0x100 | 6     # kinds above any IP protocol number
SPLICE_UDP = 0x100 | 17


class FlowKey(NamedTuple):
    """A guest flow's name, in the addresses the guest uses (4 or 16 bytes).
    A tuple: immutable, and hashed in C on every frame's lookup."""

    proto: int
    guest_addr: bytes
    guest_port: int
    peer_addr: bytes
    peer_port: int


class SpliceKey(NamedTuple):
    """A spliced flow's name: the fd of the socket it starts from (unique
    while the flow holds it) and, for relayed UDP, the peer on that socket
    as the socket API gives it."""

    kind: int
    fd: int
    peer: tuple = ()


Key = FlowKey | SpliceKey


class Idle(Protocol):
    """An entry that ends when idle: when it was last used."""

    last_used: float


class FlowTable:
    """Every flow, by key, at most ``max_flows`` of them in all."""

    def __init__(self, max_flows: int) -> None:
        self.max_flows = max_flows
        self._flows: dict[Key, Any] = {}

    def get(self, key: Key) -> Any:
        return self._flows.get(key)

    def add(self, key: Key, value: object) -> bool:
        """Admit a new flow; False when the table is full or the key is
        taken (callers look up first, so that would be their bug)."""
        if len(self._flows) >= self.max_flows or key in self._flows:
            return False
        self._flows[key] = value
        return True

    @property
    def full(self) -> bool:
        return len(self._flows) >= self.max_flows

    def remove(self, key: Key) -> Any:
        """Forget a flow; the value, if it was there."""
        return self._flows.pop(key, None)

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    def __iter__(self) -> Iterator[Key]:
        """The keys, as a snapshot: flows may be removed while walking."""
        return iter(list(self._flows))

    def section(self, *kinds: int) -> FlowSection[Any]:
        """The view one protocol handler works through: entries of ``kinds``."""
        return FlowSection(self, kinds)

    def counts(self) -> dict[int, int]:
        """Flows by kind, now."""
        counts: dict[int, int] = {}
        for key in self._flows:
            counts[key[0]] = counts.get(key[0], 0) + 1
        return counts


class FlowSection(Generic[V]):
    """One protocol's entries of a :class:`FlowTable`.  Lookups and
    removals go straight to the shared table (keys of different kinds never
    compare equal); additions are admitted under the table's cap; length
    and iteration see this section's kinds only."""

    __slots__ = ("table", "kinds", "_count")

    def __init__(self, table: FlowTable, kinds: tuple[int, ...]) -> None:
        self.table, self.kinds = table, frozenset(kinds)
        self._count = 0

    def get(self, key: Key) -> V | None:
        return self.table._flows.get(key)

    def finder(self) -> Callable[[tuple], V | None]:
        """``get`` without a Python call of its own, for the lookup of
        every frame: the table's ``dict.get``, bound."""
        return self.table._flows.get

    def add(self, key: Key, value: V) -> bool:
        """Admit a new flow under the table's cap; False when refused.
        (FlowTable.add's test, in line: this runs for every connection.)"""
        if key[0] not in self.kinds:
            raise ValueError(f"kind {key[0]} is not this section's")
        flows = self.table._flows
        if len(flows) >= self.table.max_flows or key in flows:
            return False
        flows[key] = value
        self._count += 1
        return True

    @property
    def full(self) -> bool:
        """No flow of any kind can be added."""
        return len(self.table._flows) >= self.table.max_flows

    def remove(self, key: Key) -> V | None:
        value = self.table._flows.pop(key, None) if key[0] in self.kinds else None
        if value is not None:
            self._count -= 1
        return value

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        return key in self.table._flows and key[0] in self.kinds  # type: ignore[index]

    def __iter__(self) -> Iterator[Key]:
        """This section's keys, as a snapshot."""
        return iter([key for key in self.table._flows if key[0] in self.kinds])

    def items(self) -> list[tuple[Key, V]]:
        """This section's entries, as a snapshot."""
        return [(k, v) for k, v in self.table._flows.items() if k[0] in self.kinds]

    def values(self) -> list[V]:
        return [v for k, v in self.table._flows.items() if k[0] in self.kinds]

    def expire(self, now: float, timeout: float) -> list[V]:
        """Remove and return the entries idle for longer than ``timeout``
        seconds (their ``last_used``: see :class:`Idle`), for the caller
        to close."""
        stale = [(k, v) for k, v in self.items() if now - cast(Idle, v).last_used > timeout]
        for key, _ in stale:
            self.remove(key)
        return [v for _, v in stale]

