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
* ``--dns-forward ADDR``: DNS to ADDR goes to the host's first resolver;
* ``--clat``: every other IPv4 destination D (but loopback, multicast and
  broadcast ones) goes to the IPv6 address that stands for D in the NAT64
  prefix (``clat``); an IPv6 peer appears to an IPv4 guest as the IPv4
  address it embeds, if it is in the prefix, else as the gateway.  Without
  an IPv4 resolver on the host, DNS to the guest's IPv4 gateway (or the
  IPv4 ``--dns-forward`` address) goes to the host's IPv6 resolver.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from .clat import Nat64Prefix

LOOPBACK4 = bytes([127, 0, 0, 1])
LOOPBACK6 = bytes(15) + b"\x01"


def _packed(text: str | None) -> bytes | None:
    return ipaddress.ip_address(text).packed if text else None


def is_loopback(addr: bytes) -> bool:
    return addr[0] == 127 if len(addr) == 4 else addr == LOOPBACK6


def is_loopback_text(host: str) -> bool:
    """``is_loopback`` of a socket API address (no conversion per datagram),
    IPv4 ones as ``unmapped_text`` leaves them."""
    return host.startswith("127.") or host.partition("%")[0] == "::1"


# A dual-stack socket (one AF_INET6 socket without IPV6_V6ONLY taking both
# families) shows an IPv4 peer as ::ffff:a.b.c.d and reaches one at it.
V4_MAPPED = bytes(10) + b"\xff\xff"
V4_MAPPED_TEXT = "::ffff:"


def unmapped(addr: bytes) -> bytes:
    """A dual-stack socket's IPv4 peer as the IPv4 address it is; any other
    address as it is."""
    return addr[12:] if len(addr) == 16 and addr[:12] == V4_MAPPED else addr


def v4_mapped(addr: bytes) -> bytes:
    """An IPv4 address as a dual-stack socket takes it; an IPv6 one as it is."""
    return V4_MAPPED + addr if len(addr) == 4 else addr


def unmapped_text(host: str) -> str:
    """``unmapped`` of a socket API address."""
    if host.startswith(V4_MAPPED_TEXT) and "." in host:
        return host[len(V4_MAPPED_TEXT):]
    return host


def text_family(host: str) -> int:
    """AF_INET or AF_INET6: the family of a socket API address."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


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
    nat64: Nat64Prefix | None = None      # --clat: IPv4 leaves as IPv6 in this prefix

    @classmethod
    def build(cls, *, gateway4: bytes | None, gateway6: bytes | None, no_map_gw: bool,
              map_host_loopback: str | None, map_guest_addr: str | None,
              host_addr4: bytes | None, host_addr6: bytes | None,
              dns_forward: tuple[str, ...] = (), dns_servers: tuple[str, ...] = (),
              nat64: Nat64Prefix | None = None) -> AddressMap:
        loop4 = loop6 = None
        if map_host_loopback:
            mapped = _packed(map_host_loopback)
            loop4, loop6 = (mapped, None) if len(mapped) == 4 else (None, mapped)
        elif not no_map_gw:
            loop4, loop6 = gateway4, gateway6
        guest = _packed(map_guest_addr)
        dns_forward4 = _first_of_family(dns_forward, 4)
        dns_server4 = _first_of_family(dns_servers, 4)
        dns_server6 = _first_of_family(dns_servers, 16)
        if nat64 is not None and dns_server4 is None and dns_server6 is not None:
            # the CLAT's IPv4 resolver (hostinfo hands out the gateway) is the host's IPv6 one
            dns_forward4, dns_server4 = dns_forward4 or gateway4, dns_server6
        return cls(
            host_loopback4=loop4, host_loopback6=loop6,
            guest_addr4=guest if guest and len(guest) == 4 else None,
            guest_addr6=guest if guest and len(guest) == 16 else None,
            host_addr4=host_addr4, host_addr6=host_addr6,
            gateway4=gateway4, gateway6=gateway6,
            dns_forward4=dns_forward4, dns_forward6=_first_of_family(dns_forward, 16),
            dns_server4=dns_server4, dns_server6=dns_server6, nat64=nat64,
        )

    def to_host(self, dst: bytes, port: int) -> bytes:
        """Where a guest's packet for ``dst:port`` goes on the host: with
        ``--clat``, an IPv4 destination may become an IPv6 one."""
        if len(dst) == 4:
            host = self._to_host(dst, port, self.host_loopback4, LOOPBACK4, self.guest_addr4,
                                 self.host_addr4, self.dns_forward4, self.dns_server4)
            if self.nat64 is not None and host == dst and translatable(dst):
                return self.nat64.synthesize(dst)
            return host
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

    def to_ipv4_guest(self, src: bytes) -> bytes | None:
        """``--clat``: the IPv4 address an IPv6 host peer ``src`` appears
        from to an IPv4 guest: the one it embeds if it is in the NAT64
        prefix, else the gateway (host loopback: its alias, as for IPv4)."""
        if self.nat64 is None:
            return None
        if is_loopback(src) and self.host_loopback4 is not None:
            return self.host_loopback4
        return self.behind_nat64(src) or self.gateway4

    def behind_nat64(self, src: bytes) -> bytes | None:
        """``--clat``: the IPv4 host an IPv6 peer ``src`` stands for, when
        it is in the NAT64 prefix (an IPv4 address the network translates),
        else None."""
        if self.nat64 is None:
            return None
        embedded = self.nat64.extract(src)
        if embedded is not None and translatable(embedded) and embedded != self.host_addr4:
            return embedded
        return None


def translatable(addr4: bytes) -> bool:
    """An IPv4 address a NAT64 can stand for: not "this network",
    loopback, multicast or broadcast."""
    return addr4[0] not in (0, 127) and addr4[0] < 224


def _first_of_family(addresses: tuple[str, ...], length: int) -> bytes | None:
    for text in addresses:
        packed = ipaddress.ip_address(text).packed
        if len(packed) == length:
            return packed
    return None
