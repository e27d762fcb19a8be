"""Fuzz target ``arp``: the ARP responder.

Input: one Ethernet frame, then one control byte (from the end): which
network the worker serves.  Documented exception: ``packet.Drop``.
Invariant: an answer is a 42-byte ARP reply to the asker, naming the
address it asked about.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_arp.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import arp, packet  # noqa: E402
from passt_sep.packet import Drop  # noqa: E402

NAME = "arp"
ALLOWED = (Drop,)
DICTIONARY = [b"\x08\x06", b"\x00\x01\x08\x00\x06\x04", b"\x00\x01", b"\x00\x02",
              common.GUEST4, common.GATEWAY4, bytes(4)]


def check(data: bytes) -> None:
    fdp = common.provider(data)
    net = common.pick_net(fdp)
    frame = common.rest(fdp)
    eth = common.guarded(ALLOWED, packet.parse_ethernet, frame)
    if eth is None:
        return
    reply = common.guarded(ALLOWED, arp.handle_arp, net, eth)
    if reply is None:
        return
    assert len(reply) == 42, len(reply)
    answer = packet.parse_ethernet(reply)
    body = bytes(eth.payload[:28])
    assert answer.ethertype == packet.ETH_P_ARP and answer.dst == body[8:14]
    assert answer.payload[6:8] == b"\x00\x02"               # a reply
    assert answer.payload[14:18] == body[24:28]             # for the address asked about
    assert answer.payload[24:28] == body[14:18]             # to the asker


def seeds() -> list[tuple[str, bytes]]:
    return [(f"{label}-net{k}", frame + common.control(k))
            for label, frame in common.pick_frames("arp-") for k in (0, 5)]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
