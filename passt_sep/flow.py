"""The flow table: every connection or datagram stream between the guest and
the host, whatever its protocol.

Theory
------
A *flow* joins one guest endpoint to one host socket.  It is named by a
:class:`FlowKey` in the guest's terms: the guest's address and port and the
peer's address and port *as the guest sees them* (before any special-address
mapping of :mod:`passt_sep.fwd`), so a frame from the guest finds its flow
with one lookup and no translation.

Who creates a flow:

* the guest, with its first packet towards a new peer (a TCP SYN, a UDP
  datagram): outbound;
* the host, when a forwarded port's listener accepts a connection or
  receives a datagram: inbound.

A flow lives through protocol states of its own (TCP: connecting,
handshake, established with half-closes, closed and lingering; UDP: active
until idle) and ends when its protocol says so: both ends closed, a reset,
a timeout.  The protocol handler removes it then; the table never expires
anything by itself.

The table is capped (``--max-flows``): when it is full ``add`` refuses and
the caller refuses the flow (TCP: RST to the guest or to the accepted
peer) and counts it.  A socket's events reach its flow without the table:
the I/O layer registers each socket with its flow bound to the callback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, NamedTuple, TypeVar

V = TypeVar("V")


class FlowKey(NamedTuple):
    """A flow's name, in the addresses the guest uses (4 or 16 bytes).  A
    tuple: immutable, and hashed in C on every frame's lookup."""

    proto: int
    guest_addr: bytes
    guest_port: int
    peer_addr: bytes
    peer_port: int


class FlowTable(Generic[V]):
    """At most ``max_flows`` flows by key."""

    def __init__(self, max_flows: int) -> None:
        self.max_flows = max_flows
        self._flows: dict[FlowKey, V] = {}

    def get(self, key: FlowKey) -> V | None:
        return self._flows.get(key)

    def add(self, key: FlowKey, value: V) -> bool:
        """Insert a new flow; False when the table is full (or the key is
        taken: callers look up first, so that would be their bug)."""
        if len(self._flows) >= self.max_flows or key in self._flows:
            return False
        self._flows[key] = value
        return True

    @property
    def full(self) -> bool:
        return len(self._flows) >= self.max_flows

    def remove(self, key: FlowKey) -> V | None:
        """Forget a flow; the value, if it was there."""
        return self._flows.pop(key, None)

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    def __iter__(self) -> Iterator[FlowKey]:
        """The keys, as a snapshot: flows may be removed while walking."""
        return iter(list(self._flows))
