"""Fuzz target ``services``: the worker's frame dispatch
(``worker.services.GuestServices.on_frame``), the path every guest frame
takes: Ethernet, ARP, IP, then DHCP, DHCPv6, NDP, echo, TCP or UDP.

The handlers that would do I/O are stood in for by their sans-IO parts:
TCP by ``parse_tcp`` (checked against ``parse_tcp_frame``, which parses
the common frame first) and the RST for an unknown flow, UDP by
``parse_guest_datagram``, echo by ``parse_echo_request``.

Input: one Ethernet frame, then two control bytes (from the end): the
network, and the configuration (pasta or passt mode, with DHCP, NDP, RA,
DHCPv6 or DNS options turned off).  Documented behaviour: ``on_frame``
never raises (a malformed frame is counted under its ``Drop`` reason).
Invariant: every answer sent to the guest is an Ethernet frame that parses.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_services.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import icmp, packet, tcp_wire, udp  # noqa: E402
from passt_sep.config import parse_args  # noqa: E402
from passt_sep.handoff import WorkerConfig  # noqa: E402
from passt_sep.system.log import Logger  # noqa: E402
from passt_sep.tcp_wire import TcpSegment  # noqa: E402
from passt_sep.worker.context import WorkerContext  # noqa: E402
from passt_sep.worker.loop import Counters  # noqa: E402
from passt_sep.worker.services import GuestServices  # noqa: E402

NAME = "services"
ALLOWED: tuple[type[BaseException], ...] = ()
DICTIONARY = [b"\x08\x00", b"\x86\xdd", b"\x08\x06", b"\x06", b"\x11", b"\x01", b"\x3a",
              b"\x00\x43", b"\x02\x23", bytes([133]), bytes([135]), b"\x08\x00\x00\x00"]
CONFIGS = tuple(WorkerConfig.from_config(parse_args(argv, prog)) for argv, prog in (
    (["--config-net"], "pasta-sep"),
    ([], "passt-sep"),
    (["--no-dhcp", "--no-ndp", "--no-dhcpv6", "--no-icmp"], "pasta-sep"),
    (["--no-ra", "--no-dhcp-dns", "--no-dhcp-search"], "passt-sep"),
))


class _Loop:
    def __init__(self) -> None:
        self.counters = Counters()


class _Link:
    def __init__(self, sent: list) -> None:
        self.send = sent.append


class _Tcp:
    def __init__(self, verify: bool, sent: list) -> None:
        self.verify, self.sent = verify, sent

    def on_guest_segment(self, inb: packet.Inbound, now: float) -> None:
        seg = tcp_wire.parse_tcp(inb, self.verify)
        reply = tcp_wire.rst_for_unknown(seg, inb, common.NET.our_mac)
        if reply is not None:
            self.sent.append(reply)

    def on_segment(self, seg: TcpSegment, src: bytes, dst: bytes, frame: memoryview,
                   now: float) -> None:
        """Parsed in one go (tcp_wire.parse_tcp_frame): the general parsers
        must take the frame and agree."""
        inb = packet.parse_ip_frame(packet.parse_ethernet(frame))
        assert (inb.src, inb.dst) == (src, dst)
        assert tcp_wire.parse_tcp(inb, self.verify)._replace(payload=b"") == \
            seg._replace(payload=b"")
        reply = tcp_wire.rst_for_unknown(seg, inb, common.NET.our_mac)
        if reply is not None:
            self.sent.append(reply)


class _Udp:
    def __init__(self, verify: bool) -> None:
        self.verify = verify

    def on_guest_segment(self, inb: packet.Inbound, now: float, header: packet.UDP) -> None:
        udp.parse_guest_datagram(inb, self.verify, header)


class _Echo:
    def on_guest_echo(self, inb: packet.Inbound, now: float) -> bool:
        return icmp.parse_echo_request(inb) is not None


def check(data: bytes) -> None:
    fdp = common.provider(data)
    net = common.pick_net(fdp)
    config = CONFIGS[fdp.ConsumeIntInRange(0, 255) % len(CONFIGS)]
    frame = common.rest(fdp)
    sent: list[bytes] = []
    verify = config.verify_checksums
    ctx = WorkerContext.build(_Loop(), Logger("fuzz"), config, net, _Link(sent))
    services = GuestServices(ctx, None if config.no_icmp else _Echo(), _Tcp(verify, sent),
                             _Udp(verify))
    services.on_frame(memoryview(frame), 100.0)
    for reply in sent:
        eth = packet.parse_ethernet(bytes(reply))
        if eth.ethertype != packet.ETH_P_ARP:
            packet.parse_ip_frame(eth)


def seeds() -> list[tuple[str, bytes]]:
    picked = ("arp-request", "dhcp-discover", "dhcpv6-solicit", "ndp-rs", "ndp-ns", "icmp6-echo",
              "tcp4-syn", "tcp6-ack-data", "udp4")
    frames = common.frames()
    return [(f"{label}-config{index % len(CONFIGS)}",
             frames[label] + common.control(0, index % len(CONFIGS)))
            for index, label in enumerate(picked)]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
