"""What the host's network looks like, and what the guest is given from it.

The guest gets the host's own address, prefix, gateway and resolvers (no
NAT); options override each part.  The netlink helper reads the host over
rtnetlink (``netconf.read_host``) and from /etc/resolv.conf, in the host's
namespaces, and sends it to the broker as a map (``to_map``/``from_map``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ..clat import CLAT_ADDR4, CLAT_GATEWAY4, CLAT_PREFIX4
from ..config import Config
from ..netparams import DEFAULT_OUR_MAC, IPv4Params, IPv6Params, Network
from ..packet import mac_to_bytes

RESOLV_CONF = "/etc/resolv.conf"
PASTA_MTU = 65520
# No usable IPv4 on the host (offline, VPN down, boot): the guest still gets
# an address, and its gateway stands for the host's loopback, as passt does
LOCAL_ADDR4, LOCAL_PREFIX4, LOCAL_GATEWAY4 = "169.254.2.1", 16, "169.254.2.2"


RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTPROT_BOOT = 3         # what ``ip route add`` sets: routes we make up


@dataclass(frozen=True)
class Route:
    """A route of the host's template interface, or one for the namespace."""

    dst: str            # "198.51.100.0" / "::" ...
    dst_len: int
    gateway: str | None
    metric: int | None
    scope: int = RT_SCOPE_UNIVERSE   # RT_SCOPE_LINK for a prefix route
    proto: int = RTPROT_BOOT
    onlink: bool = False             # the gateway needs no on-link prefix


@dataclass(frozen=True)
class HostFamily:
    """One address family of the host's outbound interface."""

    ifname: str
    ifindex: int
    addr: str
    prefix_len: int
    gateway: str | None
    routes: tuple[Route, ...] = ()   # main table, on this interface, in the kernel's order
    # every address but link-local ones, in the kernel's order (``addr`` among them)
    addresses: tuple[tuple[str, int], ...] = ()
    link_local: str | None = None     # IPv6: the host's own fe80:: address here


@dataclass(frozen=True)
class HostInfo:
    """The host's network, as the netlink helper read it."""

    v4: HostFamily | None
    v6: HostFamily | None
    mtu: int | None
    resolvers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ifname(self) -> str | None:
        family = self.v4 or self.v6
        return family.ifname if family else None

    def to_map(self) -> dict[str, Any]:
        """msgpack-able: the netlink helper sends it to the broker."""
        return dataclasses.asdict(self)

    @classmethod
    def from_map(cls, fields: dict[str, Any]) -> HostInfo:
        return cls(_family_from_map(fields["v4"]), _family_from_map(fields["v6"]),
                   fields["mtu"], tuple(fields["resolvers"]), tuple(fields["search"]),
                   tuple(fields["warnings"]))


def _family_from_map(fields: dict[str, Any] | None) -> HostFamily | None:
    if fields is None:
        return None
    routes = tuple(Route(**route) for route in fields["routes"])
    addresses = tuple((addr, prefix_len) for addr, prefix_len in fields["addresses"])
    return HostFamily(**{**fields, "routes": routes, "addresses": addresses})


def read_resolv_conf(path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Nameservers and search domains; a missing file means none."""
    resolvers: list[str] = []
    search: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
    except OSError:
        return (), ()
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                resolvers.append(str(ipaddress.ip_address(words[1].split("%")[0])))
            except ValueError:
                continue
        elif words and words[0] in ("search", "domain"):
            search = words[1:]
    return tuple(resolvers), tuple(search)


# -- what the guest gets ---------------------------------------------------------

def guest_network(config: Config, host: HostInfo, default_mtu: int = PASTA_MTU) -> Network:
    """Combine the host's view with the options into the served parameters."""
    ipv4 = None if config.ipv6_only else _guest_ipv4(config, host)
    ipv6 = None if config.ipv4_only else _guest_ipv6(config, host)
    our_mac = mac_to_bytes(config.mac_addr) if config.mac_addr else DEFAULT_OUR_MAC
    guest_mac = mac_to_bytes(config.ns_mac_addr) if config.ns_mac_addr else None
    search = () if config.search_none or config.no_dhcp_search else (
        config.search or host.search)
    upstream = config.dns_host + (config.dns if config.dns and config.dns_forward
                                  else host.resolvers)
    return Network(our_mac=our_mac, guest_mac=guest_mac, mtu=config.mtu or default_mtu,
                   ipv4=ipv4, ipv6=ipv6, search=tuple(search), host_resolvers=tuple(upstream))


def _guest_ipv4(config: Config, host: HostInfo) -> IPv4Params | None:
    addr = config.address4 or (host.v4.addr if host.v4 else None)
    gateway = config.gateway4 or (host.v4.gateway if host.v4 else None)
    local = host.v4 is None and addr is None
    fallback = _no_host_ipv4(config)
    if local:
        addr, gateway = fallback[0], gateway or fallback[2]
    elif host.v4 is None and config.clat:
        gateway = gateway or CLAT_GATEWAY4
    if addr is None or gateway is None:
        return None
    prefix = config.prefix4 or (host.v4.prefix_len if host.v4 and not config.address4
                                else fallback[1] if local else _classful_prefix(addr))
    dns = _guest_dns(config, host, 4, gateway)
    return IPv4Params(_packed(addr), prefix, _packed(gateway), dns)


def _no_host_ipv4(config: Config) -> tuple[str, int, str]:
    """The guest's address, prefix length and gateway when the host has no
    IPv4: with --clat, from the IPv4 service continuity prefix (RFC 7335),
    as a CLAT's own; else link-local, reaching the host's loopback alone."""
    if config.clat:
        return CLAT_ADDR4, CLAT_PREFIX4, CLAT_GATEWAY4
    return LOCAL_ADDR4, LOCAL_PREFIX4, LOCAL_GATEWAY4


def _guest_ipv6(config: Config, host: HostInfo) -> IPv6Params | None:
    addr = config.address6 or (host.v6.addr if host.v6 else None)
    gateway = config.gateway6 or (host.v6.gateway if host.v6 else None)
    if addr is None or gateway is None:
        return None
    dns = _guest_dns(config, host, 6, gateway)
    link_local = host.v6.link_local if host.v6 else None
    return IPv6Params(_packed(addr), 64, _packed(gateway), dns,
                      _packed(link_local) if link_local else None)


def _guest_dns(config: Config, host: HostInfo, version: int, gateway: str) -> tuple[bytes, ...]:
    """Resolvers handed to the guest: -D, else --dns-forward, else the host's
    (a loopback resolver is reached through the gateway mapping)."""
    if config.dns_none or config.no_dhcp_dns:
        return ()
    chosen = [a for a in config.dns if ipaddress.ip_address(a).version == version]
    if not chosen:
        chosen = [a for a in config.dns_forward if ipaddress.ip_address(a).version == version]
    if not chosen:
        for resolver in host.resolvers:
            parsed = ipaddress.ip_address(resolver)
            if parsed.version != version:
                continue
            if parsed.is_loopback:
                alias = _loopback_alias(config, version, gateway)
                if alias:
                    chosen.append(alias)
            else:
                chosen.append(resolver)
    if not chosen and version == 4 and config.clat and host.resolvers and not any(
            ipaddress.ip_address(r).version == 4 for r in host.resolvers):
        chosen.append(gateway)      # forwarded to the host's IPv6 resolver: fwd.AddressMap
    unique = dict.fromkeys(_packed(a) for a in chosen)
    return tuple(unique)


def _loopback_alias(config: Config, version: int, gateway: str) -> str | None:
    """The guest-side address that stands for the host's loopback."""
    mapped = config.map_host_loopback
    if mapped:
        return mapped if ipaddress.ip_address(mapped).version == version else None
    return None if config.no_map_gw else gateway


def _classful_prefix(addr: str) -> int:
    first = int(addr.split(".")[0])
    return 8 if first < 128 else 16 if first < 192 else 24


def _packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# -- what --config-net sets in the namespace --------------------------------------

@dataclass(frozen=True)
class NsFamily:
    """One IP version of the namespace's interface, in the order to set it."""

    addresses: tuple[tuple[str, int], ...]
    routes: tuple[Route, ...]


def ns_family(config: Config, params: IPv4Params | IPv6Params,
              host: HostFamily | None) -> NsFamily:
    """As pasta: the template interface's addresses (unless ``-a`` or
    ``--no-copy-addrs``) and routes (unless ``-g`` or ``--no-copy-routes``),
    with the output interface translated to the tap.

    Routes go in an order the kernel accepts: prefix routes first, so that
    the gateways behind them are reachable, default routes last.  A gateway
    that no prefix covers (``-a`` and ``-g`` both outside the host's
    subnets, say) is declared on-link rather than refused.
    """
    version = 4 if isinstance(params, IPv4Params) else 6
    explicit_addr = config.address4 if version == 4 else config.address6
    explicit_gateway = config.gateway4 if version == 4 else config.gateway6
    own = (_text(params.addr), params.prefix_len)
    if explicit_addr or config.no_copy_addrs or host is None:
        addresses: tuple[tuple[str, int], ...] = (own,)
    else:
        addresses = tuple(own if addr == own[0] else (addr, prefix_len)
                          for addr, prefix_len in host.addresses) or (own,)
    copied = () if explicit_gateway or config.no_copy_routes or host is None else host.routes
    if not any(route.dst_len == 0 for route in copied):
        copied = (*copied, Route("0.0.0.0" if version == 4 else "::", 0,
                                 _text(params.gateway), None))
    on_link = [*addresses, *((r.dst, r.dst_len) for r in copied if r.gateway is None)]
    ordered = sorted(copied, key=lambda r: (r.dst_len == 0, r.gateway is not None))
    return NsFamily(addresses, tuple(_with_onlink(route, on_link) for route in ordered))


def _with_onlink(route: Route, on_link: list[tuple[str, int]]) -> Route:
    if route.gateway is None or route.onlink:
        return route
    gateway = ipaddress.ip_address(route.gateway)
    if gateway.version == 6 and gateway.is_link_local:   # fe80::/64 is always on-link
        return route
    covered = any(gateway in ipaddress.ip_network(f"{dst}/{dst_len}", strict=False)
                  for dst, dst_len in on_link)
    return route if covered else dataclasses.replace(route, onlink=True)


def _text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))
