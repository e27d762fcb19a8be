"""A socket on a forwarded port, made one way wherever it is made: by the
broker for ``-t``/``-u``/``-T``/``-U`` and by the worker for ports that
``auto`` forwarding discovers later; UDP sockets' receive buffers, sized
for bursts, and what they dropped."""

from __future__ import annotations

import socket
import struct

SO_BINDTODEVICE = 25
SO_RCVBUFFORCE = 33
SO_MEMINFO = 55
_MEMINFO = struct.Struct("=9I")           # SK_MEMINFO_* (linux/sock_diag.h)
MEMINFO_RCVBUF, MEMINFO_DROPS = 1, 8
LISTEN_BACKLOG = 128
WILDCARD = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}

# Receive buffers of UDP sockets.  A peer's burst waits in the socket until
# the worker reads it; what does not fit is dropped (and counted: the
# kernel's per-socket drop count, read back through SO_MEMINFO).  The
# kernel charges a 1000-byte datagram 2304 bytes and grants twice what is
# asked: UDP_RCVBUF (32 MiB granted) holds 14,500 of them, a burst of
# 10,000 even while the worker gets no CPU.  Unprivileged, the kernel caps
# the request at net.core.rmem_max (granting twice that); with
# CAP_NET_ADMIN (the broker run as root) it is forced past that, for at
# most FORCED_RCVBUF_TOTAL asked (twice that granted) over all the
# broker's forwarded ports (``-u all`` gets shares of it).  The memory is
# only taken while datagrams wait, and the kernel holds all UDP sockets
# together to net.ipv4.udp_mem.
UDP_RCVBUF = 16 << 20
FORCED_RCVBUF_TOTAL = 128 << 20


def forwarded_receive_buffer(sockets: int, families: int = 1) -> int:
    """A forwarded UDP socket's share of FORCED_RCVBUF_TOTAL, at most
    UDP_RCVBUF (a share below a socket's default leaves it as it is):
    ``sockets`` counts one per port and family, and a dual-stack socket
    (``families`` 2) takes the shares of both."""
    return min(UDP_RCVBUF, families * FORCED_RCVBUF_TOTAL // max(sockets, 1))


def grow_receive_buffer(sock: socket.socket, size: int, force: bool = False) -> None:
    """Ask for a receive buffer of ``size`` bytes if the socket has less:
    ``force`` (the broker only) tries past net.core.rmem_max first
    (CAP_NET_ADMIN).  The size is read through SO_MEMINFO, which the
    worker reads anyway, rather than SO_RCVBUF."""
    if _meminfo(sock)[MEMINFO_RCVBUF] >= 2 * size:
        return
    if force:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            return
        except PermissionError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def receive_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for want of room in the socket's receive
    buffer, since it was made (0 if it cannot say)."""
    try:
        return _meminfo(sock)[MEMINFO_DROPS]
    except OSError:
        return 0


def _meminfo(sock: socket.socket) -> tuple[int, ...]:
    return _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))


FREEBIND = {socket.AF_INET: (socket.IPPROTO_IP, 15),       # IP_FREEBIND
            socket.AF_INET6: (socket.IPPROTO_IPV6, 78)}   # IPV6_FREEBIND


def bound_socket(family: int, kind: int, port: int, address: str | None = None,
                 interface: str | None = None, freebind: bool = False,
                 receive_buffer: int = UDP_RCVBUF, force: bool = False,
                 dual: bool = False) -> socket.socket:
    """Non-blocking, listening (TCP) or bound (UDP, with ``receive_buffer``,
    past rmem_max with ``force``) at ``address`` (the wildcard by default) and
    ``port``.  IPv6 sockets take IPv6 only, so that both families can hold
    the same port, unless ``dual``: then this one AF_INET6 socket on
    ``[::]`` takes IPv4 too, its IPv4 peers seen as ``::ffff:a.b.c.d``
    (one fd per port, not two, as passt does), and the bind fails if
    either family's port is taken.  Raises OSError."""
    if dual and (family != socket.AF_INET6 or address):
        raise ValueError("a dual-stack socket is AF_INET6 on the wildcard address")
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(not dual))
        if interface:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        if freebind and address:      # --freebind: an address the host may get later
            sock.setsockopt(*FREEBIND[family], 1)
        sock.bind((address or WILDCARD[family], port))
        if kind == socket.SOCK_STREAM:
            sock.listen(LISTEN_BACKLOG)
        else:
            grow_receive_buffer(sock, receive_buffer, force)
    except OSError:
        sock.close()
        raise
    return sock
