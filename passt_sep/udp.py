"""UDP translation decisions, without I/O.

Theory of operation
-------------------
UDP has no connections, so a "flow" here is what the guest's datagrams name:
its address and source port, the peer's address and port (as the guest sees
the peer), in one address family.  The first datagram of a flow opens a host
socket ``connect()``-ed to the peer (``fwd.AddressMap``'s mapping of the
destination; for mapped ones, the guest keeps seeing the address it used), so
that only that peer's datagrams reach the guest: anyone else sending to the
socket's port gets the kernel's port unreachable.  The socket is bound to
the guest's source port where the host allows it (so the peer sees the
guest's own port, no NAT), else to an ephemeral one
(``UdpFlows.bind_plan``).  Flows from one guest port to several peers share
that host port: the first binds it exclusively (never sharing with a host
application's socket), each later one shares it with them
(``SO_REUSEADDR``, set on our flows' sockets only); the kernel hands each
connected socket its own peer's datagrams.

Forwarded ports (``-u``) work the other way round: a datagram arriving on a
listening socket for host port H goes to the guest's port T (H's target);
the guest's answers from T leave through that same socket, so the peer sees
them come from H.  A forwarded port is open to every host by the user's
choice; it keeps its peers' addresses both ways (``UdpForward``).  A
port of both families is one dual-stack socket (``UdpForward.dual``): its
IPv4 peers, which the socket API shows as ``::ffff:a.b.c.d``, reach the
guest over IPv4 from ``a.b.c.d`` (``fwd.unmapped``), and the guest's IPv4
answers leave through it to that mapped address (``socket_peer``).  With
``--clat``, an IPv6 port's datagram may reach the guest over IPv4
(``UdpForward.clat_source``): UDP has no refusal to fall back on, as TCP
has, so the peer decides: one in the NAT64 prefix is an IPv4 host and
arrives from the address it embeds, any peer does when the guest has no
IPv6.  The guest's IPv4 answers go back through that IPv6 port
(``clat_answer``).

Datagrams the guest sends in a burst (one loop round) to the same peer
through the same flow are gathered in a ``SendBatch`` and leave in one
``sendmsg`` with UDP GSO (``UDP_SEGMENT``): the kernel cuts them apart
again, each the size the guest gave it, in order.

Flows end after ``timeout`` seconds without traffic either way.  They are
entries of the worker's one flow table (:mod:`passt_sep.flow`), under its
cap shared with every other protocol.  Errors the kernel reports for a
flow's socket (IP_RECVERR: port or host unreachable) are reflected to the
guest as ICMP/ICMPv6 errors quoting the datagram the guest sent, so its
connected socket sees ECONNREFUSED.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .flow import FlowKey, FlowSection, FlowTable
from .fwd import AddressMap, v4_mapped
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
    """A UDP datagram from the guest, parsed."""

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
    """One guest 5-tuple and its host socket, connected to the peer."""

    v6: bool
    guest_addr: bytes
    guest_port: int
    handle: int                  # the host socket's fd, owned by the I/O layer
    last_used: float
    peer: bytes                  # the peer's address as the guest uses it
    peer_port: int
    host_peer: bytes             # ... and where the socket is connected on the host
    host_port: int = 0           # where the socket is bound (the guest's port if free)
    forwarded = False

    @property
    def key(self) -> FlowKey:
        return FlowKey(IPPROTO_UDP, self.guest_addr, self.guest_port, self.peer, self.peer_port)

    @property
    def on_guest_port(self) -> bool:
        """Bound to the guest's own source port: flows from that port to
        other peers may share it."""
        return self.host_port == self.guest_port


def open_flow(datagram: GuestDatagram, addrmap: AddressMap, handle: int,
              now: float) -> UdpFlow:
    """The flow a guest datagram with no flow yet opens: its socket is to be
    connected to ``host_peer``:``peer_port`` (``host_port`` filled in once
    bound)."""
    return UdpFlow(datagram.v6, datagram.src, datagram.sport, handle, now, datagram.dst,
                   datagram.dport, addrmap.to_host(datagram.dst, datagram.dport))


@dataclass
class UdpForward:
    """A ``-u`` listening socket, whose datagrams go to the guest's port
    ``guest_port``; the guest's answers from that port leave through it."""

    v6: bool
    guest_addr: bytes
    guest_port: int
    handle: int
    last_used: float = 0.0
    # an IPv6 port: the guest's IPv4 address, for its IPv4 peers (dual) or
    # for IPv6 peers it hears over IPv4 (--clat)
    guest_addr4: bytes | None = None
    dual: bool = False                 # a dual-stack socket: the guest's IPv4 answers too
    forwarded = True
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

    def view_of(self, host_src: bytes, port: int, addrmap: AddressMap) -> bytes:
        """The address the guest knows host peer ``host_src:port`` by: the
        one remembered, else the ``--clat`` IPv4 one, else ``addrmap``'s."""
        return (self.seen_as((host_src, port)) or self.clat_source(host_src, addrmap)
                or addrmap.to_guest(host_src, port))

    def clat_source(self, host_src: bytes, addrmap: AddressMap) -> bytes | None:
        """``--clat``: the IPv4 address an IPv6 peer's datagram reaches the
        guest from, None where it goes over IPv6.  The guest without IPv6
        hears every peer over IPv4 (``to_ipv4_guest``); else only an IPv4
        host behind the NAT64, from the address it embeds: the one the
        guest reaches that host by, so its IPv4 services answer it."""
        if self.guest_addr4 is None or len(host_src) != 16:
            return None
        if len(self.guest_addr) == 4:
            return addrmap.to_ipv4_guest(host_src)
        return addrmap.behind_nat64(host_src)

    def guest_for(self, seen: bytes) -> bytes | None:
        """The guest's address a datagram from ``seen`` goes to: its IPv4
        one for a peer it sees as an IPv4 address (a dual-stack port's
        IPv4 peer, ``--clat``); None if the guest has none of that family
        (a dual-stack port of a guest with one)."""
        if len(seen) == 4 and self.guest_addr4 is not None:
            return self.guest_addr4
        return self.guest_addr if len(seen) == len(self.guest_addr) else None

    def socket_peer(self, host: bytes) -> bytes:
        """Where the socket sends to reach host peer ``host``: an IPv4 one
        mapped, on a dual-stack socket."""
        return v4_mapped(host) if self.dual else host


def clat_answer(forwards: dict[int, UdpForward], datagram: GuestDatagram) -> UdpForward | None:
    """``--clat``: the IPv6 forwarded port (of ``forwards``, by target port)
    the guest's IPv4 ``datagram`` answers through: the one whose target is
    its source port and that brought a datagram from its destination."""
    if datagram.v6:
        return None
    forward = forwards.get(datagram.sport)
    if forward is not None and (datagram.dst, datagram.dport) in forward.host_view:
        return forward
    return None


AnyFlow = UdpFlow | UdpForward      # what a host socket of ours serves


class UdpFlows:
    """Connected flows in the worker's flow table (its UDP section: they
    count against the table's one cap, and expire); forwarded ports, which
    are listeners, not flows, by (v6, target port); both by socket handle,
    an index built from the entries added here and emptied as they go."""

    def __init__(self, table: FlowTable, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.section: FlowSection[UdpFlow] = table.section(IPPROTO_UDP)
        self.forwards: dict[tuple[bool, int], UdpForward] = {}
        self.by_handle: dict[int, AnyFlow] = {}
        # (v6, port) -> host peers of our flows bound to their guest's port
        self.held: dict[tuple[bool, int], set[tuple[bytes, int]]] = {}

    def __len__(self) -> int:
        return len(self.section)

    def lookup(self, guest: bytes, guest_port: int, peer: bytes, peer_port: int,
               now: float) -> AnyFlow | None:
        """Where a guest datagram goes: its own connected flow, else the
        forwarded port it answers from; None: a new flow."""
        flow: AnyFlow | None = self.section.get(
            FlowKey(IPPROTO_UDP, guest, guest_port, peer, peer_port))
        if flow is None:
            flow = self.forwards.get((len(guest) == 16, guest_port))
        if flow is not None:
            flow.last_used = now
        return flow

    def full(self) -> bool:
        """The flow table has no room, for any protocol."""
        return self.section.full

    def bind_plan(self, flow: UdpFlow) -> tuple[tuple[int, bool], ...]:
        """``(port, share)`` binds to try, in order, for a new flow's socket.
        The guest's port: alone, so that no host application's socket is
        joined, unless our own flows from that port hold it: then shared
        with them (``SO_REUSEADDR``), but never by two sockets connected to
        one host peer (whose datagrams would reach either).  Else, and
        when the guest's port is taken, an ephemeral port."""
        peers = self.held.get((flow.v6, flow.guest_port))
        if peers is None:
            return ((flow.guest_port, False), (0, False))
        if (flow.host_peer, flow.peer_port) in peers:
            return ((0, False),)
        return ((flow.guest_port, True), (0, False))

    def add(self, flow: UdpFlow) -> bool:
        """Admit a flow under the table's cap; False when refused."""
        if not self.section.add(flow.key, flow):
            return False
        self.by_handle[flow.handle] = flow
        if flow.on_guest_port:
            self.held.setdefault((flow.v6, flow.host_port), set()).add(
                (flow.host_peer, flow.peer_port))
        return True

    def add_forward(self, forward: UdpForward) -> None:
        """A forwarded port: a dual-stack one takes the guest's answers of
        both families."""
        for v6 in _families(forward):
            self.forwards[(v6, forward.guest_port)] = forward
        self.by_handle[forward.handle] = forward

    def remove(self, flow: AnyFlow) -> None:
        if self.by_handle.get(flow.handle) is not flow:
            return
        if isinstance(flow, UdpForward):
            del self.by_handle[flow.handle]
            for v6 in _families(flow):
                if self.forwards.get((v6, flow.guest_port)) is flow:
                    del self.forwards[(v6, flow.guest_port)]
            return
        self.section.remove(flow.key)
        self._unindex(flow)

    def _unindex(self, flow: UdpFlow) -> None:
        del self.by_handle[flow.handle]
        peers = self.held.get((flow.v6, flow.host_port))
        if flow.on_guest_port and peers is not None:
            peers.discard((flow.host_peer, flow.peer_port))
            if not peers:
                del self.held[(flow.v6, flow.host_port)]

    def expired(self, now: float) -> list[UdpFlow]:
        """Remove and return connected flows idle for longer than the timeout."""
        stale = self.section.expire(now, self.timeout)
        for flow in stale:
            self._unindex(flow)
        return stale

    def connected(self) -> list[UdpFlow]:
        """The connected flows, as a snapshot."""
        return self.section.values()


def _families(forward: UdpForward) -> tuple[bool, ...]:
    """The guest's families (``v6``) whose answers a forwarded port takes."""
    return (True, False) if forward.dual else (forward.v6,)


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
