"""passt stream framing and pcap records, on bytes."""

from __future__ import annotations

import struct

import pytest

from passt_sep import pcap, tap


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
