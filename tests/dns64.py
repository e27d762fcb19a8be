"""A DNS64 responder for the CLAT tests, over UDP, until killed.

    python3 dns64.py ADDR PREFIX/LEN NAME=IPV4...

AAAA for ``ipv4only.arpa``: 192.0.0.170 and 192.0.0.171 in the prefix (RFC
7050); A for each NAME: its IPv4 address; AAAA for it: that address in the
prefix (RFC 6147); anything else: NXDOMAIN.  The embedding is written here
again from RFC 6052, apart from passt_sep's, so that the two check each other.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

WELL_KNOWN = ("192.0.0.170", "192.0.0.171")


def embed(prefix: ipaddress.IPv6Network, addr4: str) -> bytes:
    """RFC 6052 section 2.2: the IPv4 address after the prefix, around
    bits 64 to 71, which stay zero."""
    out = bytearray(prefix.network_address.packed)
    spots = [i for i in range(prefix.prefixlen // 8, 16) if i != 8][:4]
    for spot, byte in zip(spots, ipaddress.IPv4Address(addr4).packed, strict=True):
        out[spot] = byte
    return bytes(out)


def question(query: bytes) -> tuple[str, int, int]:
    """(name, type, end of the question) of a query."""
    labels, offset = [], 12
    while query[offset]:
        labels.append(query[offset + 1:offset + 1 + query[offset]].decode().lower())
        offset += 1 + query[offset]
    qtype = struct.unpack_from("!H", query, offset + 1)[0]
    return ".".join(labels), qtype, offset + 5


def answer(query: bytes, prefix: ipaddress.IPv6Network, names: dict[str, str]) -> bytes:
    name, qtype, end = question(query)
    if name == "ipv4only.arpa" and qtype == 28:
        records = [embed(prefix, a) for a in WELL_KNOWN]
    elif name in names and qtype == 1:
        records = [ipaddress.IPv4Address(names[name]).packed]
    elif name in names and qtype == 28:
        records = [embed(prefix, names[name])]
    else:
        records = []
    known = name in names or name == "ipv4only.arpa"
    flags = 0x8180 | (0 if known else 3)
    out = query[:2] + struct.pack("!HHHHH", flags, 1, len(records), 0, 0) + query[12:end]
    for rdata in records:
        out += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
    return out


def main(argv: list[str]) -> None:
    prefix = ipaddress.IPv6Network(argv[1])
    names = dict(item.split("=", 1) for item in argv[2:])
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind((argv[0], 53))
    while True:
        query, peer = sock.recvfrom(4096)
        try:
            sock.sendto(answer(query, prefix, names), peer)
        except (IndexError, struct.error, UnicodeDecodeError):
            continue


if __name__ == "__main__":
    main(sys.argv[1:])
