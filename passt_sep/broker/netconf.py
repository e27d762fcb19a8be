"""Everything the broker says over rtnetlink (pyroute2): reading the host's
routes, addresses and MTU, and setting up the target namespace's tap.

With ``--config-net`` the namespace gets, as with pasta, every address
and route of the host's template interface (``hostinfo.ns_family`` decides
which, in what order) and the MTU; without it the tap stays down.  Only the
netlink helper (``netlink.py``) imports this module, so only that process
pays for importing pyroute2.
"""

from __future__ import annotations

import errno
import ipaddress
import os
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
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    HostFamily,
    HostInfo,
    NsFamily,
    Route,
    ns_family,
    read_resolv_conf,
)
from .tap import TAP_QUEUE_LEN

IFA_F_NODAD = 0x02
IFA_F_TEMPORARY = 0x01
RTN_UNICAST = 1
RTNH_F_ONLINK = 0x04


class NetconfError(Exception):
    """A netlink request failed: what was being done, and the kernel's reason."""


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
    if v4 is None and not config.ipv6_only and not config.address4 and not config.clat:
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
    found = list(ipr.get_addr(family=family, index=ifindex))
    addresses = _copied_addresses(found)
    addr = _primary_address(found, addresses)
    if addr is None:
        return None
    gateway = next((r.get("gateway") for r in routes
                    if r["dst_len"] == 0 and r.get("oif") == ifindex and r.get("gateway")), None)
    copied = tuple(_route(r, family) for r in routes
                   if r.get("oif") == ifindex and r["type"] == RTN_UNICAST)
    link_local = next((a.get("address") for a in found if a["scope"] == RT_SCOPE_LINK), None)
    return HostFamily(ifname, ifindex, addr[0], addr[1], gateway, copied, addresses,
                      link_local if family == socket.AF_INET6 else None)


def _outbound_ifindex(ipr: IPRoute, routes: list, interface: str | None) -> int | None:
    if interface:
        found = ipr.link_lookup(ifname=interface)
        return found[0] if found else None
    defaults = sorted((r for r in routes if r["dst_len"] == 0 and r.get("oif")),
                      key=lambda r: r.get("priority") or 0)
    return defaults[0].get("oif") if defaults else None


def _copied_addresses(found: list) -> tuple[tuple[str, int], ...]:
    """Global addresses, in the kernel's order: what --config-net copies."""
    return tuple((a.get("address"), a["prefixlen"]) for a in found
                 if a["scope"] == RT_SCOPE_UNIVERSE
                 and not ipaddress.ip_address(a.get("address")).is_link_local)


def _primary_address(found: list, addresses: tuple[tuple[str, int], ...]) -> tuple[str, int] | None:
    """The guest's address: the first global one, a temporary (privacy) one last."""
    temporary = {a.get("address") for a in found if (a.get("flags") or 0) & IFA_F_TEMPORARY}
    ranked = sorted(addresses, key=lambda a: a[0] in temporary)
    return ranked[0] if ranked else None


def _route(message, family: int) -> Route:
    default = "0.0.0.0" if family == socket.AF_INET else "::"
    return Route(message.get("dst") or default, message["dst_len"], message.get("gateway"),
                 message.get("priority"), message["scope"], message["proto"],
                 bool(message["flags"] & RTNH_F_ONLINK))


def _link_mtu(ipr: IPRoute, ifindex: int) -> int | None:
    links = ipr.get_links(ifindex)
    return links[0].get("mtu") if links else None


# -- the target namespace ----------------------------------------------------

def set_up_tap(config: Config, ifname: str, net: Network, host: HostInfo) -> str:
    """Loopback up and the tap's MAC; with ``--config-net`` the tap up and
    configured too, else, as pasta, left down for the namespace's own DHCP,
    SLAAC or manual setup.  Returns the tap's MAC."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        if config.ns_mac_addr:
            _request(f"cannot set the MAC address of {ifname}", ipr.link, "set", index=index,
                     address=config.ns_mac_addr)
        # a queue that holds a burst while the worker catches up (tap.TAP_QUEUE_LEN)
        _request(f"cannot set the queue length of {ifname}", ipr.link, "set", index=index,
                 txqlen=TAP_QUEUE_LEN)
        for lo in ipr.link_lookup(ifname="lo"):
            _request("cannot bring lo up", ipr.link, "set", index=lo, state="up")
        if config.config_net:
            _configure(ipr, index, ifname, config, net, host)
        return ipr.get_links(index)[0].get("address")


def _configure(ipr: IPRoute, index: int, ifname: str, config: Config, net: Network,
               host: HostInfo) -> None:
    """MTU, then the tap up, then per IP version addresses and routes."""
    _request(f"cannot set the MTU of {ifname} to {net.mtu}", ipr.link, "set", index=index,
             mtu=net.mtu)
    if net.ipv6:
        _disable_ra(ifname)
    _request(f"cannot bring {ifname} up", ipr.link, "set", index=index, state="up")
    if net.ipv4:
        _apply(ipr, index, ifname, socket.AF_INET, ns_family(config, net.ipv4, host.v4))
    if net.ipv6:
        _apply(ipr, index, ifname, socket.AF_INET6, ns_family(config, net.ipv6, host.v6))


def _apply(ipr: IPRoute, index: int, ifname: str, family: int, plan: NsFamily) -> None:
    flags = IFA_F_NODAD if family == socket.AF_INET6 else 0
    for addr, prefix_len in plan.addresses:
        _request(f"cannot add the address {addr}/{prefix_len} to {ifname}", ipr.addr, "add",
                 index=index, address=addr, prefixlen=prefix_len, family=family, flags=flags)
    for route in plan.routes:
        _add_route(ipr, index, ifname, family, route)


def _add_route(ipr: IPRoute, index: int, ifname: str, family: int, route: Route) -> None:
    """A route already there (the prefix route of an address) is fine."""
    request = {"dst": f"{route.dst}/{route.dst_len}", "oif": index, "family": family,
               "scope": route.scope, "proto": route.proto}
    if route.gateway:
        request["gateway"] = route.gateway
    if route.metric:
        request["priority"] = route.metric
    if route.onlink:
        request["flags"] = RTNH_F_ONLINK
    try:
        ipr.route("add", **request)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise NetconfError(f"cannot add {_describe(route)} on {ifname}: "
                               f"{os.strerror(exc.code)}") from None


def _describe(route: Route) -> str:
    what = "the default route" if route.dst_len == 0 else \
        f"the route to {route.dst}/{route.dst_len}"
    return f"{what} via {route.gateway}" if route.gateway else what


def _request(what: str, call, *args, **kwargs) -> None:
    """One netlink request; its failure said in words."""
    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        raise NetconfError(f"{what}: {os.strerror(exc.code)}") from None


def _disable_ra(ifname: str) -> None:
    """Addresses and routes are set here: router advertisements would add
    a second (SLAAC) address and another default route."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/accept_ra"
    try:
        with open(path, "w", encoding="ascii") as handle:
            handle.write("0")
    except OSError as exc:
        raise NetconfError(f"cannot turn off router advertisements on {ifname}: "
                           f"{exc.strerror}") from None
