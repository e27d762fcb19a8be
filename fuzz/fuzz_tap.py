"""Fuzz target ``tap``: the passt stream framing (``StreamDecoder``): 4-byte
big-endian lengths, each followed by one frame, in arbitrary chunks.

Input: the stream, then control bytes (from the end): the number of
chunks and where they are cut.  Documented exception: ``tap.FramingError``
(the worker then drops the guest).
Invariants: cutting the stream anywhere changes nothing (same frames, same
error); every frame is between ``MIN_FRAME`` and ``MAX_FRAME`` bytes and is
the stream's bytes after its prefix; the decoder buffers only the tail.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_tap.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import tap  # noqa: E402
from passt_sep.tap import FramingError, StreamDecoder  # noqa: E402

NAME = "tap"
ALLOWED = (FramingError,)
DICTIONARY = [b"\x00\x00\x00\x0e", b"\x00\x00\x00\x0d", b"\x00\x01\x00\x0d", b"\x00\x01\x00\x0e",
              b"\x00\x00\x05\xea", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"]


def _decode(chunks: list[bytes]) -> tuple[list[bytes], bool, StreamDecoder]:
    decoder = StreamDecoder()
    frames: list[bytes] = []
    for chunk in chunks:
        try:
            frames += decoder.feed(chunk)
        except ALLOWED:
            return frames, True, decoder
    return frames, False, decoder


def check(data: bytes) -> None:
    fdp = common.provider(data)
    count = fdp.ConsumeIntInRange(1, 8)
    fractions = sorted(fdp.ConsumeIntInRange(0, 255) for _ in range(count - 1))
    stream = common.rest(fdp)
    cuts = [0] + [len(stream) * f // 255 for f in fractions] + [len(stream)]
    chunks = [stream[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    frames, failed, decoder = _decode(chunks)
    whole, whole_failed, whole_decoder = _decode([stream])
    assert failed == whole_failed
    offset = 0
    for frame in frames:
        assert tap.MIN_FRAME <= len(frame) <= tap.MAX_FRAME
        assert stream[offset:offset + 4] == tap.stream_prefix(len(frame))
        assert stream[offset + 4:offset + 4 + len(frame)] == frame
        offset += 4 + len(frame)
    if not failed:
        assert frames == whole
        assert bytes(decoder.buffer) == stream[offset:] == bytes(whole_decoder.buffer)


def seeds() -> list[tuple[str, bytes]]:
    frames = common.frames()
    stream = b"".join(tap.stream_prefix(len(frames[label])) + frames[label]
                      for label in ("arp-request", "tcp4-syn", "udp6", "dhcp-discover"))
    # control: chunks - 1, then where each cut falls (in 255ths of the stream)
    return [("four-frames-one-chunk", stream + common.control(0)),
            ("four-frames-three-chunks", stream + common.control(2, 10, 200)),
            ("partial-frame", stream[:100] + common.control(1, 2)),
            ("eight-chunks", stream + common.control(7, 1, 2, 3, 50, 51, 128, 254))]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
