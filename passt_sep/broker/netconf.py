"""Everything the broker says over rtnetlink (pyroute2): reading the host's
routes, addresses and MTU, and setting up the target namespace's tap.

With ``--config-net`` the namespace gets what the guest would learn by
DHCP, SLAAC and DHCPv6, set directly: the host's addresses, routes and the
MTU.  Only the netlink helper (``netlink.py``) imports this module, so only
that process pays for importing pyroute2.
"""

from __future__ import annotations

import ipaddress
import socket

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..config import Config
from ..netparams import Network
from .hostinfo import (
    LOCAL_ADDR4,
    LOCAL_GATEWAY4,
    LOCAL_PREFIX4,
    RESOLV_CONF,
    HostFamily,
    HostInfo,
    Route,
    read_resolv_conf,
)
from .tap import TAP_QUEUE_LEN

IFA_F_NODAD = 0x02
IFA_F_TEMPORARY = 0x01


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


# -- the target namespace ----------------------------------------------------

def set_up_tap(config: Config, ifname: str, net: Network, host: HostInfo) -> str:
    """Loopback and the tap up, configured with ``--config-net``; the tap's MAC."""
    with IPRoute() as ipr:
        index = _bring_up(ipr, ifname, config.ns_mac_addr)
        mac = _link_mac(ipr, index)
        if config.config_net:
            _configure(ipr, index, ifname, net, host.v4, host.v6,
                       copy_routes=not config.no_copy_routes)
    return mac


def _bring_up(ipr: IPRoute, ifname: str, mac: str | None) -> int:
    """Loopback and the tap up (the tap with its MAC set first, and its
    queue sized for bursts: ``tap.TAP_QUEUE_LEN``); the tap's index."""
    index = ipr.link_lookup(ifname=ifname)[0]
    if mac:
        ipr.link("set", index=index, address=mac)
    ipr.link("set", index=index, txqlen=TAP_QUEUE_LEN)
    for lo in ipr.link_lookup(ifname="lo"):
        ipr.link("set", index=lo, state="up")
    ipr.link("set", index=index, state="up")
    return index


def _link_mac(ipr: IPRoute, index: int) -> str:
    return ipr.get_links(index)[0].get("address")


def _configure(ipr: IPRoute, index: int, ifname: str, net: Network,
               host4: HostFamily | None, host6: HostFamily | None, copy_routes: bool) -> None:
    """Addresses, routes and MTU as the guest would get them."""
    ipr.link("set", index=index, mtu=net.mtu)
    if net.ipv4:
        ipr.addr("add", index=index, address=_text(net.ipv4.addr), prefixlen=net.ipv4.prefix_len)
        _routes(ipr, index, socket.AF_INET, _text(net.ipv4.gateway), host4, copy_routes)
    if net.ipv6:
        _disable_ra(ifname)
        ipr.addr("add", index=index, address=_text(net.ipv6.addr), prefixlen=net.ipv6.prefix_len,
                 family=socket.AF_INET6, flags=IFA_F_NODAD)
        _routes(ipr, index, socket.AF_INET6, _text(net.ipv6.gateway), host6, copy_routes)


def _routes(ipr: IPRoute, index: int, family: int, gateway: str,
            host: HostFamily | None, copy_routes: bool) -> None:
    """The default route, and the host's other routes through its gateways."""
    default = "0.0.0.0/0" if family == socket.AF_INET else "::/0"
    ipr.route("add", dst=default, gateway=gateway, oif=index, family=family)
    if not (copy_routes and host):
        return
    for route in host.routes:
        if route.dst_len == 0 or route.gateway is None:
            continue
        ipr.route("add", dst=f"{route.dst}/{route.dst_len}", gateway=route.gateway,
                  oif=index, family=family, priority=route.metric or 0)


def _disable_ra(ifname: str) -> None:
    """Addresses and routes are set here: router advertisements would add
    a second (SLAAC) address and another default route."""
    with open(f"/proc/sys/net/ipv6/conf/{ifname}/accept_ra", "w", encoding="ascii") as handle:
        handle.write("0")


def _text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))

