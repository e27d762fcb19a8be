"""What the worker's parts are built from, in one record (passt's ``struct
ctx`` is the model).

``worker.main.Worker`` builds it in dependency order: the loop and the log,
the configuration and network from the handoff, the guest link (which only
sends until it is started), then what is derived from those: the address
map, the flow table every protocol's handler shares (one ``--max-flows``
cap for all of them), the outbound binding and the guest's MAC address.  Every handler takes
the context first and reads what it needs from it at construction; nothing
in it refers to a part not yet built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..flow import FlowTable
from ..fwd import AddressMap
from ..handoff import WorkerConfig
from ..netparams import Network
from ..system.log import Logger
from .loop import Loop
from .outbound import DEFAULT_OUTBOUND, Outbound

BROADCAST_MAC = b"\xff" * 6


class FrameSink(Protocol):
    """Where frames for the guest go: the guest link's ``send``, and
    ``send_tcp`` for those of ``tcp_wire.FrameTemplate`` (a link may know
    more of them than of any frame)."""

    def send(self, frame: bytes) -> None: ...

    def send_tcp(self, frame: bytes) -> None: ...

    def send_tcp_frames(self, frames: Sequence[bytes | bytearray]) -> None:
        """``send_tcp`` for each of ``frames``, those of one flow."""


class GuestMac:
    """The guest's MAC address, as frames to it carry it: pasta's tap's,
    else broadcast, until the guest's own frames show it.
    Called for the current value, as the handlers do on every frame;
    ``services.GuestServices`` sets ``value``."""

    __slots__ = ("value",)

    def __init__(self, initial: bytes | None) -> None:
        self.value = initial or BROADCAST_MAC

    def __call__(self) -> bytes:
        return self.value


@dataclass(frozen=True)
class WorkerContext:
    """What every part of the worker shares."""

    loop: Loop
    log: Logger
    config: WorkerConfig
    net: Network
    link: FrameSink
    addrmap: AddressMap
    flows: FlowTable
    outbound: Outbound = DEFAULT_OUTBOUND
    guest_mac: GuestMac = field(default_factory=lambda: GuestMac(None))

    @classmethod
    def build(cls, loop: Loop, log: Logger, config: WorkerConfig, net: Network,
              link: FrameSink) -> WorkerContext:
        """The derived parts (address map, the flow table, outbound, guest
        MAC) from the rest."""
        return cls(loop, log, config, net, link, address_map(config, net),
                   FlowTable(config.max_flows), Outbound.from_config(config),
                   GuestMac(net.guest_mac))


def address_map(config: WorkerConfig, net: Network) -> AddressMap:
    return AddressMap.build(
        gateway4=net.ipv4.gateway if net.ipv4 else None,
        gateway6=net.ipv6.gateway if net.ipv6 else None,
        no_map_gw=config.no_map_gw, map_host_loopback=config.map_host_loopback,
        map_guest_addr=config.map_guest_addr,
        host_addr4=net.ipv4.addr if net.ipv4 else None,
        host_addr6=net.ipv6.addr if net.ipv6 else None,
        dns_forward=config.dns_forward, dns_servers=net.host_resolvers, nat64=config.nat64)
