"""Dispatch of the guest's frames to the protocol modules.

Every frame is parsed once down to its transport header; ARP, DHCP, NDP and
DHCPv6 are answered here from the sans-IO modules, echo requests go to the
ICMP handler, TCP and UDP to theirs.  A malformed or unhandled frame is
counted under its drop reason, never fatal.
"""

from __future__ import annotations

from typing import Protocol

from .. import arp, dhcp, dhcpv6, ndp
from ..handoff import WorkerConfig
from ..log import Logger
from ..netparams import Network
from ..packet import (
    ETH_P_ARP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    UDP,
    Drop,
    Inbound,
    parse_ethernet,
    parse_ip_frame,
    parse_udp,
)
from .icmp_io import EchoHandler
from .loop import Loop

DHCP_SERVER_PORT = 67
DHCPV6_SERVER_PORT = 547
NDP_TYPES = frozenset({133, 134, 135, 136, 137})


class TransportHandler(Protocol):
    def on_guest_segment(self, inb: Inbound, now: float) -> None: ...


class DatagramHandler(Protocol):
    def on_guest_segment(self, inb: Inbound, now: float, header: UDP) -> None: ...


class GuestServices:
    def __init__(self, loop: Loop, net: Network, config: WorkerConfig, log: Logger,
                 send_frame, echo: EchoHandler | None,
                 tcp: TransportHandler | None = None, udp: DatagramHandler | None = None) -> None:
        self.loop, self.net, self.config, self.log = loop, net, config, log
        self.send_frame = send_frame
        self.echo, self.tcp, self.udp = echo, tcp, udp
        self.guest_mac = net.guest_mac or b"\xff" * 6
        self.ra_enabled = bool(net.ipv6) and not (config.no_ndp or config.no_ra)
        self.dhcpv6_enabled = not config.no_dhcpv6

    def mac(self) -> bytes:
        return self.guest_mac

    def on_frame(self, frame: memoryview, now: float) -> None:
        """One guest frame, TCP first: it is most of them, so it takes no
        detour through a further call."""
        try:
            eth = parse_ethernet(frame)
            if eth.src[0] & 1 == 0:
                self.guest_mac = eth.src
            if eth.ethertype == ETH_P_ARP:
                self._answer(arp.handle_arp(self.net, eth) if self.net.ipv4 else None)
                return
            inb = parse_ip_frame(eth)
            if inb.proto == IPPROTO_TCP:
                if self.tcp is None:
                    raise Drop("tcp_disabled")
                self.tcp.on_guest_segment(inb, now)
            else:
                self._other(inb, now)
        except Drop as drop:
            self.loop.counters.add(f"drop_{drop.reason}")

    def _other(self, inb: Inbound, now: float) -> None:
        if inb.proto == IPPROTO_UDP:
            self._udp(inb, now)
        elif inb.proto == IPPROTO_ICMP and not inb.is_ipv6:
            self._echo(inb, now)
        elif inb.proto == IPPROTO_ICMPV6 and inb.is_ipv6:
            self._icmpv6(inb, now)
        else:
            raise Drop("ip_proto")

    def _answer(self, reply: bytes | None) -> None:
        if reply is not None:
            self.send_frame(reply)

    def _udp(self, inb: Inbound, now: float) -> None:
        udp = parse_udp(inb.l4)
        if not inb.is_ipv6 and udp.dport == DHCP_SERVER_PORT and not self.config.no_dhcp:
            if self.net.ipv4 is None:
                raise Drop("dhcp_no_ipv4")
            self._answer(dhcp.handle_dhcp(self.net, inb, udp, send_mtu=self.config.advertise_mtu,
                                          **self._dns_flags()))
            return
        if inb.is_ipv6 and udp.dport == DHCPV6_SERVER_PORT and not self.config.no_dhcpv6:
            if self.net.ipv6 is None:
                raise Drop("dhcpv6_no_ipv6")
            self._answer(dhcpv6.handle_dhcpv6(self.net, inb, udp, **self._dns_flags()))
            return
        if self.udp is None:
            raise Drop("udp_disabled")
        self.udp.on_guest_segment(inb, now, udp)

    def _dns_flags(self) -> dict[str, bool]:
        return {"send_dns": not self.config.no_dhcp_dns,
                "send_search": not self.config.no_dhcp_search}

    def _icmpv6(self, inb: Inbound, now: float) -> None:
        if len(inb.l4) and inb.l4[0] in NDP_TYPES:
            if self.config.no_ndp or self.net.ipv6 is None:
                raise Drop("ndp_disabled")
            self._answer(ndp.handle_ndp(self.net, inb, send_ra=self.ra_enabled,
                                        managed=self.dhcpv6_enabled, other=self.dhcpv6_enabled,
                                        send_mtu=self.config.advertise_mtu))
            return
        self._echo(inb, now)

    def _echo(self, inb: Inbound, now: float) -> None:
        if self.echo is None:
            raise Drop("icmp_disabled")
        if not self.echo.on_guest_echo(inb, now):
            raise Drop("icmp_type")

    def announce(self) -> None:
        """An unsolicited router advertisement: the guest may have sent its
        router solicitations before we were listening."""
        if self.ra_enabled:
            self.send_frame(ndp.router_advertisement(self.net, managed=self.dhcpv6_enabled,
                                                     other=self.dhcpv6_enabled,
                                                     send_mtu=self.config.advertise_mtu))
