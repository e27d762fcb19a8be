"""Send a msgpack object together with file descriptors over a UNIX socket.

Framing: a 4-byte big-endian length and the msgpack body; the body's
``"nfds"`` key says how many fds travel with it.  The first ``sendmsg``
carries the body and up to ``FDS_PER_MSG`` fds as SCM_RIGHTS; more fds
follow in one-byte ``sendmsg`` calls of up to ``FDS_PER_MSG`` each, because
the kernel caps one message at SCM_MAX_FD (253).  Used for the broker ->
worker handoff, the namespace helpers and the ns socket source, each a
process forked with one end of a socket pair (``fork_peer``).
"""

from __future__ import annotations

import array
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import msgpack

FDS_PER_MSG = 250
MAX_BODY = 16 << 20
_LENGTH = struct.Struct("!I")


class FdPassError(Exception):
    """The peer closed early or sent something that is not our framing."""


def fork_peer(child: Callable[[socket.socket], object]) -> tuple[int, socket.socket]:
    """Fork a process running ``child`` on one end of a new socket pair;
    its pid and the other end.  The child process never returns from here
    (``child`` normally ends it with ``os._exit`` itself)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        ours.close()
        try:
            child(theirs)
        finally:
            os._exit(1)
    theirs.close()
    return pid, ours


def send(sock: socket.socket, obj: dict[str, Any], fds: list[int]) -> None:
    body = msgpack.packb({**obj, "nfds": len(fds)}, use_bin_type=True)
    _sendmsg_all(sock, _LENGTH.pack(len(body)) + body, fds[:FDS_PER_MSG])
    rest = fds[FDS_PER_MSG:]
    for start in range(0, len(rest), FDS_PER_MSG):
        _sendmsg_all(sock, b"F", rest[start:start + FDS_PER_MSG])


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Receive one object and its fds; on error every received fd is closed."""
    fds: list[int] = []
    try:
        (length,) = _LENGTH.unpack(_recv_exact(sock, 4, fds))
        if length > MAX_BODY:
            raise FdPassError("message too large")
        obj = _unpack(_recv_exact(sock, length, fds))
        expected = obj.get("nfds")
        if not isinstance(expected, int) or expected < 0:
            raise FdPassError("message has no fd count")
        while len(fds) < expected:
            _recv_exact(sock, 1, fds)
        if len(fds) != expected:
            raise FdPassError(f"expected {expected} fds, got {len(fds)}")
        return obj, fds
    except BaseException:
        for fd in fds:
            close_quietly(fd)
        raise


def _unpack(body: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FdPassError(f"bad msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise FdPassError("message is not a map")
    return obj


def _sendmsg_all(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sent = sock.sendmsg([data], ancillary)
    if sent < len(data):
        sock.sendall(data[sent:])


def _recv_exact(sock: socket.socket, size: int, fds: list[int]) -> bytes:
    data = bytearray()
    space = socket.CMSG_SPACE(FDS_PER_MSG * 4)
    while len(data) < size:
        chunk, ancillary, _flags, _addr = sock.recvmsg(size - len(data), space)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % 4])
                fds.extend(received)
        if not chunk:
            raise FdPassError("peer closed the socket early")
        data += chunk
    return bytes(data)


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
