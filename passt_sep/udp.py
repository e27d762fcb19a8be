"""UDP translation decisions, without I/O.

Theory of operation
-------------------
UDP has no connections, so a "flow" here is a guest's source port in one
address family.  The first datagram the guest sends from port P opens a host
socket bound to P where the host allows it (so the peer sees the guest's own
port, no NAT; else an ephemeral port) and every later datagram from P goes
out through it with ``sendto``.  Whatever arrives on that socket goes back
to the guest's port P, from the peer's address as the guest knows it
(``fwd.AddressMap``; for mapped destinations, the address the guest used).

Forwarded ports (``-u``) work the other way round: a datagram arriving on a
listening socket for host port H goes to the guest's port T (H's target);
the guest's answers from T leave through that same socket, so the peer sees
them come from H.

Datagrams the guest sends in a burst (one loop round) to the same peer
through the same flow are gathered in a ``SendBatch`` and leave in one
``sendmsg`` with UDP GSO (``UDP_SEGMENT``): the kernel cuts them apart
again, each the size the guest gave it, in order.

Flows end after ``timeout`` seconds without traffic either way; the table is
capped.  Errors the kernel reports for a flow's socket (IP_RECVERR: port or
host unreachable) are reflected to the guest as ICMP/ICMPv6 errors quoting
the datagram the guest sent, so its connected socket sees ECONNREFUSED.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .fwd import AddressMap
from .netparams import Network
from .packet import (
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    UDP,
    UDP_HLEN,
    Drop,
    Inbound,
    build_ethernet,
    build_ip,
    build_udp,
    checksum,
    checksum_fold,
    ip_frame,
    ip_header,
    l4_checksum,
    parse_udp,
    pseudo_header_sum,
    udp_frame,
)

DEFAULT_TIMEOUT = 180.0
MAX_PAYLOAD = 65535 - 8 - 40
ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, ICMP_HOST_UNREACH = 3, 3, 1
ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, ICMPV6_ADDR_UNREACH = 1, 4, 3
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
GSO_MAX_SEGMENTS = 64             # UDP_MAX_SEGMENTS before Linux 6.9 raised it
GSO_MAX_BYTES = 65507             # one IPv4 datagram's payload, at most
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBxII")  # errno, origin, type, code, info, data
_UDP_HEADER = struct.Struct("!HHHH")


@dataclass(slots=True)
class GuestDatagram:
    src: bytes
    sport: int
    dst: bytes
    dport: int
    payload: memoryview

    @property
    def v6(self) -> bool:
        return len(self.src) == 16


def parse_guest_datagram(inb: Inbound, verify: bool = False,
                         header: UDP | None = None) -> GuestDatagram:
    """A guest's UDP datagram; ``verify`` checks its checksum (passt mode:
    the guest's virtio device does not promise valid checksums otherwise).
    ``header``: ``inb.l4`` already parsed by the caller."""
    udp = parse_udp(inb.l4) if header is None else header
    if udp.dport == 0:
        raise Drop("udp_port_zero")
    if verify:
        length = UDP_HLEN + len(udp.payload)
        stored = int.from_bytes(inb.l4[6:8], "big")
        pseudo = pseudo_header_sum(inb.src, inb.dst, IPPROTO_UDP, length)
        if (stored or inb.is_ipv6) and checksum(inb.l4[:length], pseudo) not in (0, 0xFFFF):
            raise Drop("udp_checksum")
    return GuestDatagram(inb.src, udp.sport, inb.dst, udp.dport, udp.payload)


def datagram_frame(net: Network, guest_mac: bytes, src: bytes, sport: int, dst: bytes,
                   dport: int, payload: bytes | memoryview) -> bytes:
    """A datagram from a host peer, as a frame to the guest."""
    if len(payload) > MAX_PAYLOAD:
        raise Drop("udp_too_big")
    return udp_frame(guest_mac, net.our_mac, src, dst, sport, dport, payload)


def datagram_headers(net: Network, guest_mac: bytes, src: bytes, sport: int, dst: bytes,
                     dport: int, length: int) -> bytes:
    """Ethernet, IP and UDP headers of a datagram from a host peer carrying
    ``length`` bytes, for a tap that completes checksums: the UDP checksum
    field holds only the pseudo-header's sum (``VIRTIO_NET_HDR_F_NEEDS_CSUM``:
    the kernel adds the payload's).  Behind one such header, the payloads
    of several datagrams are cut apart again by the kernel (USO)."""
    if length > MAX_PAYLOAD:
        raise Drop("udp_too_big")
    udp_len = UDP_HLEN + length
    partial = checksum_fold(pseudo_header_sum(src, dst, IPPROTO_UDP, udp_len))
    ethertype = ETH_P_IP if len(src) == 4 else ETH_P_IPV6
    return build_ethernet(guest_mac, net.our_mac, ethertype,
                          ip_header(src, dst, IPPROTO_UDP, udp_len)
                          + _UDP_HEADER.pack(sport, dport, udp_len, partial))


def parse_extended_error(data: bytes) -> tuple[int, int, int, int] | None:
    """``(errno, origin, icmp type, icmp code)`` from an IP_RECVERR message."""
    if len(data) < _SOCK_EXTENDED_ERR.size:
        return None
    err, origin, icmp_type, icmp_code, _info, _data = _SOCK_EXTENDED_ERR.unpack_from(data)
    return err, origin, icmp_type, icmp_code


def unreachable_frame(net: Network, guest_mac: bytes, guest: bytes, gport: int,
                      peer: bytes, pport: int, payload: bytes, icmp_type: int,
                      icmp_code: int) -> bytes:
    """An ICMP(v6) destination-unreachable from ``peer`` to the guest, quoting
    the datagram the guest sent (rebuilt: the kernel gives us its payload)."""
    quoted_udp = build_udp(guest, peer, gport, pport, payload)
    quoted = build_ip(guest, peer, IPPROTO_UDP, quoted_udp)
    if len(guest) == 4:
        body = quoted[:576 - 28]
        message = bytearray(struct.pack("!BBHI", icmp_type, icmp_code, 0, 0) + body)
        struct.pack_into("!H", message, 2, checksum(message))
        return ip_frame(guest_mac, net.our_mac, peer, guest, IPPROTO_ICMP, message)
    body = quoted[:1280 - 48]
    message = bytearray(struct.pack("!BBHI", icmp_type, icmp_code, 0, 0) + body)
    struct.pack_into("!H", message, 2, l4_checksum(peer, guest, IPPROTO_ICMPV6, message))
    return ip_frame(guest_mac, net.our_mac, peer, guest, IPPROTO_ICMPV6, message)


@dataclass
class UdpFlow:
    """One guest source port in one family, and its host socket."""

    v6: bool
    guest_addr: bytes
    guest_port: int
    handle: int                  # the host socket's fd, owned by the I/O layer
    last_used: float
    forwarded: bool = False      # a -u listener: never expires
    host_port: int = 0           # where the host socket is bound (the guest's port if free)
    # host peer <-> the address the guest knows it by, both ways: replies
    # keep the address the guest used, and the guest's answers to a peer go
    # back to that peer even where the address alone would be mapped (a
    # peer that is the gateway itself, say)
    guest_view: dict[tuple[bytes, int], bytes] = field(default_factory=dict)
    host_view: dict[tuple[bytes, int], bytes] = field(default_factory=dict)
    MAX_VIEWS = 64

    def remember(self, host_peer: tuple[bytes, int], guest_seen: bytes) -> None:
        """``host_peer`` is known to the guest as ``guest_seen``."""
        if len(self.guest_view) >= self.MAX_VIEWS and host_peer not in self.guest_view:
            old_host = next(iter(self.guest_view))
            old_seen = self.guest_view.pop(old_host)
            self.host_view.pop((old_seen, old_host[1]), None)
        self.guest_view[host_peer] = guest_seen
        self.host_view[(guest_seen, host_peer[1])] = host_peer[0]

    def host_peer(self, dst: bytes, dport: int, addrmap: AddressMap) -> bytes:
        """Where the guest's datagram to ``dst:dport`` goes on the host (the
        peer the guest knows by that address, else ``addrmap``'s mapping),
        remembered for the peer's replies."""
        host = self.host_view.get((dst, dport)) or addrmap.to_host(dst, dport)
        self.remember((host, dport), dst)
        return host

    def seen_as(self, host_peer: tuple[bytes, int]) -> bytes | None:
        return self.guest_view.get(host_peer)


class UdpFlows:
    """Flows by (v6, guest port) and by socket handle; capped; expiring."""

    def __init__(self, max_flows: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.max_flows = max_flows
        self.timeout = timeout
        self.by_port: dict[tuple[bool, int], UdpFlow] = {}
        self.by_handle: dict[int, UdpFlow] = {}

    def __len__(self) -> int:
        return len(self.by_port)

    def get(self, v6: bool, guest_port: int, now: float) -> UdpFlow | None:
        flow = self.by_port.get((v6, guest_port))
        if flow is not None:
            flow.last_used = now
        return flow

    def add(self, flow: UdpFlow) -> bool:
        if len(self.by_port) >= self.max_flows and not flow.forwarded:
            return False
        self.by_port[(flow.v6, flow.guest_port)] = flow
        self.by_handle[flow.handle] = flow
        return True

    def remove(self, flow: UdpFlow) -> None:
        if self.by_port.get((flow.v6, flow.guest_port)) is flow:
            del self.by_port[(flow.v6, flow.guest_port)]
        self.by_handle.pop(flow.handle, None)

    def expired(self, now: float) -> list[UdpFlow]:
        """Remove and return flows idle for longer than the timeout."""
        stale = [f for f in self.by_handle.values()
                 if not f.forwarded and now - f.last_used > self.timeout]
        for flow in stale:
            self.remove(flow)
        return stale


class SendBatch:
    """Datagrams for one target (a flow's socket and one peer) waiting to
    leave in a single GSO send: every segment has the first one's size but
    the last, which may be shorter, and the total fits one datagram.
    ``add`` says whether a datagram joined; if not, the caller sends what
    is pending (``take``) and adds it again to a fresh batch."""

    def __init__(self, capacity: int = GSO_MAX_BYTES) -> None:
        self.buffer = bytearray(capacity)
        self.view = memoryview(self.buffer)
        self.target: object = None
        self.length = self.segment = self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, target: object, payload: bytes | memoryview) -> bool:
        size, length = len(payload), self.length
        if size == 0:                  # no segment of a batch can be empty: it goes alone
            return False
        if self.count:
            if (size > self.segment or length != self.count * self.segment
                    or self.count >= GSO_MAX_SEGMENTS or length + size > len(self.buffer)
                    or target != self.target):
                return False
        elif size > len(self.buffer):
            return False
        else:
            self.target, self.segment = target, size
        self.buffer[length:length + size] = payload
        self.length = length + size
        self.count += 1
        return True

    def take(self) -> tuple[object, memoryview, int, int]:
        """``(target, data, segment size, count)``, and the batch is empty."""
        taken = (self.target, self.view[:self.length], self.segment, self.count)
        self.target = None
        self.length = self.segment = self.count = 0
        return taken


def segments(data: memoryview, segment: int) -> list[memoryview]:
    """A batch's data cut back into its datagrams (when GSO is refused)."""
    return [data[start:start + segment] for start in range(0, len(data), segment)]
