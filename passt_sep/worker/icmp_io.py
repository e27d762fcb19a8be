"""ICMP/ICMPv6 echo through the kernel's unprivileged ping sockets.

One ping socket per (family, guest identifier, destination): the kernel
picks the identifier the peer sees; replies are mapped back to the guest's
own identifier by ``icmp.EchoFlows``.  With ``--clat`` the guest's ICMP
echo to an IPv4 destination leaves as ICMPv6 echo on an IPv6 ping socket,
and its replies come back to the guest as ICMP echo replies.
"""

from __future__ import annotations

import errno
import socket

from .. import icmp
from ..flow import FlowKey
from ..packet import Inbound
from ..system.log import WARNING
from .context import WorkerContext
from .loop import EPOLLIN

ECHO_TIMEOUT = 60.0
RECV_SIZE = 65536


class EchoHandler:
    def __init__(self, ctx: WorkerContext) -> None:
        self.loop, self.net, self.addrmap, self.log = ctx.loop, ctx.net, ctx.addrmap, ctx.log
        self.outbound = ctx.outbound
        self.send_frame = ctx.link.send
        self.guest_mac = ctx.guest_mac
        self.flows = icmp.EchoFlows(ctx.flows, ECHO_TIMEOUT)
        self.sockets: dict[int, socket.socket] = {}
        self.sweep_timer = None

    def on_guest_echo(self, inb: Inbound, now: float) -> bool:
        """Relay an echo request; False if ``inb`` is not one."""
        request = icmp.parse_echo_request(inb)
        if request is None:
            return False
        key = icmp.echo_key(request, inb.src)
        host = self.addrmap.to_host(request.dst, 0)
        fd = self.flows.get(key, now)
        if fd is None:
            fd = self._open(key, len(host) == 16, now)
            if fd is None:
                return True
        sock = self.sockets[fd]
        target = socket.inet_ntop(sock.family, host)
        v6 = sock.family == socket.AF_INET6
        try:
            sock.sendto(icmp.echo_request_payload(request, v6), (target, 0))
        except OSError as exc:
            self.loop.counters.add("icmp_send_error")
            self.log.ratelimited("icmp_send", 7, f"ping to {target} failed: {exc.strerror}")
        return True

    def _open(self, key: FlowKey, v6: bool, now: float) -> int | None:
        """A ping socket for flow ``key``, of IPv6 if ``v6`` (the host's
        family, which ``--clat`` makes IPv6 for an IPv4 guest); None when
        refused, the flow table (shared by every protocol) full among them."""
        if self.flows.full():
            self.loop.counters.add("icmp_flows_full")
            return None
        family, proto = ((socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6
                         else (socket.AF_INET, socket.IPPROTO_ICMP))
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC, proto)
        except OSError as exc:
            self.loop.counters.add("icmp_socket_error")
            self.log.once("icmp_socket", WARNING, _socket_failure(exc))
            return None
        try:
            self.outbound.prepare(sock)
        except OSError as exc:
            sock.close()
            self.loop.counters.add("icmp_socket_error")
            self.log.ratelimited("icmp_bind", 4, f"cannot bind ping socket: {exc.strerror}")
            return None
        fd = sock.fileno()
        if not self.flows.add(key, fd, now):
            sock.close()
            self.loop.counters.add("icmp_flows_full")
            return None
        self.sockets[fd] = sock
        self.loop.add_fd(fd, EPOLLIN, self._readable)
        self._schedule_sweep(now)
        return fd

    def _readable(self, fd: int, events: int, now: float) -> None:
        sock = self.sockets[fd]
        key = self.flows.by_handle(fd)
        while key is not None:
            try:
                message = sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.loop.counters.add("icmp_recv_error")
                return
            reply = icmp.parse_echo_reply(message, sock.family == socket.AF_INET6)
            if reply is None:
                continue
            seq, data = reply
            self.send_frame(icmp.echo_reply_frame(self.net, self.guest_mac(), key.peer_addr,
                                                  key.guest_addr, key.guest_port, seq, data))

    def _schedule_sweep(self, now: float) -> None:
        if self.sweep_timer is None:
            self.sweep_timer = self.loop.call_at(now + ECHO_TIMEOUT, self._sweep)

    def _sweep(self, now: float) -> None:
        self.sweep_timer = None
        for fd in self.flows.expired(now):
            sock = self.sockets.pop(fd)
            self.loop.remove_fd(fd)
            sock.close()
        if self.sockets:
            self._schedule_sweep(now)


def _socket_failure(exc: OSError) -> str:
    """Said once: what failed, what to change when it is the sysctl, and
    that the rest are only counted (a guest pings once a second)."""
    hint = ""
    if exc.errno == errno.EACCES:
        hint = ("; net.ipv4.ping_group_range must include our group "
                "(sysctl -w net.ipv4.ping_group_range=\"0 2147483647\")")
    return (f"cannot open a ping socket: {exc.strerror}{hint}; echo requests go unanswered, "
            "further failures are only counted")
