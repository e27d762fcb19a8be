"""Network configuration of the target namespace over netlink (pyroute2).

With ``--config-net`` the namespace gets what the guest would learn by
DHCP, SLAAC and DHCPv6, set directly: the host's addresses, routes and the
MTU.  Runs inside a namespace helper.
"""

from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute

from ..netparams import Network
from .hostinfo import HostFamily

IFA_F_NODAD = 0x02


def bring_up(ipr: IPRoute, ifname: str, mac: str | None) -> int:
    """Loopback and the tap up (the tap with its MAC set first); the tap's index."""
    index = ipr.link_lookup(ifname=ifname)[0]
    if mac:
        ipr.link("set", index=index, address=mac)
    for lo in ipr.link_lookup(ifname="lo"):
        ipr.link("set", index=lo, state="up")
    ipr.link("set", index=index, state="up")
    return index


def link_mac(ipr: IPRoute, index: int) -> str:
    return ipr.get_links(index)[0].get("address")


def configure(ipr: IPRoute, index: int, ifname: str, net: Network,
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

