"""Fuzz target ``dnswire``: ``encode_names``, the search list as DHCP option
119, DHCPv6 option 24 and the NDP DNSSL option carry it.

Input: the domains, one per line, as bytes (decoded as the command line is:
UTF-8 with surrogate escapes).  Documented exception: none.
Invariant: the output is one uncompressed name per domain, every label 1
to 63 ASCII bytes, each name ending with the root label.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_dnswire.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import dnswire  # noqa: E402

NAME = "dnswire"
ALLOWED: tuple[type[BaseException], ...] = ()
DICTIONARY = [b".", b"..", b"\n", b"\xc3\xa9", b"\xff", b"\x00", b"a" * 63, b"b" * 64,
              b"\xe2\x80\x8b", b"xn--"]


def check(data: bytes) -> None:
    domains = tuple(data.decode("utf-8", "surrogateescape").split("\n"))
    wire = dnswire.encode_names(domains)
    names = offset = 0
    while offset < len(wire):
        size = wire[offset]
        if size == 0:
            names += 1
            offset += 1
            continue
        assert size <= 63, f"label of {size} bytes"
        label = wire[offset + 1:offset + 1 + size]
        assert len(label) == size and label.isascii()
        offset += 1 + size
    assert names == len(domains) and (not wire or wire[-1] == 0)


def seeds() -> list[tuple[str, bytes]]:
    return [("search-list", b"example.test\nlab.example.test"),
            ("trailing-dots", b"example.test.\n.\n"),
            ("long-labels", b"a" * 70 + b".example\n" + ".".join(["x" * 63] * 4).encode()),
            ("idn", "bücher.example\nδοκιμή.test".encode())]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
