"""Domain names in DNS wire format, as DHCP option 119, DHCPv6 option 24
and the NDP DNSSL option carry them."""

from __future__ import annotations


def encode_names(domains: tuple[str, ...]) -> bytes:
    """Uncompressed names (RFC 1035 §3.1), one after the other."""
    out = bytearray()
    for domain in domains:
        for label in domain.rstrip(".").split("."):
            if label:
                encoded = label.encode("ascii", errors="replace")[:63]
                out += bytes([len(encoded)]) + encoded
        out += b"\0"
    return bytes(out)
