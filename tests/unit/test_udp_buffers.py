"""UDP sockets' receive buffers sized for bursts, and the datagrams the
kernel dropped at a full one counted (SO_MEMINFO).  Real sockets on the
loopback."""

from __future__ import annotations

import socket

from passt_sep.system.portsock import (
    FORCED_RCVBUF_TOTAL,
    UDP_RCVBUF,
    forwarded_receive_buffer,
    grow_receive_buffer,
    receive_drops,
)


def rcvbuf(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def test_a_buffer_grows_and_never_shrinks() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        before = rcvbuf(sock)
        grow_receive_buffer(sock, 1 << 20)
        grown = rcvbuf(sock)
        assert grown > before
        grow_receive_buffer(sock, 4096)                 # less than it has: left alone
        assert rcvbuf(sock) == grown


def test_drops_at_a_full_buffer_are_counted() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        assert receive_drops(receiver) == 0
        sent = 200
        for _ in range(sent):
            sender.sendto(bytes(1000), receiver.getsockname())
        received = 0
        try:
            while receiver.recv(2000):
                received += 1
        except BlockingIOError:
            pass
        assert received < sent
        assert receive_drops(receiver) == sent - received


def test_forwarded_udp_ports_share_the_forced_budget() -> None:
    """A few ports get UDP_RCVBUF each; ``-u all`` gets shares, together
    never more than FORCED_RCVBUF_TOTAL."""
    assert forwarded_receive_buffer(2) == UDP_RCVBUF
    assert forwarded_receive_buffer(0) == UDP_RCVBUF
    for sockets in (2, 8, 9, 1000, 2 * 65535):
        assert forwarded_receive_buffer(sockets) * sockets <= FORCED_RCVBUF_TOTAL
        # a dual-stack socket counts as the two it stands for
        assert forwarded_receive_buffer(sockets, 2) <= 2 * FORCED_RCVBUF_TOTAL // sockets
        assert forwarded_receive_buffer(sockets, 2) <= UDP_RCVBUF
    assert forwarded_receive_buffer(2 * 65535, 2) == 2 * forwarded_receive_buffer(2 * 65535)
