"""What the host's network looks like, and what the guest is given from it.

The guest gets the host's own address, prefix, gateway and resolvers (no
NAT); options override each part.  Read over netlink (pyroute2) and from
/etc/resolv.conf by the broker, in the host's namespaces, before anything
else happens.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..config import Config
from ..netparams import DEFAULT_OUR_MAC, IPv4Params, IPv6Params, Network
from ..packet import mac_to_bytes

RESOLV_CONF = "/etc/resolv.conf"
PASTA_MTU = 65520
# No usable IPv4 on the host (offline, VPN down, boot): the guest still gets
# an address, and its gateway stands for the host's loopback, as passt does
LOCAL_ADDR4, LOCAL_PREFIX4, LOCAL_GATEWAY4 = "169.254.2.1", 16, "169.254.2.2"
IFA_F_TEMPORARY = 0x01


class HostConfigError(Exception):
    """The host offers nothing we can give the guest."""


@dataclass(frozen=True)
class Route:
    dst: str            # "198.51.100.0" / "::" ...
    dst_len: int
    gateway: str | None
    metric: int | None


@dataclass(frozen=True)
class HostFamily:
    """One address family of the host's outbound interface."""

    ifname: str
    ifindex: int
    addr: str
    prefix_len: int
    gateway: str | None
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class HostInfo:
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


# -- reading the host ---------------------------------------------------------

def read_host(config: Config, resolv_conf: str = RESOLV_CONF) -> HostInfo:
    resolvers, search = read_resolv_conf(resolv_conf)
    warnings = []
    with IPRoute() as ipr:
        v4 = None if config.ipv6_only else _read_family(ipr, socket.AF_INET, config)
        v6 = None if config.ipv4_only else _read_family(ipr, socket.AF_INET6, config)
        family = v4 or v6
        mtu = _link_mtu(ipr, family.ifindex) if family else None
    missing = []
    if v4 is None and not config.ipv6_only and not config.address4:
        missing.append(f"IPv4 is local-only ({LOCAL_ADDR4}/{LOCAL_PREFIX4}, gateway "
                       f"{LOCAL_GATEWAY4} = the host)")
    if v6 is None and not config.ipv4_only and not config.address6:
        missing.append("no IPv6")
    if missing:
        warnings.append("no usable default route on the host: " + "; ".join(missing))
    return HostInfo(v4, v6, mtu, resolvers, search, tuple(warnings))


def _read_family(ipr: IPRoute, family: int, config: Config) -> HostFamily | None:
    try:
        routes = list(ipr.get_routes(family=family, table=254))
    except NetlinkError:          # a kernel built or booted without IPv6
        return None
    ifindex = _outbound_ifindex(ipr, routes, config.interface)
    if ifindex is None:
        return None
    ifname = ipr.get_links(ifindex)[0].get("ifname")
    addr = _global_address(ipr, family, ifindex)
    if addr is None:
        return None
    gateway = next((r.get("gateway") for r in routes
                    if r["dst_len"] == 0 and r.get("oif") == ifindex and r.get("gateway")), None)
    copied = tuple(_route(r, family) for r in routes
                   if r.get("oif") == ifindex and r.get("gateway"))
    return HostFamily(ifname, ifindex, addr[0], addr[1], gateway, copied)


def _outbound_ifindex(ipr: IPRoute, routes: list, interface: str | None) -> int | None:
    if interface:
        found = ipr.link_lookup(ifname=interface)
        return found[0] if found else None
    defaults = sorted((r for r in routes if r["dst_len"] == 0 and r.get("oif")),
                      key=lambda r: r.get("priority") or 0)
    return defaults[0].get("oif") if defaults else None


def _global_address(ipr: IPRoute, family: int, ifindex: int) -> tuple[str, int] | None:
    candidates = [a for a in ipr.get_addr(family=family, index=ifindex) if a["scope"] == 0]
    candidates.sort(key=lambda a: bool((a.get("flags") or 0) & IFA_F_TEMPORARY))
    if not candidates:
        return None
    return candidates[0].get("address"), candidates[0]["prefixlen"]


def _route(message, family: int) -> Route:
    default = "0.0.0.0" if family == socket.AF_INET else "::"
    return Route(message.get("dst") or default, message["dst_len"], message.get("gateway"),
                 message.get("priority"))


def _link_mtu(ipr: IPRoute, ifindex: int) -> int | None:
    links = ipr.get_links(ifindex)
    return links[0].get("mtu") if links else None


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
    search = () if config.search_none else (config.search or host.search)
    upstream = config.dns if config.dns and config.dns_forward else host.resolvers
    return Network(our_mac=our_mac, guest_mac=guest_mac, mtu=config.mtu or default_mtu,
                   ipv4=ipv4, ipv6=ipv6, search=tuple(search), host_resolvers=tuple(upstream))


def _guest_ipv4(config: Config, host: HostInfo) -> IPv4Params | None:
    addr = config.address4 or (host.v4.addr if host.v4 else None)
    gateway = config.gateway4 or (host.v4.gateway if host.v4 else None)
    local = host.v4 is None and addr is None
    if local:
        addr, gateway = LOCAL_ADDR4, gateway or LOCAL_GATEWAY4
    if addr is None or gateway is None:
        return None
    prefix = config.prefix4 or (host.v4.prefix_len if host.v4 and not config.address4
                                else LOCAL_PREFIX4 if local else _classful_prefix(addr))
    dns = _guest_dns(config, host, 4, gateway)
    return IPv4Params(_packed(addr), prefix, _packed(gateway), dns)


def _guest_ipv6(config: Config, host: HostInfo) -> IPv6Params | None:
    addr = config.address6 or (host.v6.addr if host.v6 else None)
    gateway = config.gateway6 or (host.v6.gateway if host.v6 else None)
    if addr is None or gateway is None:
        return None
    dns = _guest_dns(config, host, 6, gateway)
    return IPv6Params(_packed(addr), 64, _packed(gateway), dns)


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
