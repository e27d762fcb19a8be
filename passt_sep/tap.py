"""Frame transport to the guest, without I/O.

pasta: the tap device gives one Ethernet frame per read().
passt: a stream socket (QEMU ``-netdev stream``, libvirt) where each frame is
preceded by its length as a 4-byte big-endian integer.  ``StreamDecoder``
turns arbitrary chunks of that stream into whole frames and rejects
lengths that cannot be an Ethernet frame, so a broken or hostile client is
dropped instead of making us buffer without bound.
"""

from __future__ import annotations

import struct

MIN_FRAME = 14            # an Ethernet header
MAX_FRAME = 65535 + 14    # the largest IP packet we accept, plus Ethernet
_LENGTH = struct.Struct("!I")


class FramingError(Exception):
    """The guest's stream is not valid length-prefixed framing."""


def stream_prefix(frame_length: int) -> bytes:
    """The 4-byte length that precedes a frame on the passt stream."""
    return _LENGTH.pack(frame_length)


class StreamDecoder:
    """Reassembles length-prefixed frames from stream chunks."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, chunk: bytes | memoryview) -> list[bytes]:
        """Add received bytes; return every frame now complete."""
        self.buffer += chunk
        frames = []
        offset = 0
        while len(self.buffer) - offset >= 4:
            (length,) = _LENGTH.unpack_from(self.buffer, offset)
            if length < MIN_FRAME or length > MAX_FRAME:
                raise FramingError(f"frame length {length} out of range")
            end = offset + 4 + length
            if end > len(self.buffer):
                break
            frames.append(bytes(self.buffer[offset + 4:end]))
            offset = end
        del self.buffer[:offset]
        return frames

    def reset(self) -> None:
        self.buffer.clear()
