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
from passt_sep import dhcp  # noqa: E402

NAME = "dhcp"
DICTIONARY = [dhcp.MAGIC, b"\x35\x01\x01", b"\x35\x01\x03", b"\x35\x01\x08", b"\x35\x01\x07",
              b"\x36\x04" + common.GATEWAY4, b"\x32\x04" + common.GUEST4, b"\x3d\x07\x01",
              b"\xff", b"\x00", b"\x01\x01\x06\x00", b"\x02\x01\x06\x00", b"\x00\x43"]


def check(data: bytes) -> None:
    exchange = common.udp_server_exchange(data, False, dhcp.SERVER_PORT, dhcp.CLIENT_PORT,
                                          dhcp.parse_dhcp, dhcp.handle_dhcp)
    if exchange is None:
        return
    _net, request, payload = exchange
    answer = dhcp.parse_dhcp(payload)
    assert answer.op == dhcp.BOOTREPLY and answer.xid == request.xid
    assert answer.chaddr == request.chaddr
    assert answer.message_type in (dhcp.OFFER, dhcp.ACK, dhcp.NAK)
    assert len(payload) >= dhcp.BOOTP_MIN_SIZE


def seeds() -> list[tuple[str, bytes]]:
    return [(f"{label}-net{k}", frame + common.control(k, 3))
            for (label, frame), k in zip(common.pick_frames("dhcp-"), (0, 0, 1, 3, 4),
                                         strict=True)]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
