"""The Internet checksum as RFC 1071 writes it: a plain loop over 16-bit
words, the reference the modules' fast version is tested against."""

from __future__ import annotations


def reference_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
