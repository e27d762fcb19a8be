"""Classic libpcap capture format (tcpdump/tshark read it), without I/O."""

from __future__ import annotations

import struct

MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535 + 14

_FILE_HEADER = struct.Struct("=IHHiIII")
_RECORD_HEADER = struct.Struct("=IIII")


def file_header() -> bytes:
    """Global header: version 2.4, no timezone offset, Ethernet link type."""
    return _FILE_HEADER.pack(MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)


def record(frame: bytes | memoryview, wall_time: float) -> bytes:
    """One packet record: header and the (possibly truncated) frame."""
    seconds = int(wall_time)
    micros = int((wall_time - seconds) * 1_000_000)
    captured = bytes(frame[:SNAPLEN])
    return _RECORD_HEADER.pack(seconds, micros, len(captured), len(frame)) + captured
