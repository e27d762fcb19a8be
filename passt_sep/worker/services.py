"""Dispatch of the guest's frames to the protocol modules.

Every frame is parsed once down to its transport header; ARP, DHCP, NDP and
DHCPv6 are answered here from the sans-IO modules, echo requests go to the
ICMP handler, TCP and UDP to theirs.  A malformed or unhandled frame is
counted under its drop reason, never fatal.  ``GuestServices`` is also what
the guest link reports to (``guest.GuestReceiver``): frames, a guest that
comes (a router advertisement) or goes, offloads switched.
"""

from __future__ import annotations

from typing import Protocol

from .. import arp, dhcp, dhcpv6, ndp
from ..packet import (
    ETH_P_ARP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    UDP,
    Drop,
    Inbound,
    describe_frame,
    parse_ethernet,
    parse_ip_frame,
    parse_udp,
)
from ..system.log import TRACE, Logger
from ..tcp_wire import TcpSegment, parse_tcp_frame
from .context import WorkerContext
from .icmp_io import EchoHandler

DHCP_SERVER_PORT = 67
DHCPV6_SERVER_PORT = 547
NDP_TYPES = frozenset({133, 134, 135, 136, 137})


class TransportHandler(Protocol):
    tso: bool

    def on_guest_segment(self, inb: Inbound, now: float) -> None: ...

    def on_segment(self, seg: TcpSegment, src: bytes, dst: bytes, frame: memoryview,
                   now: float) -> None: ...

    def reset_all(self) -> None: ...


class DatagramHandler(Protocol):
    def on_guest_segment(self, inb: Inbound, now: float, header: UDP) -> None: ...


class GuestServices:
    def __init__(self, ctx: WorkerContext, echo: EchoHandler | None,
                 tcp: TransportHandler | None = None, udp: DatagramHandler | None = None) -> None:
        self.loop, self.net, self.config, self.log = ctx.loop, ctx.net, ctx.config, ctx.log
        self.send_frame = ctx.link.send
        self.guest_mac = ctx.guest_mac
        self.echo, self.tcp, self.udp = echo, tcp, udp
        self.ra_enabled = bool(ctx.net.ipv6) and not (ctx.config.no_ndp or ctx.config.no_ra)
        self.dhcpv6_enabled = not ctx.config.no_dhcpv6
        self.verify = ctx.config.verify_checksums

    def on_frame(self, frame: memoryview, now: float) -> None:
        """One guest frame, TCP first: it is most of them, so the common
        one (``tcp_wire.parse_tcp_frame``) is parsed in one go, and any
        other frame, a malformed one included, takes the general parsers."""
        try:
            parsed = parse_tcp_frame(frame, self.verify)
            if parsed is not None and self.tcp is not None:
                mac, src, dst, seg = parsed
                if mac[0] & 1 == 0:             # a unicast source: the guest's own
                    self.guest_mac.value = mac
                self.tcp.on_segment(seg, src, dst, frame, now)
                return
            eth = parse_ethernet(frame)
            if eth.src[0] & 1 == 0:             # a unicast source: the guest's own
                self.guest_mac.value = eth.src
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

    def on_connect(self) -> None:
        self.announce()

    def on_disconnect(self) -> None:
        """passt: with ``--one-off`` the worker is done; else the next guest
        starts afresh, and nobody is left to answer for this one's flows."""
        if self.config.one_off:
            self.loop.stop()
        elif self.tcp is not None:
            self.tcp.reset_all()

    def on_offload(self, on: bool) -> None:
        """vhost-user: the guest takes partial checksums and TSO, or not;
        flows made from now on follow."""
        if self.tcp is not None:
            self.tcp.tso = on

    def announce(self) -> None:
        """An unsolicited router advertisement: the guest may have sent its
        router solicitations before we were listening."""
        if self.ra_enabled:
            self.send_frame(ndp.router_advertisement(self.net, managed=self.dhcpv6_enabled,
                                                     other=self.dhcpv6_enabled,
                                                     send_mtu=self.config.advertise_mtu))


class TracingReceiver:
    """``--trace``: every guest frame said in the log before it is handled;
    built only then, so the frames of an untraced run pay nothing."""

    def __init__(self, services: GuestServices, log: Logger) -> None:
        self.services, self.log = services, log
        self.on_connect, self.on_disconnect = services.on_connect, services.on_disconnect
        self.on_offload = services.on_offload

    def on_frame(self, frame: memoryview, now: float) -> None:
        self.log.log(TRACE, f"guest: {describe_frame(frame)}")
        self.services.on_frame(frame, now)
