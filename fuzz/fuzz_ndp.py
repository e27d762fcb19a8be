"""Fuzz target ``ndp``: neighbour and router solicitations (RFC 4861),
options included.

Input: one Ethernet frame, then two control bytes (from the end): the
network, and the flags (bit 0: send router advertisements, bit 1: managed,
bit 2: other configuration).  As the worker does, only ICMPv6 over IPv6
reaches ``handle_ndp``.  Documented exception: ``packet.Drop``.
Invariant: an answer is a valid ICMPv6 frame (hop limit 255, checksum)
whose options parse.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_ndp.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import ndp, packet  # noqa: E402
from passt_sep.packet import Drop  # noqa: E402

NAME = "ndp"
ALLOWED = (Drop,)
DICTIONARY = [bytes([133]), bytes([135]), bytes([136]), b"\xff", b"\x01\x01", b"\x02\x01",
              b"\x03\x04", b"\x05\x01", b"\x19\x03", b"\x1f\x02", b"\x01\x00",
              common.GATEWAY6, common.GUEST6, bytes(16)]


def check(data: bytes) -> None:
    fdp = common.provider(data)
    net = common.pick_net(fdp)
    flags = fdp.ConsumeIntInRange(0, 255)
    _, inb = common.layers(common.rest(fdp))
    if inb is None or not inb.is_ipv6 or inb.proto != packet.IPPROTO_ICMPV6:
        return
    common.guarded(ALLOWED, ndp.parse_options, inb.l4[8:])
    reply = common.guarded(ALLOWED, ndp.handle_ndp, net, inb, bool(flags & 1),
                           managed=bool(flags & 2), other=bool(flags & 4))
    if reply is None:
        return
    eth, answer = common.reparse(reply)
    assert answer.is_ipv6 and answer.proto == packet.IPPROTO_ICMPV6 and answer.ttl == 255
    assert packet.l4_checksum(answer.src, answer.dst, packet.IPPROTO_ICMPV6,
                              answer.l4) in (0, 0xFFFF)
    kind = answer.l4[0]
    assert kind in (ndp.ROUTER_ADVERT, ndp.NEIGHBOUR_ADVERT), kind
    options = ndp.parse_options(answer.l4[16 if kind == ndp.ROUTER_ADVERT else 24:])
    assert options, "an answer always carries a link-layer address option"
    assert eth.dst == inb.eth.src


def seeds() -> list[tuple[str, bytes]]:
    return [(f"{label}-net{k}", frame + common.control(k, 7))
            for label, frame in common.pick_frames("ndp-") for k in (0, 3)]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
