"""The resolved network parameters the worker serves to the guest.

The broker computes them once from the host's interfaces and the command
line (see ``broker/hostinfo.py``); they travel to the worker in the handoff.
Addresses are raw bytes, as the protocol modules use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_OUR_MAC = bytes.fromhex("9a559a559a55")


def link_local_from_mac(mac: bytes) -> bytes:
    """EUI-64 link-local address (fe80::/64) for a MAC address."""
    eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return b"\xfe\x80" + b"\0" * 6 + eui


@dataclass(frozen=True)
class IPv4Params:
    """What the guest is told about IPv4 (DHCP, ARP)."""

    addr: bytes                 # the guest's address (the host's, by default)
    prefix_len: int
    gateway: bytes              # default router the guest sees
    dns: tuple[bytes, ...] = ()  # resolvers handed out by DHCP


@dataclass(frozen=True)
class IPv6Params:
    """What the guest is told about IPv6 (NDP, DHCPv6)."""

    addr: bytes                 # the guest's address (the host's, by default)
    prefix_len: int             # 64 for SLAAC
    gateway: bytes              # the host's router (may be global or link-local)
    dns: tuple[bytes, ...] = ()  # RDNSS / DHCPv6 DNS servers
    host_link_local: bytes | None = None  # the host's own fe80:: address, if it has one

    @property
    def prefix(self) -> bytes:
        """``addr`` with the host part cleared."""
        value = int.from_bytes(self.addr, "big")
        mask = ((1 << 128) - 1) ^ ((1 << (128 - self.prefix_len)) - 1)
        return (value & mask).to_bytes(16, "big")


@dataclass(frozen=True)
class Network:
    """The guest's view of the network, which the worker answers for."""

    our_mac: bytes = DEFAULT_OUR_MAC     # passt-sep's MAC: the guest's gateway
    guest_mac: bytes | None = None       # known in pasta mode; else learned
    mtu: int = 65520
    ipv4: IPv4Params | None = None
    ipv6: IPv6Params | None = None
    search: tuple[str, ...] = field(default_factory=tuple)  # DNS search list
    host_resolvers: tuple[str, ...] = ()  # where --dns-forward queries go

    @property
    def our_link_local(self) -> bytes:
        """Source address of our router advertisements, NDP and DHCPv6
        answers, so the guest's router: as passt, the gateway if it is
        link-local, else the host's own link-local address on the template
        interface, else one made from our MAC."""
        if self.ipv6 and self.ipv6.gateway[:2] == b"\xfe\x80":
            return self.ipv6.gateway
        if self.ipv6 and self.ipv6.host_link_local:
            return self.ipv6.host_link_local
        return link_local_from_mac(self.our_mac)
