"""DNS wire-format names (RFC 1035 §3.1, §4.1.4) as DHCP option 119, DHCPv6
option 24 and the NDP DNSSL option carry them: known answers, and a
reference decoder (with compression pointers) to read the encoder's output."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt_sep.dnswire import encode_names


class WireError(Exception):
    pass


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """One name at ``offset``, following compression pointers; (name, end)."""
    labels: list[str] = []
    end = None
    seen = set()
    while True:
        if offset >= len(data):
            raise WireError("name runs off the end")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise WireError("truncated pointer")
            target = (length & 0x3F) << 8 | data[offset + 1]
            if target in seen:
                raise WireError("pointer loop")
            seen.add(target)
            end = offset + 2 if end is None else end
            offset = target
            continue
        if length & 0xC0:
            raise WireError("reserved label type")
        offset += 1
        if length == 0:
            return ".".join(labels), offset if end is None else end
        if offset + length > len(data):
            raise WireError("label runs off the end")
        labels.append(data[offset:offset + length].decode("ascii"))
        offset += length


def read_names(data: bytes) -> list[str]:
    names, offset = [], 0
    while offset < len(data):
        name, offset = read_name(data, offset)
        names.append(name)
    return names


# RFC 1035 §4.1.4: F.ISI.ARPA at offset 20, FOO.F.ISI.ARPA at 40 pointing
# back to 20, ARPA at 64 pointing at 26, and the root at 92 (offsets here are
# relative to a message that starts 20 bytes earlier, so 20 -> 0).
RFC1035_COMPRESSED = (b"\x01F\x03ISI\x04ARPA\x00"        # offset 0
                      b"\x03FOO\xc0\x00"                 # offset 12: FOO + pointer to 0
                      b"\xc0\x06"                        # offset 18: pointer to ARPA
                      b"\x00")                           # offset 20: the root


def test_reference_decoder_reads_the_rfc_1035_compression_example() -> None:
    assert read_names(RFC1035_COMPRESSED) == ["F.ISI.ARPA", "FOO.F.ISI.ARPA", "ARPA", ""]


def test_encoder_writes_the_same_names_uncompressed() -> None:
    wire = encode_names(("F.ISI.ARPA", "FOO.F.ISI.ARPA", "ARPA", "."))
    assert wire == (b"\x01F\x03ISI\x04ARPA\x00" b"\x03FOO\x01F\x03ISI\x04ARPA\x00"
                    b"\x04ARPA\x00" b"\x00")
    assert read_names(wire) == read_names(RFC1035_COMPRESSED)
    assert not any(byte & 0xC0 == 0xC0 for byte in _length_octets(wire))


def _length_octets(wire: bytes) -> list[int]:
    """Every label-length octet of a sequence of uncompressed names."""
    out, offset = [], 0
    while offset < len(wire):
        out.append(wire[offset])
        offset += 1 + wire[offset]
    assert offset == len(wire)
    return out


@pytest.mark.parametrize("domains, wire", [
    ((), b""),
    (("example.test",), b"\x07example\x04test\x00"),
    (("example.test.",), b"\x07example\x04test\x00"),          # fully qualified
    (("eng.apple.com", "marketing.apple.com"),                  # RFC 3397 §3 example
     b"\x03eng\x05apple\x03com\x00\x09marketing\x05apple\x03com\x00"),
    ((".",), b"\x00"),                                          # the root
    (("",), b"\x00"),
    (("a..b",), b"\x01a\x01b\x00"),                             # empty labels skipped
    (("Lab.Example.TEST",), b"\x03Lab\x07Example\x04TEST\x00"),  # case is kept
    (("x" * 63,), b"\x3f" + b"x" * 63 + b"\x00"),
    (("xn--bcher-kva.example",), b"\x0dxn--bcher-kva\x07example\x00"),
])
def test_known_answers(domains: tuple[str, ...], wire: bytes) -> None:
    assert encode_names(domains) == wire


def test_overlong_label_is_cut_to_63_octets() -> None:
    """A label can only be 63 octets (the top two bits select pointers)."""
    wire = encode_names(("y" * 64 + ".test",))
    assert wire == b"\x3f" + b"y" * 63 + b"\x04test\x00"
    assert read_names(wire) == ["y" * 63 + ".test"]


label = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                min_size=1, max_size=63)
domain = st.tuples(st.lists(label, min_size=1, max_size=6), st.booleans()).map(
    lambda parts: ".".join(parts[0]) + ("." if parts[1] else ""))


@given(st.lists(domain, max_size=8))
def test_decode_inverts_encode(domains: list[str]) -> None:
    wire = encode_names(tuple(domains))
    assert read_names(wire) == [d.rstrip(".") for d in domains]
    assert len(wire) == sum(len(d.rstrip(".")) + 2 for d in domains)


@given(st.lists(st.text(max_size=150), max_size=6))
def test_any_text_gives_well_formed_wire(domains: list[str]) -> None:
    wire = encode_names(tuple(domains))
    lengths = _length_octets(wire)
    assert all(length <= 63 for length in lengths)
    assert lengths.count(0) == len(domains)
    assert wire.isascii()                 # never a non-ASCII octet in a label
    assert len(read_names(wire)) == len(domains)
