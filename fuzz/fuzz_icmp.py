"""Fuzz target ``icmp``: the guest's echo requests (ICMP and ICMPv6), and
the echo replies read from ping sockets.

Input: one Ethernet frame.  As the worker does, ICMP reaches the parser
only over IPv4 and ICMPv6 only over IPv6.  Documented exception:
``packet.Drop`` (``parse_echo_reply`` has none: it returns None).
Invariant: the reply frame built for a request parses back with a valid
checksum and carries the request's identifier, sequence and data.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_icmp.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import icmp, packet  # noqa: E402
from passt_sep.packet import Drop  # noqa: E402

NAME = "icmp"
ALLOWED = (Drop,)
DICTIONARY = [b"\x08\x00", b"\x80\x00", b"\x00\x00", b"\x81\x00", b"\x01", b"\x3a"]


def check(data: bytes) -> None:
    _, inb = common.layers(data)
    if inb is None:
        return
    wanted = packet.IPPROTO_ICMPV6 if inb.is_ipv6 else packet.IPPROTO_ICMP
    if inb.proto != wanted:
        return
    icmp.parse_echo_reply(bytes(inb.l4), inb.is_ipv6)      # documented: never raises
    request = common.guarded(ALLOWED, icmp.parse_echo_request, inb)
    if request is None:
        return
    payload = icmp.echo_request_payload(request)
    assert payload[8:] == request.data == bytes(inb.l4[8:])
    frame = icmp.echo_reply_frame(common.NET, inb.eth.src, request.dst, inb.src, request.ident,
                                  request.seq, request.data)
    _, reply = common.reparse(frame)
    assert reply.proto == wanted and reply.src == inb.dst and reply.dst == inb.src
    if reply.is_ipv6:
        total = packet.l4_checksum(reply.src, reply.dst, wanted, reply.l4)
    else:
        total = packet.checksum(reply.l4)
    assert total in (0, 0xFFFF)
    assert int.from_bytes(reply.l4[4:6], "big") == request.ident
    assert icmp.parse_echo_reply(bytes(reply.l4), reply.is_ipv6) == (request.seq, request.data)


def seeds() -> list[tuple[str, bytes]]:
    return common.pick_frames("icmp")


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
