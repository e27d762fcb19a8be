"""The customer-side translator of 464XLAT (RFC 6877), at layer 4: addresses
only, no packet translation.

Every guest flow ends in a host socket, so the guest's IPv4 flow to A
becomes a host IPv6 socket to the address a NAT64 in the network serves A
by: A embedded in the NAT64 prefix as RFC 6052 lays it out
(``Nat64Prefix.synthesize``).  A host IPv6 peer inside the prefix appears to
the guest as the IPv4 address it embeds (``Nat64Prefix.extract``).

Without a configured prefix, it is discovered as RFC 7050 says: an AAAA
query for ``ipv4only.arpa`` through the host's resolver, whose answers
embed the well-known addresses 192.0.0.170 and 192.0.0.171; where they sit
gives the prefix and its length (``prefixes_from_answer``).  This module
builds the query and parses the answer; the broker does the I/O.

ICMPv6 errors the host's sockets see are translated to the ICMPv4 type and
code RFC 7915 section 5.2 gives (``icmp4_error``).  No I/O here.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

LENGTHS = (32, 40, 48, 56, 64, 96)          # RFC 6052 section 2.2
WELL_KNOWN_PREFIX = "64:ff9b::/96"
DISCOVERY_NAME = "ipv4only.arpa"
WELL_KNOWN_ADDRS = (bytes([192, 0, 0, 170]), bytes([192, 0, 0, 171]))
U_OCTET = 8                                  # bits 64-71: always zero
# RFC 7335: the IPv4 service continuity prefix 192.0.0.0/29, for the guest
# when the host has no IPv4 of its own
CLAT_ADDR4, CLAT_GATEWAY4, CLAT_PREFIX4 = "192.0.0.2", "192.0.0.1", 29

TYPE_AAAA, CLASS_IN = 28, 1
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
MAX_POINTERS = 16                            # compression loops are malformed


class Nat64Error(ValueError):
    """A NAT64 prefix that RFC 6052 does not allow, with the reason."""


class DnsError(ValueError):
    """A DNS answer that is malformed or does not answer our query."""


def _positions(length: int) -> tuple[int, ...]:
    """Where the IPv4 address's four bytes go in an address of a prefix of
    ``length`` bits: right after the prefix, skipping the u octet."""
    return tuple(p for p in range(length // 8, 16) if p != U_OCTET)[:4]


@dataclass(frozen=True)
class Nat64Prefix:
    """The NAT64 prefix a CLAT maps IPv4 addresses into (RFC 6052)."""

    prefix: bytes           # 16 bytes, zero past ``length``
    length: int

    @classmethod
    def parse(cls, text: str) -> Nat64Prefix:
        """``PREFIX/LEN``; ``Nat64Error`` says what is wrong."""
        address, slash, length_text = text.partition("/")
        if not slash or not length_text.isdigit():
            raise Nat64Error(f"{text}: expected PREFIX/LEN, such as {WELL_KNOWN_PREFIX}")
        try:
            parsed = ipaddress.IPv6Address(address)
        except ValueError:
            raise Nat64Error(f"{text}: {address} is not an IPv6 address") from None
        return cls.from_bytes(parsed.packed, int(length_text), text)

    @classmethod
    def from_bytes(cls, prefix: bytes, length: int, text: str = "") -> Nat64Prefix:
        text = text or f"{ipaddress.IPv6Address(prefix)}/{length}"
        if length not in LENGTHS:
            raise Nat64Error(f"{text}: the length must be one of "
                             f"{', '.join(map(str, LENGTHS))} (RFC 6052)")
        value = int.from_bytes(prefix, "big")
        if value & ((1 << (128 - length)) - 1):
            raise Nat64Error(f"{text}: bits set past the prefix length")
        if length > 64 and prefix[U_OCTET]:
            raise Nat64Error(f"{text}: bits 64 to 71 must be zero (RFC 6052)")
        if prefix[0] == 0xFF:
            raise Nat64Error(f"{text}: a multicast prefix")
        return cls(bytes(prefix), length)

    def __str__(self) -> str:
        return f"{ipaddress.IPv6Address(self.prefix)}/{self.length}"

    def synthesize(self, addr4: bytes) -> bytes:
        """The IPv6 address that stands for IPv4 ``addr4`` (RFC 6052 2.2)."""
        out = bytearray(self.prefix)
        for position, byte in zip(_positions(self.length), addr4, strict=True):
            out[position] = byte
        return bytes(out)

    def extract(self, addr6: bytes) -> bytes | None:
        """The IPv4 address ``addr6`` embeds, None if it is not in the prefix."""
        if len(addr6) != 16 or not self.contains(addr6) or addr6[U_OCTET]:
            return None
        return bytes(addr6[p] for p in _positions(self.length))

    def contains(self, addr6: bytes) -> bool:
        whole = self.length // 8                # every RFC 6052 length is whole bytes
        return addr6[:whole] == self.prefix[:whole]


def embedded_prefixes(addr6: bytes) -> list[Nat64Prefix]:
    """Prefixes under which ``addr6`` embeds a well-known address, with the
    u octet and the suffix zero (RFC 7050 section 3), longest first."""
    found = []
    for length in reversed(LENGTHS):
        positions = _positions(length)
        if bytes(addr6[p] for p in positions) not in WELL_KNOWN_ADDRS:
            continue
        rest = [p for p in range(length // 8, 16) if p not in positions]
        if any(addr6[p] for p in rest):
            continue
        prefix = addr6[:length // 8] + bytes(16 - length // 8)
        try:
            found.append(Nat64Prefix.from_bytes(prefix, length))
        except Nat64Error:
            continue
    return found


# -- RFC 7050 discovery: the query and its answer ------------------------------------

def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        encoded = label.encode("ascii")
        out += bytes([len(encoded)]) + encoded
    return bytes(out + b"\0")


def discovery_query(ident: int) -> bytes:
    """An AAAA query for ``ipv4only.arpa``, recursion desired."""
    return (_HEADER.pack(ident, 0x0100, 1, 0, 0, 0) + encode_name(DISCOVERY_NAME)
            + struct.pack("!HH", TYPE_AAAA, CLASS_IN))


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The (possibly compressed) name at ``offset``, lower-cased, and the
    offset just after it where it stands (a pointer ends it there)."""
    labels: list[str] = []
    end = None
    for _ in range(MAX_POINTERS):
        while True:
            if offset >= len(data):
                raise DnsError("truncated name")
            size = data[offset]
            if size & 0xC0 == 0xC0:
                if offset + 2 > len(data):
                    raise DnsError("truncated pointer")
                end = offset + 2 if end is None else end
                offset = ((size & 0x3F) << 8) | data[offset + 1]
                break
            if size & 0xC0:
                raise DnsError("bad label type")
            if size == 0:
                return ".".join(labels).lower(), offset + 1 if end is None else end
            if offset + 1 + size > len(data):
                raise DnsError("truncated label")
            labels.append(data[offset + 1:offset + 1 + size].decode("ascii", "replace"))
            offset += 1 + size
    raise DnsError("compression loop")


def aaaa_records(answer: bytes, ident: int, name: str = DISCOVERY_NAME) -> list[bytes]:
    """The AAAA addresses for ``name`` in a DNS ``answer`` to query ``ident``;
    ``DnsError`` if it is malformed, not ours, or an error."""
    if len(answer) < _HEADER.size:
        raise DnsError("shorter than a header")
    got_id, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(answer)
    if got_id != ident or not flags & 0x8000:
        raise DnsError("not an answer to our query")
    if flags & 0x000F:
        raise DnsError(f"error code {flags & 0x000F}")
    offset = _HEADER.size
    for _ in range(qdcount):
        offset = _read_name(answer, offset)[1] + 4
    addresses = []
    for _ in range(ancount):
        owner, offset = _read_name(answer, offset)
        if offset + _RR.size > len(answer):
            raise DnsError("truncated record")
        rtype, rclass, _ttl, rdlength = _RR.unpack_from(answer, offset)
        offset += _RR.size
        rdata = answer[offset:offset + rdlength]
        if len(rdata) != rdlength:
            raise DnsError("truncated record data")
        offset += rdlength
        # a CNAME chain ends in the records of the name it points to: take
        # every AAAA in the answer section, as the query asked for one name
        if rtype == TYPE_AAAA and rclass == CLASS_IN and rdlength == 16:
            addresses.append(rdata)
        elif rtype == TYPE_AAAA and owner == name:
            raise DnsError("AAAA record of the wrong size")
    return addresses


def prefixes_from_answer(answer: bytes, ident: int) -> list[Nat64Prefix]:
    """The NAT64 prefixes an answer to ``discovery_query(ident)`` reveals,
    without duplicates, in the answer's order."""
    found: dict[Nat64Prefix, None] = {}
    for address in aaaa_records(answer, ident):
        for prefix in embedded_prefixes(address):
            found[prefix] = None
    return list(found)


# -- ICMP errors -----------------------------------------------------------------

ICMP4_DEST_UNREACH, ICMP4_TIME_EXCEEDED = 3, 11
ICMP6_DEST_UNREACH, ICMP6_TIME_EXCEEDED, ICMP6_PARAM_PROBLEM = 1, 3, 4
# ICMPv6 destination unreachable code -> ICMPv4 one (RFC 7915 section 5.2)
_UNREACH_CODES = {0: 1, 1: 10, 2: 1, 3: 1, 4: 3, 5: 10, 6: 10}


def icmp4_error(icmp6_type: int, icmp6_code: int) -> tuple[int, int] | None:
    """The ICMPv4 (type, code) for an ICMPv6 error, None where none fits."""
    if icmp6_type == ICMP6_DEST_UNREACH and icmp6_code in _UNREACH_CODES:
        return ICMP4_DEST_UNREACH, _UNREACH_CODES[icmp6_code]
    if icmp6_type == ICMP6_TIME_EXCEEDED:
        return ICMP4_TIME_EXCEEDED, icmp6_code
    if icmp6_type == ICMP6_PARAM_PROBLEM and icmp6_code == 1:
        return ICMP4_DEST_UNREACH, 2            # next header unknown: protocol unreachable
    return None
