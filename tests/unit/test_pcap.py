"""libpcap capture records beyond tests/unit/test_framing.py: truncation at
the snap length, memoryviews, and a whole capture read back independently."""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt_sep import pcap

# https://wiki.wireshark.org/Development/LibpcapFileFormat, native byte order
HEADER = struct.Struct("=IHHiIII")
RECORD = struct.Struct("=IIII")


def read_capture(data: bytes) -> tuple[tuple, list[tuple[int, int, int, bytes]]]:
    header = HEADER.unpack_from(data)
    offset, records = HEADER.size, []
    while offset < len(data):
        seconds, micros, captured, original = RECORD.unpack_from(data, offset)
        offset += RECORD.size
        records.append((seconds, micros, original, data[offset:offset + captured]))
        assert len(records[-1][3]) == captured
        offset += captured
    return header, records


def test_header_is_native_order_version_2_4_ethernet() -> None:
    header = pcap.file_header()
    assert len(header) == 24
    magic = b"\xa1\xb2\xc3\xd4" if sys.byteorder == "big" else b"\xd4\xc3\xb2\xa1"
    assert header[:4] == magic
    assert HEADER.unpack(header) == (0xA1B2C3D4, 2, 4, 0, 0, 65535 + 14, 1)


def test_frame_over_the_snap_length_is_cut_and_keeps_its_length() -> None:
    frame = bytes(range(256)) * 300                  # 76800 bytes, over 65549
    record = pcap.record(frame, 1.5)
    seconds, micros, captured, original = RECORD.unpack_from(record)
    assert (seconds, micros, captured, original) == (1, 500000, 65549, 76800)
    assert record[16:] == frame[:65549]


@pytest.mark.parametrize("size", [0, 1, 60, 65549])
def test_frames_up_to_the_snap_length_are_whole(size: int) -> None:
    frame = b"\x5a" * size
    record = pcap.record(memoryview(frame), 1700000000.0)
    assert RECORD.unpack_from(record) == (1700000000, 0, size, size)
    assert record[16:] == frame


def test_memoryview_slice_of_a_larger_buffer() -> None:
    buffer = bytearray(b"HEADER" + b"frame-bytes" + b"TRAILER")
    record = pcap.record(memoryview(buffer)[6:17], 42.25)
    assert record == RECORD.pack(42, 250000, 11, 11) + b"frame-bytes"


@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 2**32 - 1),
                          st.integers(0, 999)), max_size=10))
def test_capture_reads_back(packets: list[tuple[bytes, int, int]]) -> None:
    """Every record comes back; s + ms/1000 is not exact in binary floating
    point, so the truncated microseconds may be one low, never high."""
    data = pcap.file_header() + b"".join(pcap.record(frame, seconds + ms / 1000)
                                         for frame, seconds, ms in packets)
    header, records = read_capture(data)
    assert header[0] == 0xA1B2C3D4
    assert len(records) == len(packets)
    for (frame, seconds, ms), (got_s, got_us, original, captured) in zip(packets, records,
                                                                         strict=True):
        assert (got_s, original, captured) == (seconds, len(frame), frame)
        assert ms * 1000 - got_us in (0, 1)
