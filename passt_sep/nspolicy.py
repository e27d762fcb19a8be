"""What the worker may ask the ns socket source for, from the options.

The source makes sockets inside the namespace, whose loopback is where
services that trust their own host listen.  So it serves only what the
forwarding options ask of it:

* ``connect`` (``udp_connect``): the namespace's side of a connection
  (datagram) spliced from the host itself: the TARGET ports of ``-t``
  (``-u``), after translation (``-t 10080:20080`` allows 20080, not 10080);
  with ``auto`` every port, as the host forwards whatever the namespace
  listens on, to the same port;
* ``listen`` (``udp_bind``): ``-T auto`` (``-U auto``) only, every port, as
  the namespace then gets whatever the host listens on.  Fixed ``-T``/``-U``
  ports are bound by the broker before the jail and never asked for.

``--no-tcp``/``--no-udp`` allow nothing of that protocol.

And only at the addresses the options call for: ``connect`` reaches the
namespace's own configured addresses, and its loopback only with
``--host-lo-to-ns-lo`` (as pasta: by default a service bound to the
namespace's loopback is not reachable from the host); ``listen`` binds
the loopback only.  No I/O here.
"""

from __future__ import annotations

import bisect
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .ports import MAX_PORT, Forwarding

if TYPE_CHECKING:
    from .config import Config
    from .netparams import Network

# the namespace's loopback address of each family, as raw bytes
LOOPBACK = {socket.AF_INET: bytes((127, 0, 0, 1)), socket.AF_INET6: bytes(15) + b"\x01"}
LOOPBACKS = frozenset(LOOPBACK.values())
CONNECTING = frozenset({"connect", "udp_connect"})


@dataclass(frozen=True)
class PortSet:
    """Ports as sorted, disjoint, non-adjacent inclusive ranges: a forward
    may span all 65535 ports, a set of ints would cost megabytes."""

    ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, ranges: Iterable[tuple[int, int]]) -> PortSet:
        merged: list[tuple[int, int]] = []
        for first, last in sorted(ranges):
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        return cls(tuple(merged))

    def __contains__(self, port: object) -> bool:
        if type(port) is not int:
            return False
        index = bisect.bisect_right(self.ranges, (port, MAX_PORT + 1)) - 1
        return index >= 0 and self.ranges[index][0] <= port <= self.ranges[index][1]


EVERY_PORT = PortSet(((1, MAX_PORT),))
NO_PORT = PortSet()


def targets(forwarding: Forwarding) -> PortSet:
    """The ports a host -> namespace forwarding connects to in the namespace."""
    if forwarding.mode == "auto":
        return EVERY_PORT
    if forwarding.mode == "none":
        return NO_PORT
    return PortSet.of((rule.target, rule.target_of(rule.last)) for rule in forwarding.rules)


def auto_listening(forwarding: Forwarding) -> PortSet:
    """The ports a namespace -> host forwarding has the source listen on."""
    return EVERY_PORT if forwarding.mode == "auto" else NO_PORT


@dataclass(frozen=True)
class Policy:
    """The allowed ports of each of the source's operations, and the
    addresses ``connect``/``udp_connect`` may reach (raw bytes)."""

    connect: PortSet = NO_PORT
    listen: PortSet = NO_PORT
    udp_connect: PortSet = NO_PORT
    udp_bind: PortSet = NO_PORT
    reach: frozenset[bytes] = frozenset()

    def ports(self, op: str) -> PortSet:
        """The ports ``op`` (one of the source's operations) may use."""
        return {"connect": self.connect, "listen": self.listen,
                "udp_connect": self.udp_connect, "udp_bind": self.udp_bind}[op]

    def addresses(self, op: str) -> frozenset[bytes]:
        """The addresses ``op`` may connect to, or (listening) bind."""
        return self.reach if op in CONNECTING else LOOPBACKS

    def serves_anything(self) -> bool:
        """False with every forwarding ``none`` (Podman's): then no source
        is needed at all."""
        return any(self.ports(op) != NO_PORT
                   for op in ("connect", "listen", "udp_connect", "udp_bind"))


def reachable(network: Network, host_lo_to_ns_lo: bool) -> frozenset[bytes]:
    """Where the namespace's side of a connection from the host itself may
    lead: the namespace's own addresses; its loopback only if asked."""
    own = {params.addr for params in (network.ipv4, network.ipv6) if params is not None}
    return frozenset(own | (LOOPBACKS if host_lo_to_ns_lo else set()))


def for_config(config: Config, network: Network) -> Policy:
    tcp = not config.no_tcp
    udp = not config.no_udp
    return Policy(connect=targets(config.tcp_ports) if tcp else NO_PORT,
                  listen=auto_listening(config.tcp_ns) if tcp else NO_PORT,
                  udp_connect=targets(config.udp_ports) if udp else NO_PORT,
                  udp_bind=auto_listening(config.udp_ns) if udp else NO_PORT,
                  reach=reachable(network, config.host_lo_to_ns_lo))
