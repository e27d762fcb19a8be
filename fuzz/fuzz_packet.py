"""Fuzz target ``packet``: Ethernet, IPv4 (options, fragments), IPv6
(extension headers), UDP, and the Internet checksum.

Input: one Ethernet frame.  Documented exception: ``packet.Drop``.
Invariants: every view a parser returns lies inside its input, with the
length its header gives; the Internet checksum (``packet``'s, the one TCP
frames use too) agrees with RFC 1071 on the first 256 bytes, odd lengths
included.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_packet.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import packet  # noqa: E402
from passt_sep.packet import Drop  # noqa: E402
from tests.checksums import reference_checksum  # noqa: E402

NAME = "packet"
ALLOWED = (Drop,)
DICTIONARY = [b"\x08\x00", b"\x86\xdd", b"\x08\x06", b"\x45", b"\x46", b"\x4f", b"\x60",
              b"\x00\x08", b"\x2c", b"\x3c", b"\x2b", b"\x11", b"\x06", b"\x3a", b"\x20\x00",
              b"\x3f\xff"]


def check(data: bytes) -> None:
    eth = common.guarded(ALLOWED, packet.parse_ethernet, data)
    if eth is None:
        assert len(data) < packet.ETH_HLEN
    else:
        assert len(eth.dst) == len(eth.src) == 6
        assert len(eth.payload) == len(data) - packet.ETH_HLEN
        _ip_layers(eth)
    chunk = data[:256]
    ours, theirs = packet.checksum(chunk), reference_checksum(chunk)
    assert ours == theirs or {ours, theirs} == {0, 0xFFFF}, (ours, theirs)


def _ip_layers(eth: packet.Ethernet) -> None:
    raw = eth.payload
    ip4 = common.guarded(ALLOWED, packet.parse_ipv4, raw)
    if ip4 is not None:
        ihl = (raw[0] & 0x0F) * 4
        total = int.from_bytes(raw[2:4], "big")
        assert len(ip4.src) == len(ip4.dst) == 4
        assert len(ip4.payload) == total - ihl and total <= len(raw)
    ip6 = common.guarded(ALLOWED, packet.parse_ipv6, raw)
    if ip6 is not None:
        assert len(ip6.src) == len(ip6.dst) == 16
        assert len(ip6.payload) <= int.from_bytes(raw[4:6], "big") <= len(raw) - 40
        assert ip6.next_header not in (0, 43, 44, 60)
    inb = common.guarded(ALLOWED, packet.parse_ip_frame, eth)
    if inb is None:
        return
    assert inb.eth is eth and len(inb.src) == len(inb.dst) in (4, 16)
    assert len(inb.l4) <= len(raw) - (40 if inb.is_ipv6 else 20)
    assert inb.is_ipv6 == (eth.ethertype == packet.ETH_P_IPV6)
    udp = common.guarded(ALLOWED, packet.parse_udp, inb.l4)
    if udp is not None:
        length = int.from_bytes(inb.l4[4:6], "big")
        assert len(udp.payload) == length - packet.UDP_HLEN


def seeds() -> list[tuple[str, bytes]]:
    frames = common.frames()
    picked = ["arp-request", "tcp4-syn", "tcp6-ack-data", "udp4", "udp6-hbh", "icmp4-echo"]
    out = [(label, frames[label]) for label in picked]
    # an IPv4 header with options (record route) and a fragment
    udp = packet.build_udp(common.GUEST4, common.REMOTE4, 1, 2, b"x")
    header = bytearray(packet.build_ipv4(common.GUEST4, common.REMOTE4, packet.IPPROTO_UDP, udp))
    options = b"\x07\x07\x04" + bytes(4) + b"\x00"
    header[0] = 0x47
    header[2:4] = (len(header) + len(options)).to_bytes(2, "big")
    with_options = bytes(header[:20]) + options + bytes(header[20:])
    out.append(("ipv4-options", packet.build_ethernet(common.NET.our_mac, common.GUEST_MAC,
                                                      packet.ETH_P_IP, with_options)))
    fragment = bytearray(packet.build_ipv4(common.GUEST4, common.REMOTE4, 17, udp))
    fragment[6] = 0x20                                  # more fragments
    out.append(("ipv4-fragment", packet.build_ethernet(common.NET.our_mac, common.GUEST_MAC,
                                                       packet.ETH_P_IP, bytes(fragment))))
    return out


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
