"""UDP flows on host sockets: the I/O side of ``passt_sep.udp``."""

from __future__ import annotations

import errno
import functools
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import clat, udp
from ..fwd import unmapped
from ..packet import UDP, Drop, Inbound, address_text
from ..system.portsock import UDP_RCVBUF, grow_receive_buffer, receive_drops
from .context import WorkerContext
from .loop import EPOLLERR, EPOLLIN, Loop

RECV_SIZE = 65536
DATAGRAMS_PER_WAKEUP = 64
SWEEP_INTERVAL = 10.0
IP_RECVERR = 11
IPV6_RECVERR = 25
SOL_UDP, UDP_SEGMENT = 17, 103            # UDP GSO (Linux 4.18)
_GSO_SIZE = struct.Struct("=H")
SOCKADDR_CACHE = 1024                     # peer addresses kept converted


@dataclass(frozen=True)
class UdpListener:
    """A ``-u`` forwarded port: bound by the broker, datagrams go to
    ``target``; ``dual``, an AF_INET6 socket taking IPv4 peers too."""

    fd: int
    family: int
    port: int
    target: int
    dual: bool = False


SendDatagrams = Callable[[bytes, memoryview, int], bool]   # TapLink.send_datagrams
# (bound socket, peer, payload, target port, now) -> taken (spliced instead)
Divert = Callable[[socket.socket, tuple, memoryview, int, float], bool]


class Batcher:
    """A ``udp.SendBatch`` and when it leaves: as soon as the next datagram
    cannot join it, else at the end of the loop round."""

    def __init__(self, loop: Loop, capacity: int,
                 send: Callable[[Any, memoryview, int, int], None]) -> None:
        self.loop, self.send = loop, send
        self.batch = udp.SendBatch(capacity)
        self.scheduled = False

    def queue(self, target: Any, payload: memoryview) -> None:
        batch = self.batch
        if not batch.add(target, payload):
            self.flush()
            if not batch.add(target, payload):          # empty, or too big to batch
                self.send(target, payload, len(payload), 1)
                return
        if not self.scheduled:
            self.scheduled = True
            self.loop.at_round_end(self._round_end)

    def _round_end(self, now: float) -> None:
        self.scheduled = False
        self.flush()

    def flush(self) -> None:
        if self.batch:
            self.send(*self.batch.take())


class UdpHandler:
    def __init__(self, ctx: WorkerContext, listeners: list[UdpListener],
                 divert: Divert | None = None, send_datagrams: SendDatagrams | None = None,
                 timeout: float = udp.DEFAULT_TIMEOUT) -> None:
        """``divert``: pasta's relay of datagrams from the host itself;
        ``send_datagrams``: the tap's batches behind one header (USO)."""
        loop = ctx.loop
        self.loop, self.net, self.addrmap, self.log = loop, ctx.net, ctx.addrmap, ctx.log
        self.outbound = ctx.outbound
        self.send_frame, self.guest_mac = ctx.link.send, ctx.guest_mac
        self.verify = ctx.config.verify_checksums
        self.flows = udp.UdpFlows(ctx.flows, timeout)
        # --clat: IPv6 forwarded ports by target port, for the guest's IPv4 answers
        self.clat_forwards: dict[int, udp.UdpForward] = {}
        self.sockets: dict[int, socket.socket] = {}
        self.buffer = bytearray(RECV_SIZE)
        self.view = memoryview(self.buffer)
        # datagrams each way leave in batches (GSO, USO), built up over a loop round
        self.sends = Batcher(loop, udp.GSO_MAX_BYTES, self._send_batch)
        self.deliveries = Batcher(loop, udp.MAX_PAYLOAD, self._deliver)
        self.send_datagrams = send_datagrams
        self.sweep_timer = None
        self.divert = divert
        for listener in listeners:
            self.add_listener(listener)
        loop.counters.sources.append(self._rcvbuf_drops)

    # -- guest -> host --------------------------------------------------------------
    def on_guest_segment(self, inb: Inbound, now: float, header: UDP | None = None) -> None:
        datagram = udp.parse_guest_datagram(inb, self.verify, header)
        dport = datagram.dport
        flow = self.flows.lookup(datagram.src, datagram.sport, datagram.dst, dport, now)
        if (flow is None or flow.forwarded) and self.clat_forwards:
            answer = udp.clat_answer(self.clat_forwards, datagram)
            if answer is not None:
                flow = answer
                flow.last_used = now
        if flow is None:
            flow = self._open_flow(datagram, now)
        if isinstance(flow, udp.UdpForward):
            host_dst = flow.socket_peer(flow.host_peer(datagram.dst, dport, self.addrmap))
            target = (self.sockets[flow.handle], (_address_text(host_dst), dport))
        else:                                   # connected: to its peer, no address
            target = (self.sockets[flow.handle], None)
        self.sends.queue(target, datagram.payload)

    def _send_batch(self, target: tuple[socket.socket, tuple[str, int] | None],
                    data: memoryview, segment: int, count: int) -> None:
        sock, address = target
        if count == 1:
            self._send(sock, data, address)
            return
        gso = [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(segment))]
        try:
            if address is None:
                sock.sendmsg([data], gso)
            else:
                sock.sendmsg([data], gso, 0, address)
        except BlockingIOError:
            self.loop.counters.add("udp_send_full", count)
        except OSError:
            # GSO refused (no checksum offload on the route, a segment over
            # the path MTU) or an error to report per datagram, as without it
            self.loop.counters.add("udp_gso_fallback")
            for part in udp.segments(data, segment):
                self._send(sock, part, address)

    def _send(self, sock: socket.socket, payload: memoryview,
              address: tuple[str, int] | None) -> None:
        try:
            if address is None:
                sock.send(payload)
            else:
                sock.sendto(payload, address)
        except BlockingIOError:
            self.loop.counters.add("udp_send_full")
        except OSError as exc:
            self.loop.counters.add("udp_send_error")
            self.log.ratelimited("udp_send", 7, f"UDP send failed: {exc.strerror}")

    def _open_flow(self, datagram: udp.GuestDatagram, now: float) -> udp.UdpFlow:
        """A socket connected to the datagram's peer: the guest hears from
        that peer alone on it.  Refused (a counted drop) when the flow
        table, shared by every protocol, is full."""
        if self.flows.full():
            raise Drop("udp_flows_full")
        host_peer = self.addrmap.to_host(datagram.dst, datagram.dport)  # --clat: may be IPv6
        family = socket.AF_INET6 if len(host_peer) == 16 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        flow = udp.open_flow(datagram, self.addrmap, sock.fileno(), now)
        try:
            self._bind_like_guest(sock, flow)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        except OSError:
            sock.close()
            raise Drop("udp_socket") from None
        try:
            sock.connect((_address_text(flow.host_peer), flow.peer_port))
        except OSError:
            sock.close()
            raise Drop("udp_connect") from None
        _discard_queued(sock)
        if not self.flows.add(flow):        # checked above: a bug if it happens
            sock.close()
            raise Drop("udp_flows_full")
        self._register(sock)
        return flow

    def _bind_like_guest(self, sock: socket.socket, flow: udp.UdpFlow) -> None:
        """The guest's own source port, so the peer sees it (no NAT); an
        ephemeral one when the host has that port taken (``bind_plan``).
        Bound to the guest's port, the socket lets our later flows from
        that port to other peers share it."""
        family = sock.family
        self.outbound.prepare(sock, port=None)
        wildcard = self.outbound.address(family) or ("::" if family == socket.AF_INET6
                                                     else "0.0.0.0")
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for port, share in self.flows.bind_plan(flow):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(share))
            try:
                sock.bind((wildcard, port))
                break
            except OSError as exc:
                if port == 0 or exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
        flow.host_port = sock.getsockname()[1]
        if flow.on_guest_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def _register(self, sock: socket.socket) -> None:
        grow_receive_buffer(sock, UDP_RCVBUF)           # a peer's burst waits there
        self.sockets[sock.fileno()] = sock
        self.loop.add_fd(sock.fileno(), EPOLLIN, self._readable)
        if self.sweep_timer is None:
            self.sweep_timer = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def remove_listener(self, fd: int) -> None:
        flow = self.flows.by_handle.get(fd)
        if flow is not None and flow.forwarded:
            self.flows.remove(flow)
            if self.clat_forwards.get(flow.guest_port) is flow:
                del self.clat_forwards[flow.guest_port]
            self._close(fd)

    def bound_ports(self) -> set[int]:
        """Host ports our flows' own sockets hold: they show in the host's
        /proc/net/udp like any bound socket, and are not to be forwarded."""
        return {f.host_port for f in self.flows.connected()}

    def add_listener(self, listener: UdpListener) -> None:
        sock = socket.socket(fileno=listener.fd)
        sock.setblocking(False)
        v6 = listener.family == socket.AF_INET6
        guest4 = self.net.ipv4.addr if self.net.ipv4 else None
        # --clat: an IPv6 port may bring datagrams to the guest over IPv4;
        # a dual-stack one brings its IPv4 peers' there
        clat = v6 and self.addrmap.nat64 is not None and guest4 is not None
        dual = listener.dual and guest4 is not None
        guest = (self.net.ipv6.addr if v6 and self.net.ipv6 else
                 guest4 if not v6 or clat or dual else None)
        if guest is None:
            sock.close()
            return
        forward = udp.UdpForward(v6, guest, listener.target, sock.fileno(),
                                 guest_addr4=guest4 if clat or dual else None, dual=dual)
        self.flows.add_forward(forward)
        if clat:
            self.clat_forwards[listener.target] = forward
        self.sockets[sock.fileno()] = sock
        self.loop.add_fd(sock.fileno(), EPOLLIN, self._readable)

    # -- host -> guest --------------------------------------------------------------
    def _readable(self, fd: int, events: int, now: float) -> None:
        flow = self.flows.by_handle.get(fd)
        sock = self.sockets.get(fd)
        if flow is None or sock is None:
            return
        if events & EPOLLERR:
            self._errors(flow, sock)
        for _ in range(DATAGRAMS_PER_WAKEUP):
            try:
                size, address = sock.recvfrom_into(self.buffer)
            except BlockingIOError:
                return
            except OSError:
                self._errors(flow, sock)
                continue
            flow.last_used = now
            if flow.forwarded and self.divert is not None and self.divert(
                    sock, address, self.view[:size], flow.guest_port, now):
                continue                        # loopback peer: spliced, no frame
            self._to_guest(flow, address, self.view[:size])

    def _to_guest(self, flow: udp.AnyFlow, address: tuple, payload: memoryview) -> None:
        if isinstance(flow, udp.UdpFlow):       # connected: from its peer alone
            src, port, guest = flow.peer, flow.peer_port, flow.guest_addr
        else:
            port = address[1]
            host_src = _peer_bytes(socket.AF_INET6 if flow.v6 else socket.AF_INET, address[0])
            src = flow.view_of(host_src, port, self.addrmap)
            guest = flow.guest_for(src)
            if guest is None:
                self.loop.counters.add("drop_udp_no_family")
                return
            flow.remember((host_src, port), src)
        if self.send_datagrams is not None:
            self.deliveries.queue((guest, flow.guest_port, src, port), payload)
        else:
            self._frame(guest, flow.guest_port, src, port, payload)

    def _deliver(self, target: tuple[bytes, int, bytes, int], data: memoryview, segment: int,
                 count: int) -> None:
        """A batch of datagrams from one peer to the guest's address and
        port: one frame with the checksum and the cutting left to the
        kernel (tap)."""
        guest, guest_port, src, port = target
        assert self.send_datagrams is not None
        try:
            headers = udp.datagram_headers(self.net, self.guest_mac(), src, port,
                                           guest, guest_port, len(data))
        except Drop as drop:
            self.loop.counters.add(f"drop_{drop.reason}")
            return
        if self.send_datagrams(headers, data, segment if count > 1 else 0):
            return
        self.loop.counters.add("udp_uso_refused")       # Linux < 6.2: one frame each
        self.send_datagrams = None
        for part in udp.segments(data, segment):
            self._frame(guest, guest_port, src, port, part)

    def _frame(self, guest: bytes, guest_port: int, src: bytes, port: int,
               payload: memoryview) -> None:
        try:
            frame = udp.datagram_frame(self.net, self.guest_mac(), src, port, guest,
                                       guest_port, payload)
        except Drop as drop:
            self.loop.counters.add(f"drop_{drop.reason}")
            return
        self.send_frame(frame)

    def _errors(self, flow: udp.AnyFlow, sock: socket.socket) -> None:
        """Reflect queued ICMP errors (IP_RECVERR) to the guest."""
        for _ in range(DATAGRAMS_PER_WAKEUP):
            try:
                data, ancillary, _flags, address = sock.recvmsg(RECV_SIZE, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            for _level, _kind, cmsg in ancillary:
                self._reflect_error(flow, sock, cmsg, address, data)

    def _reflect_error(self, flow: udp.AnyFlow, sock: socket.socket, cmsg: bytes,
                       address: tuple, data: bytes) -> None:
        parsed = udp.parse_extended_error(cmsg)
        if parsed is None or address is None:
            return
        _err, origin, icmp_type, icmp_code = parsed
        if origin not in (udp.SO_EE_ORIGIN_ICMP, udp.SO_EE_ORIGIN_ICMP6):
            return
        if isinstance(flow, udp.UdpFlow):
            peer, port, guest = flow.peer, flow.peer_port, flow.guest_addr
        else:
            host_dst, port = _peer_bytes(sock.family, address[0]), address[1]
            peer = flow.view_of(host_dst, port, self.addrmap)
            guest = flow.guest_for(peer)
            if guest is None:
                return
        if origin == udp.SO_EE_ORIGIN_ICMP6 and len(guest) == 4:  # --clat: RFC 7915's codes
            translated = clat.icmp4_error(icmp_type, icmp_code)
            if translated is None:
                self.loop.counters.add("udp_icmp_untranslated")
                return
            icmp_type, icmp_code = translated
        self.loop.counters.add("udp_icmp_error")
        self.send_frame(udp.unreachable_frame(self.net, self.guest_mac(), guest,
                                              flow.guest_port, peer, port, data,
                                              icmp_type, icmp_code))

    # -- housekeeping -----------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        self.sweep_timer = None
        for flow in self.flows.expired(now):
            self._close(flow.handle)
        if len(self.flows.by_handle) > 0:     # on the clock it was called with
            self.sweep_timer = self.loop.call_at(now + SWEEP_INTERVAL, self._sweep)

    def _close(self, fd: int) -> None:
        """Close a flow's socket, what the kernel dropped at it counted first."""
        self.loop.remove_fd(fd)
        sock = self.sockets.pop(fd)
        drops = receive_drops(sock)
        if drops:
            self.loop.counters.add("udp_rcvbuf_drops", drops)
        sock.close()

    def _rcvbuf_drops(self) -> dict[str, int]:
        """Datagrams dropped at our sockets' full receive buffers, so far."""
        return {"udp_rcvbuf_drops": sum(receive_drops(sock) for sock in self.sockets.values())}

    def active_flows(self) -> int:
        return len(self.flows)


def _discard_queued(sock: socket.socket) -> None:
    """Datagrams that reached a flow's socket between its bind() and its
    connect() came from anyone: none of them goes to the guest."""
    while True:
        try:
            sock.recv(1)
        except OSError:           # BlockingIOError: the queue is empty
            return


# A peer's address converted between the socket API's text and our bytes
# once, not per datagram.
_address_text = functools.lru_cache(maxsize=SOCKADDR_CACHE)(address_text)


@functools.lru_cache(maxsize=SOCKADDR_CACHE)
def _peer_bytes(family: int, host: str) -> bytes:
    """A peer's address, a dual-stack socket's IPv4 peer as IPv4."""
    return unmapped(socket.inet_pton(family, host))
