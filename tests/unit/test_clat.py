"""RFC 6052 address synthesis and extraction, RFC 7050 discovery parsing,
RFC 7915 ICMP error codes: the sans-IO half of the CLAT."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from passt_sep.clat import (
    DISCOVERY_NAME,
    DnsError,
    Nat64Error,
    Nat64Prefix,
    aaaa_records,
    discovery_query,
    embedded_prefixes,
    encode_name,
    icmp4_error,
    prefixes_from_answer,
)

V4 = ipaddress.IPv4Address("192.0.2.33").packed

# RFC 6052 section 2.4: 192.0.2.33 under each prefix length
RFC6052_TABLE = [
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
    ("64:ff9b::/96", "64:ff9b::192.0.2.33"),
]


def _v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


@pytest.mark.parametrize(("prefix", "synthesized"), RFC6052_TABLE)
def test_rfc6052_examples_synthesize(prefix: str, synthesized: str) -> None:
    assert Nat64Prefix.parse(prefix).synthesize(V4) == _v6(synthesized)


@pytest.mark.parametrize(("prefix", "synthesized"), RFC6052_TABLE)
def test_rfc6052_examples_extract(prefix: str, synthesized: str) -> None:
    assert Nat64Prefix.parse(prefix).extract(_v6(synthesized)) == V4


@pytest.mark.parametrize(("prefix", "synthesized"), RFC6052_TABLE)
def test_prefix_round_trips_as_text(prefix: str, synthesized: str) -> None:
    assert str(Nat64Prefix.parse(prefix)) == prefix


def test_extract_refuses_addresses_outside_the_prefix() -> None:
    prefix = Nat64Prefix.parse("64:ff9b::/96")
    assert prefix.extract(_v6("2001:db8::1")) is None
    assert prefix.extract(_v6("64:ff9c::c000:221")) is None


def test_extract_refuses_a_nonzero_u_octet() -> None:
    prefix = Nat64Prefix.parse("2001:db8::/32")
    assert prefix.extract(_v6("2001:db8:c000:221:100::")) is None


@pytest.mark.parametrize(("text", "why"), [
    ("64:ff9b::", "expected PREFIX/LEN"),
    ("64:ff9b::/", "expected PREFIX/LEN"),
    ("64:ff9b::/abc", "expected PREFIX/LEN"),
    ("192.0.2.0/96", "not an IPv6 address"),
    ("64:ff9b::/80", "length must be one of 32, 40, 48, 56, 64, 96"),
    ("64:ff9b::/128", "length must be one of"),
    ("64:ff9b::1/96", "bits set past the prefix length"),
    ("2001:db8::/32x", "expected PREFIX/LEN"),
    ("2001:db8:0:0:100::/96", "bits 64 to 71 must be zero"),
    ("ff0e::/96", "multicast"),
])
def test_bad_prefixes_say_why(text: str, why: str) -> None:
    with pytest.raises(Nat64Error, match=why):
        Nat64Prefix.parse(text)


# -- RFC 7050 ------------------------------------------------------------------------

@pytest.mark.parametrize(("prefix", "_synthesized"), RFC6052_TABLE)
def test_well_known_addresses_reveal_prefix_and_length(prefix: str, _synthesized: str) -> None:
    parsed = Nat64Prefix.parse(prefix)
    for last in (170, 171):
        address = parsed.synthesize(bytes([192, 0, 0, last]))
        assert embedded_prefixes(address)[0] == parsed


def test_an_address_without_well_known_address_reveals_nothing() -> None:
    assert embedded_prefixes(_v6("64:ff9b::192.0.2.33")) == []
    assert embedded_prefixes(_v6("2001:db8::1")) == []


def _answer(ident: int, records: list[tuple[bytes, int, bytes]], rcode: int = 0,
            flags: int = 0x8180) -> bytes:
    """An answer to ``discovery_query(ident)``: (owner name, type, rdata)
    records; an owner of b"" points back to the question's name."""
    out = struct.pack("!HHHHHH", ident, flags | rcode, 1, len(records), 0, 0)
    out += encode_name(DISCOVERY_NAME) + struct.pack("!HH", 28, 1)
    for owner, rtype, rdata in records:
        out += (owner or b"\xc0\x0c") + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
    return out


def test_discovery_query_asks_aaaa_for_ipv4only_arpa() -> None:
    query = discovery_query(0x1234)
    assert query[:2] == b"\x12\x34"
    assert query[2:4] == b"\x01\x00"                      # recursion desired
    assert query[12:] == b"\x08ipv4only\x04arpa\x00\x00\x1c\x00\x01"


def test_discovery_answer_gives_the_prefix() -> None:
    prefix = Nat64Prefix.parse("2001:db8:122::/48")
    answer = _answer(7, [(b"", 28, prefix.synthesize(bytes([192, 0, 0, 170]))),
                         (b"", 28, prefix.synthesize(bytes([192, 0, 0, 171])))])
    assert prefixes_from_answer(answer, 7) == [prefix]


def test_discovery_answer_with_two_prefixes_keeps_both_in_order() -> None:
    first, second = Nat64Prefix.parse("64:ff9b::/96"), Nat64Prefix.parse("2001:db8::/32")
    answer = _answer(7, [(b"", 28, first.synthesize(bytes([192, 0, 0, 171]))),
                         (b"", 28, second.synthesize(bytes([192, 0, 0, 170])))])
    assert prefixes_from_answer(answer, 7) == [first, second]


def test_discovery_follows_a_cname_and_uncompressed_owner_names() -> None:
    prefix = Nat64Prefix.parse("64:ff9b::/96")
    target = encode_name("nat64.example.test")
    answer = _answer(9, [(b"", 5, target),
                         (target, 28, prefix.synthesize(bytes([192, 0, 0, 170])))])
    assert prefixes_from_answer(answer, 9) == [prefix]


@pytest.mark.parametrize(("answer", "why"), [
    (b"\x00\x07\x81", "shorter than a header"),
    (_answer(8, []), "not an answer to our query"),
    (_answer(7, [], flags=0x0100), "not an answer to our query"),
    (_answer(7, [], rcode=3), "error code 3"),
    (_answer(7, [(b"", 28, b"\x00" * 16)])[:-3], "truncated record data"),
    (_answer(7, [(b"\xc0\x40", 28, b"\x00" * 16)]), "truncated name"),
    (_answer(7, [(b"\xc0\x1f", 28, b"\x00" * 16)]), "compression loop"),   # to itself
    (_answer(7, [(b"", 28, b"\x00" * 4)]), "wrong size"),
    (_answer(7, [(b"\x80", 28, b"")]), "bad label type"),
], ids=["short", "other-id", "query", "rcode", "rdata", "pointer", "loop", "size", "label"])
def test_malformed_answers_are_refused(answer: bytes, why: str) -> None:
    with pytest.raises(DnsError, match=why):
        aaaa_records(answer, 7)


def test_an_empty_answer_gives_no_prefix() -> None:
    assert prefixes_from_answer(_answer(7, []), 7) == []


# -- RFC 7915 -------------------------------------------------------------------------

@pytest.mark.parametrize(("icmp6", "icmp4"), [
    ((1, 0), (3, 1)),      # no route: host unreachable
    ((1, 1), (3, 10)),     # administratively prohibited
    ((1, 3), (3, 1)),      # address unreachable: host unreachable
    ((1, 4), (3, 3)),      # port unreachable
    ((3, 0), (11, 0)),     # hop limit exceeded
    ((4, 1), (3, 2)),      # unknown next header: protocol unreachable
    ((4, 0), None),
    ((2, 0), None),        # packet too big: the kernel handles the path MTU
    ((1, 99), None),
])
def test_icmpv6_errors_map_to_icmpv4(icmp6: tuple[int, int], icmp4: tuple[int, int] | None
                                     ) -> None:
    assert icmp4_error(*icmp6) == icmp4
