"""Fuzz target ``dhcp``: the DHCPv4 server (``parse_dhcp``, options with
RFC 3396 concatenation, ``handle_dhcp``).

Input: one Ethernet frame, then two control bytes (from the end): the
network, and the flags (bit 0: send DNS, bit 1: send the search list).  As
the worker does, only UDP over IPv4 to port 67 reaches ``handle_dhcp``;
``parse_dhcp`` also gets every UDP payload.  Documented exception:
``packet.Drop``.  Invariant: a reply parses back as a BOOTREPLY to the
client's transaction and hardware address.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_dhcp.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import dhcp, packet  # noqa: E402
from passt_sep.packet import Drop  # noqa: E402

NAME = "dhcp"
ALLOWED = (Drop,)
DICTIONARY = [dhcp.MAGIC, b"\x35\x01\x01", b"\x35\x01\x03", b"\x35\x01\x08", b"\x35\x01\x07",
              b"\x36\x04" + common.GATEWAY4, b"\x32\x04" + common.GUEST4, b"\x3d\x07\x01",
              b"\xff", b"\x00", b"\x01\x01\x06\x00", b"\x02\x01\x06\x00", b"\x00\x43"]


def check(data: bytes) -> None:
    fdp = common.provider(data)
    net = common.pick_net(fdp)
    flags = fdp.ConsumeIntInRange(0, 255)
    _, inb = common.layers(common.rest(fdp))
    if inb is None or inb.is_ipv6 or inb.proto != packet.IPPROTO_UDP:
        return
    datagram = common.guarded(ALLOWED, packet.parse_udp, inb.l4)
    if datagram is None:
        return
    request = common.guarded(ALLOWED, dhcp.parse_dhcp, datagram.payload)
    if datagram.dport != dhcp.SERVER_PORT:
        return
    reply = common.guarded(ALLOWED, dhcp.handle_dhcp, net, inb, datagram,
                           send_dns=bool(flags & 1), send_search=bool(flags & 2))
    if reply is None:
        return
    assert request is not None
    _, back = common.reparse(reply)
    answer_udp = packet.parse_udp(back.l4)
    assert (answer_udp.sport, answer_udp.dport) == (dhcp.SERVER_PORT, dhcp.CLIENT_PORT)
    answer = dhcp.parse_dhcp(answer_udp.payload)
    assert answer.op == dhcp.BOOTREPLY and answer.xid == request.xid
    assert answer.chaddr == request.chaddr
    assert answer.message_type in (dhcp.OFFER, dhcp.ACK, dhcp.NAK)
    assert len(answer_udp.payload) >= dhcp.BOOTP_MIN_SIZE


def seeds() -> list[tuple[str, bytes]]:
    return [(f"{label}-net{k}", frame + common.control(k, 3))
            for (label, frame), k in zip(common.pick_frames("dhcp-"), (0, 0, 1, 3, 4),
                                         strict=True)]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
