"""Frame transport to the guest, without I/O.

pasta: the tap device gives one Ethernet frame per read(), behind a
virtio-net header (``vnet_header`` says what ours carry).
passt: a stream socket (QEMU ``-netdev stream``, libvirt) where each frame is
preceded by its length as a 4-byte big-endian integer.  ``StreamDecoder``
turns arbitrary chunks of that stream into whole frames and rejects
lengths that cannot be an Ethernet frame, so a broken or hostile client is
dropped instead of making us buffer without bound.
"""

from __future__ import annotations

import functools
import struct

from .packet import ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPV4_HLEN, IPV6_HLEN, UDP_HLEN

MIN_FRAME = 14            # an Ethernet header
MAX_FRAME = 65535 + 14    # the largest IP packet we accept, plus Ethernet
_LENGTH = struct.Struct("!I")

VNET_HDR_SIZE = 10                        # struct virtio_net_hdr, no mergeable buffers
VNET_DATA_VALID = bytes([0x02]) + bytes(VNET_HDR_SIZE - 1)   # flags, no GSO
VNET_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_GSO_TCPV6, VNET_GSO_UDP_L4 = 0x01, 1, 4, 5
# flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (host byte order: x86)
_VNET_HDR = struct.Struct("<BBHHHH")
TCP_CHECKSUM_OFFSET = 16
UDP_CHECKSUM_OFFSET = 6


def vnet_header(frame: bytes | bytearray, largest: int) -> bytes:
    """The virtio-net header for one of our frames on the tap; ``largest``
    is the link's biggest frame (Ethernet header plus MTU).

    TCP frames come from ``TcpConn`` (or ``rst_for_unknown``) with
    ``tso``: their checksum field holds the pseudo-header's sum for the
    kernel to complete (nothing summed in Python), and one beyond the MTU
    is cut into MTU-sized segments by it.  Everything else is whole and
    checksummed."""
    ethertype = frame[12] << 8 | frame[13]     # indexing: no slice to allocate
    if ethertype == ETH_P_IP and frame[ETH_HLEN + 9] == IPPROTO_TCP:
        l4 = ETH_HLEN + (frame[ETH_HLEN] & 0x0F) * 4
        gso = VNET_GSO_TCPV4
    elif ethertype == ETH_P_IPV6 and frame[ETH_HLEN + 6] == IPPROTO_TCP:
        l4, gso = ETH_HLEN + IPV6_HLEN, VNET_GSO_TCPV6
    else:
        return VNET_DATA_VALID
    if len(frame) <= largest:
        return _vnet_csum_header(l4)
    header_end = l4 + (frame[l4 + 12] >> 4) * 4
    return _VNET_HDR.pack(VNET_NEEDS_CSUM, gso, header_end, largest - header_end, l4,
                          TCP_CHECKSUM_OFFSET)


@functools.lru_cache(maxsize=4)
def _vnet_csum_header(l4: int) -> bytes:
    """NEEDS_CSUM from ``l4`` on: the same few bytes for every frame."""
    return _VNET_HDR.pack(VNET_NEEDS_CSUM, 0, 0, 0, l4, TCP_CHECKSUM_OFFSET)


# What vnet_header gives a frame of tcp_wire.FrameTemplate's (IPv4 without
# options, a partial checksum) up to the MTU, by its ethertype's first byte:
# a lookup instead of a call per frame
TCP_CSUM_HEADERS = {ETH_P_IP >> 8: _vnet_csum_header(ETH_HLEN + IPV4_HLEN),
                    ETH_P_IPV6 >> 8: _vnet_csum_header(ETH_HLEN + IPV6_HLEN)}


def vnet_udp_header(headers_len: int, segment: int) -> bytes:
    """The virtio-net header for a frame from ``udp.datagram_headers``
    (``headers_len``: its Ethernet, IP and UDP headers): the kernel completes
    the UDP checksum and, given ``segment``, cuts the payload into datagrams
    of that size (the last may be shorter; USO, Linux 6.2)."""
    l4 = headers_len - UDP_HLEN
    if not segment:
        return _VNET_HDR.pack(VNET_NEEDS_CSUM, 0, 0, 0, l4, UDP_CHECKSUM_OFFSET)
    return _VNET_HDR.pack(VNET_NEEDS_CSUM, VNET_GSO_UDP_L4, headers_len, segment, l4,
                          UDP_CHECKSUM_OFFSET)


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
