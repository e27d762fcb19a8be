"""A socket on a forwarded port, made one way wherever it is made: by the
broker for ``-t``/``-u``/``-T``/``-U`` and by the worker for ports that
``auto`` forwarding discovers later."""

from __future__ import annotations

import socket

SO_BINDTODEVICE = 25
LISTEN_BACKLOG = 128
WILDCARD = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


FREEBIND = {socket.AF_INET: (socket.IPPROTO_IP, 15),       # IP_FREEBIND
            socket.AF_INET6: (socket.IPPROTO_IPV6, 78)}   # IPV6_FREEBIND


def bound_socket(family: int, kind: int, port: int, address: str | None = None,
                 interface: str | None = None, freebind: bool = False) -> socket.socket:
    """Non-blocking, listening (TCP) or bound (UDP) at ``address`` (the
    wildcard by default) and ``port``; IPv6 sockets take IPv6 only, so that
    both families can hold the same port.  Raises OSError."""
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if interface:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        if freebind and address:      # --freebind: an address the host may get later
            sock.setsockopt(*FREEBIND[family], 1)
        sock.bind((address or WILDCARD[family], port))
        if kind == socket.SOCK_STREAM:
            sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock
