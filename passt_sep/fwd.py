"""Address translation between the guest's view and the host's sockets.

passt-sep does no NAT except for a few documented special addresses, shared
by TCP, UDP and ICMP:

* the gateway address (or ``--map-host-loopback ADDR``) stands for the host
  itself: the guest's packets to it go to the host's loopback, and loopback
  peers appear to the guest as coming from it, unless ``--no-map-gw``;
* ``--map-guest-addr ADDR`` stands for the host's own address (which the
  guest also holds, so it could not otherwise reach the host by it);
  without it, peers at that address appear to the guest as the gateway,
  as with pasta, whatever ``--no-map-gw`` says (the guest could not answer
  its own address);
* ``--dns-forward ADDR``: DNS to ADDR goes to the host's first resolver.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LOOPBACK4 = bytes([127, 0, 0, 1])
LOOPBACK6 = bytes(15) + b"\x01"


def _packed(text: str | None) -> bytes | None:
    return ipaddress.ip_address(text).packed if text else None


def is_loopback(addr: bytes) -> bool:
    return addr[0] == 127 if len(addr) == 4 else addr == LOOPBACK6


def is_loopback_text(host: str) -> bool:
    """``is_loopback`` of a socket API address (no conversion per datagram;
    IPv6 sockets here are V6ONLY, so no mapped IPv4)."""
    return host.startswith("127.") or host.partition("%")[0] == "::1"


@dataclass(frozen=True)
class AddressMap:
    """The special addresses in force, as raw bytes per family."""

    host_loopback4: bytes | None = None   # guest-side address meaning host loopback
    host_loopback6: bytes | None = None
    guest_addr4: bytes | None = None      # --map-guest-addr: means the host's address
    guest_addr6: bytes | None = None
    host_addr4: bytes | None = None       # the host's own address (= the guest's)
    host_addr6: bytes | None = None
    gateway4: bytes | None = None         # what the guest sees for its own address
    gateway6: bytes | None = None
    dns_forward4: bytes | None = None     # --dns-forward addresses
    dns_forward6: bytes | None = None
    dns_server4: bytes | None = None      # where forwarded DNS goes
    dns_server6: bytes | None = None

    @classmethod
    def build(cls, *, gateway4: bytes | None, gateway6: bytes | None, no_map_gw: bool,
              map_host_loopback: str | None, map_guest_addr: str | None,
              host_addr4: bytes | None, host_addr6: bytes | None,
              dns_forward: tuple[str, ...] = (), dns_servers: tuple[str, ...] = ()
              ) -> AddressMap:
        loop4 = loop6 = None
        if map_host_loopback:
            mapped = _packed(map_host_loopback)
            loop4, loop6 = (mapped, None) if len(mapped) == 4 else (None, mapped)
        elif not no_map_gw:
            loop4, loop6 = gateway4, gateway6
        guest = _packed(map_guest_addr)
        return cls(
            host_loopback4=loop4, host_loopback6=loop6,
            guest_addr4=guest if guest and len(guest) == 4 else None,
            guest_addr6=guest if guest and len(guest) == 16 else None,
            host_addr4=host_addr4, host_addr6=host_addr6,
            gateway4=gateway4, gateway6=gateway6,
            dns_forward4=_first_of_family(dns_forward, 4),
            dns_forward6=_first_of_family(dns_forward, 16),
            dns_server4=_first_of_family(dns_servers, 4),
            dns_server6=_first_of_family(dns_servers, 16),
        )

    def to_host(self, dst: bytes, port: int) -> bytes:
        """Where a guest's packet for ``dst:port`` goes on the host."""
        if len(dst) == 4:
            return self._to_host(dst, port, self.host_loopback4, LOOPBACK4, self.guest_addr4,
                                 self.host_addr4, self.dns_forward4, self.dns_server4)
        return self._to_host(dst, port, self.host_loopback6, LOOPBACK6, self.guest_addr6,
                             self.host_addr6, self.dns_forward6, self.dns_server6)

    @staticmethod
    def _to_host(dst: bytes, port: int, loop_alias: bytes | None, loopback: bytes,
                 guest_alias: bytes | None, host_addr: bytes | None,
                 dns_alias: bytes | None, dns_server: bytes | None) -> bytes:
        if port == 53 and dns_alias is not None and dst == dns_alias and dns_server:
            return dns_server
        if loop_alias is not None and dst == loop_alias:
            return loopback
        if guest_alias is not None and dst == guest_alias and host_addr is not None:
            return host_addr
        return dst

    def to_guest(self, src: bytes, port: int, original_dst: bytes | None = None) -> bytes:
        """The source address the guest sees for a host peer ``src:port``.

        ``original_dst`` is the address the guest itself used, when the flow
        was opened by the guest: replies come back from it unchanged.
        """
        if original_dst is not None:
            return original_dst
        v4 = len(src) == 4
        if is_loopback(src):
            alias = self.host_loopback4 if v4 else self.host_loopback6
            if alias is not None:
                return alias
        host_addr = self.host_addr4 if v4 else self.host_addr6
        guest_alias = self.guest_addr4 if v4 else self.guest_addr6
        if src == host_addr:
            alias = guest_alias or (self.gateway4 if v4 else self.gateway6)
            if alias is not None:
                return alias
        return src


def _first_of_family(addresses: tuple[str, ...], length: int) -> bytes | None:
    for text in addresses:
        packed = ipaddress.ip_address(text).packed
        if len(packed) == length:
            return packed
    return None
