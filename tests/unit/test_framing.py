"""passt stream framing, the tap's virtio-net header and pcap records, on bytes."""

from __future__ import annotations

import struct

import pytest

from passt_sep import pcap, tap
from passt_sep.tcp_wire import ACK, build_tcp_frame


def framed(*frames: bytes) -> bytes:
    return b"".join(tap.stream_prefix(len(f)) + f for f in frames)


def test_frames_split_across_reads_are_reassembled() -> None:
    first, second = b"A" * 60, b"B" * 1514
    stream = framed(first, second)
    decoder = tap.StreamDecoder()
    out = []
    for i in range(0, len(stream), 7):
        out += decoder.feed(stream[i:i + 7])
    assert out == [first, second]
    assert decoder.buffer == bytearray()


def test_many_frames_in_one_read() -> None:
    frames = [bytes([i]) * (14 + i) for i in range(20)]
    assert tap.StreamDecoder().feed(framed(*frames)) == frames


@pytest.mark.parametrize("length", [0, 13, 65536 + 15, 0xFFFFFFFF])
def test_bad_lengths_are_rejected(length: int) -> None:
    with pytest.raises(tap.FramingError):
        tap.StreamDecoder().feed(struct.pack("!I", length) + b"x" * 20)


def test_pcap_header_and_record() -> None:
    header = pcap.file_header()
    magic, major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack("=IHHiIII", header)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    assert snaplen >= 65535
    record = pcap.record(b"\x01" * 60, 1700000000.25)
    seconds, micros, captured, original = struct.unpack("=IIII", record[:16])
    assert (seconds, micros, captured, original) == (1700000000, 250000, 60, 60)
    assert record[16:] == b"\x01" * 60


# -- the virtio-net header of our frames on pasta's tap ---------------------------------
_MACS = (bytes.fromhex("020000000001"), bytes.fromhex("020000000002"))
_V4 = (bytes([203, 0, 113, 1]), bytes([198, 51, 100, 2]))
_V6 = (bytes.fromhex("20010db8000200000000000000000001"),
       bytes.fromhex("20010db8000100000000000000000002"))
LARGEST = 14 + 1500


def _tcp(addresses: tuple[bytes, bytes], payload: bytes) -> bytearray:
    return build_tcp_frame(*_MACS, *addresses, 80, 40000, 1, 1, ACK, 1000, payload)


def test_vnet_header_frames_other_than_tcp_are_valid() -> None:
    udp = bytearray(_tcp(_V4, b"x" * 10))
    udp[14 + 9] = 17                                                            # not TCP
    assert tap.vnet_header(udp, LARGEST) == tap.VNET_DATA_VALID


def test_vnet_header_bare_tcp_needs_checksum() -> None:
    """Every TCP frame on the tap carries a partial checksum, a bare ACK too."""
    bare = tap.vnet_header(_tcp(_V4, b""), LARGEST)
    assert struct.unpack("<BBHHHH", bare) == (1, 0, 0, 0, 34, 16)


@pytest.mark.parametrize("addresses, l4, gso_type", [(_V4, 34, 1), (_V6, 54, 4)])
def test_vnet_header_tcp_payload_needs_checksum_and_big_frames_segmentation(
        addresses: tuple[bytes, bytes], l4: int, gso_type: int) -> None:
    small = tap.vnet_header(_tcp(addresses, b"x" * 100), LARGEST)
    assert struct.unpack("<BBHHHH", small) == (1, 0, 0, 0, l4, 16)
    big = tap.vnet_header(_tcp(addresses, b"x" * 20000), LARGEST)
    assert struct.unpack("<BBHHHH", big) == (1, gso_type, l4 + 20, LARGEST - l4 - 20, l4, 16)


@pytest.mark.parametrize("addresses", [_V4, _V6])
@pytest.mark.parametrize("size", [0, 1, 1000])
def test_tcp_csum_headers_are_vnet_headers_of_template_frames(
        addresses: tuple[bytes, bytes], size: int) -> None:
    """TapLink.send_tcp's lookup gives what vnet_header would."""
    frame = _tcp(addresses, b"x" * size)
    assert tap.TCP_CSUM_HEADERS[frame[12]] == tap.vnet_header(frame, LARGEST)


@pytest.mark.parametrize("headers_len, l4", [(42, 34), (62, 54)])
def test_vnet_udp_header_checksum_and_segments(headers_len: int, l4: int) -> None:
    one = tap.vnet_udp_header(headers_len, 0)
    assert struct.unpack("<BBHHHH", one) == (1, 0, 0, 0, l4, 6)
    batch = tap.vnet_udp_header(headers_len, 1400)
    assert struct.unpack("<BBHHHH", batch) == (1, tap.VNET_GSO_UDP_L4, headers_len, 1400, l4, 6)
