"""RFC 7050 discovery's I/O (broker/nat64.py) against resolvers on the
loopback: a real UDP exchange, the resolver a thread of the test."""

from __future__ import annotations

import socket
import struct
import threading

from passt_sep.broker.nat64 import discover
from passt_sep.clat import Nat64Prefix

PREFIX = Nat64Prefix.parse("2001:db8:122::/48")


def _answer(query: bytes) -> bytes:
    end = query.index(b"\0", 12) + 5
    out = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 2, 0, 0) + query[12:end]
    for last in (170, 171):
        rdata = PREFIX.synthesize(bytes([192, 0, 0, last]))
        out += b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16) + rdata
    return out


def _resolver(ignore: int, garbage: bool = False) -> tuple[socket.socket, threading.Thread]:
    """A resolver on 127.0.0.1 that drops the first ``ignore`` queries
    (answering garbage first if asked), then answers one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)

    def serve() -> None:
        for _ in range(ignore):
            sock.recvfrom(512)
        query, peer = sock.recvfrom(512)
        if garbage:
            sock.sendto(b"\x00", peer)
            sock.sendto(query[:2] + b"\x81\x83" + query[4:], peer)     # NXDOMAIN
        sock.sendto(_answer(query), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock, thread


def test_discovery_asks_again_until_an_answer_comes() -> None:
    sock, thread = _resolver(ignore=2)
    with sock:
        assert discover(("127.0.0.1",), timeout=3, port=sock.getsockname()[1]) == PREFIX
        thread.join(5)


def test_discovery_skips_answers_it_cannot_use() -> None:
    sock, thread = _resolver(ignore=0, garbage=True)
    with sock:
        assert discover(("127.0.0.1",), timeout=3, port=sock.getsockname()[1]) == PREFIX
        thread.join(5)


def test_a_silent_resolver_gives_no_prefix_in_time() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        assert discover(("127.0.0.1",), timeout=0.4, port=silent.getsockname()[1]) is None


def test_an_unreachable_resolver_is_skipped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert discover(("127.0.0.1",), timeout=0.4, port=port) is None
