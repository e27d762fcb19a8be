"""Fuzz target ``udp``: the guest's datagrams (``parse_guest_datagram``,
with and without checksum verification) and the frames built back: a
datagram to the guest, the ICMP error quoting a datagram, and the kernel's
extended error record.

Input: one Ethernet frame, then two control bytes (from the end): the
network, and the mode (bit 0: verify checksums, as in passt mode; bits 1-2:
ICMP error type).  Documented exception: ``packet.Drop``.
Invariants: what we build parses back with valid checksums and carries
the payload unchanged.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_udp.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import packet, udp  # noqa: E402
from passt_sep.packet import Drop  # noqa: E402

NAME = "udp"
ALLOWED = (Drop,)
DICTIONARY = [b"\x00\x00", b"\xff\xff", b"\x00\x08", b"\x00\x35", b"\x00\x43", b"\x02\x23",
              b"\x11"]


def check(data: bytes) -> None:
    fdp = common.provider(data)
    net = common.pick_net(fdp)
    mode = fdp.ConsumeIntInRange(0, 255)
    frame = common.rest(fdp)
    udp.parse_extended_error(frame[:24])                 # documented: None when short
    _, inb = common.layers(frame)
    if inb is None or inb.proto != packet.IPPROTO_UDP:
        return
    datagram = common.guarded(ALLOWED, udp.parse_guest_datagram, inb, bool(mode & 1))
    if datagram is None:
        return
    assert datagram.dport and datagram.v6 == inb.is_ipv6
    assert len(datagram.payload) <= len(inb.l4) - packet.UDP_HLEN
    payload = bytes(datagram.payload)
    reply = common.guarded(ALLOWED, udp.datagram_frame, net, inb.eth.src, datagram.dst,
                           datagram.dport, datagram.src, datagram.sport, payload)
    if reply is not None:
        _, back = common.reparse(reply)
        again = packet.parse_udp(back.l4)
        assert bytes(again.payload) == payload and len(again.payload) == len(back.l4) - 8
        assert (again.sport, again.dport) == (datagram.dport, datagram.sport)
        assert packet.checksum(back.l4, packet.pseudo_header_sum(
            back.src, back.dst, packet.IPPROTO_UDP, len(back.l4))) in (0, 0xFFFF)
    kind = (mode >> 1) & 3
    if datagram.v6:
        icmp_type, icmp_code = udp.ICMPV6_DEST_UNREACH, (udp.ICMPV6_PORT_UNREACH,
                                                          udp.ICMPV6_ADDR_UNREACH, 0, 255)[kind]
    else:
        icmp_type, icmp_code = udp.ICMP_DEST_UNREACH, (udp.ICMP_PORT_UNREACH,
                                                        udp.ICMP_HOST_UNREACH, 0, 255)[kind]
    error = udp.unreachable_frame(net, inb.eth.src, datagram.src, datagram.sport, datagram.dst,
                                  datagram.dport, payload, icmp_type, icmp_code)
    _, back = common.reparse(error)
    if back.is_ipv6:
        assert back.proto == packet.IPPROTO_ICMPV6 and len(back.l4) <= 1280 - 40
        total = packet.l4_checksum(back.src, back.dst, back.proto, back.l4)
    else:
        assert back.proto == packet.IPPROTO_ICMP and len(back.l4) <= 576 - 20
        total = packet.checksum(back.l4)
    assert total in (0, 0xFFFF) and back.l4[0] == icmp_type and back.l4[1] == icmp_code


def seeds() -> list[tuple[str, bytes]]:
    return [(f"{label}-mode{mode}", frame + common.control(0, mode))
            for (label, frame), mode in zip(common.pick_frames("udp"), (0, 1, 3), strict=True)]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
