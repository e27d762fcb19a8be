"""Fuzz target ``dhcpv6``: the DHCPv6 server (``parse_dhcpv6``, nested
options of IA_NA and IA_PD, ``handle_dhcpv6``).

Input: one Ethernet frame, then two control bytes (from the end): the
network, and the flags (bit 0: send DNS, bit 1: send the search list).  As
the worker does, only UDP over IPv6 to port 547 reaches ``handle_dhcpv6``;
``parse_dhcpv6`` also gets every UDP payload.  Documented exception:
``packet.Drop``.  Invariant: a reply parses back, to the client's
transaction, with our server identifier.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_dhcpv6.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import dhcpv6  # noqa: E402

NAME = "dhcpv6"
DICTIONARY = [b"\x00\x01", b"\x00\x02", b"\x00\x03", b"\x00\x05", b"\x00\x0e\x00\x00",
              b"\x00\x19", b"\x00\x03\x00\x01", b"\x00\x0c", b"\x00\x00", b"\xff\xff",
              b"\x02\x23", common.GUEST6]


def check(data: bytes) -> None:
    exchange = common.udp_server_exchange(data, True, dhcpv6.SERVER_PORT, dhcpv6.CLIENT_PORT,
                                          dhcpv6.parse_dhcpv6, dhcpv6.handle_dhcpv6)
    if exchange is None:
        return
    net, request, payload = exchange
    answer = dhcpv6.parse_dhcpv6(payload)
    assert answer.transaction_id == request.transaction_id
    assert answer.msg_type in (dhcpv6.ADVERTISE, dhcpv6.REPLY)
    assert answer.get(dhcpv6.OPT_SERVERID) == dhcpv6.server_duid(net)
    for code, value in answer.options:
        if code in (dhcpv6.OPT_IA_NA, dhcpv6.OPT_IA_PD):
            dhcpv6.parse_options(value[12:])


def seeds() -> list[tuple[str, bytes]]:
    return [(f"{label}-net{k}", frame + common.control(k, 3))
            for (label, frame), k in zip(common.pick_frames("dhcpv6-"), (0, 0, 2, 3, 4),
                                         strict=True)]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
