"""Network configuration of the target namespace over netlink (``rtnl``).

With ``--config-net`` the namespace gets what the guest would learn by
DHCP, SLAAC and DHCPv6, set directly: the host's addresses, routes and the
MTU.  Runs inside a namespace helper.
"""

from __future__ import annotations

import ipaddress
import socket

from ..netparams import Network
from .hostinfo import HostFamily
from .rtnl import Rtnl

IFA_F_NODAD = 0x02


def bring_up(ipr: Rtnl, ifname: str, mac: str | None) -> int:
    """Loopback and the tap up (the tap with its MAC set first); the tap's index."""
    index = ipr.link_index(ifname)
    if index is None:
        raise OSError(f"no link {ifname} after creating it")
    if mac:
        ipr.set_link(index, mac=mac)
    lo = ipr.link_index("lo")
    if lo is not None:
        ipr.set_link(lo, up=True)
    ipr.set_link(index, up=True)
    return index


def link_mac(ipr: Rtnl, index: int) -> str:
    link = ipr.link(index)
    if link is None or link["address"] is None:
        raise OSError(f"no MAC address for link {index}")
    return link["address"]


def configure(ipr: Rtnl, index: int, ifname: str, net: Network,
              host4: HostFamily | None, host6: HostFamily | None, copy_routes: bool) -> None:
    """Addresses, routes and MTU as the guest would get them."""
    ipr.set_link(index, mtu=net.mtu)
    if net.ipv4:
        ipr.add_address(index, socket.AF_INET, _text(net.ipv4.addr), net.ipv4.prefix_len)
        _routes(ipr, index, socket.AF_INET, _text(net.ipv4.gateway), host4, copy_routes)
    if net.ipv6:
        _disable_ra(ifname)
        ipr.add_address(index, socket.AF_INET6, _text(net.ipv6.addr), net.ipv6.prefix_len,
                        flags=IFA_F_NODAD)
        _routes(ipr, index, socket.AF_INET6, _text(net.ipv6.gateway), host6, copy_routes)


def _routes(ipr: Rtnl, index: int, family: int, gateway: str,
            host: HostFamily | None, copy_routes: bool) -> None:
    """The default route, and the host's other routes through its gateways."""
    ipr.add_route(index, family, "", 0, gateway)
    if not (copy_routes and host):
        return
    for route in host.routes:
        if route.dst_len == 0 or route.gateway is None:
            continue
        ipr.add_route(index, family, route.dst, route.dst_len, route.gateway, route.metric)


def _disable_ra(ifname: str) -> None:
    """Addresses and routes are set here: router advertisements would add
    a second (SLAAC) address and another default route."""
    with open(f"/proc/sys/net/ipv6/conf/{ifname}/accept_ra", "w", encoding="ascii") as handle:
        handle.write("0")


def _text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))

