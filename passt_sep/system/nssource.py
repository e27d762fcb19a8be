"""The ns socket source: sockets made inside the target namespace on request.

A socket belongs to the network namespace it was created in, and the
worker (host namespace, no capabilities, seccomp) can never enter another
one.  So in pasta mode the broker leaves one more small process in the
target namespace, jailed like the worker and under its own allowlist
(``seccomp/nssource.x86_64``), whose only job is to create sockets there
and pass them back.

Request protocol, over a UNIX stream socket pair (the worker's end is the
``ns_source`` fd of the handoff), each message framed by ``fdpass``:

* request ``{"op": "connect", "family": 2|10, "address": A, "port": N}``:
  a non-blocking TCP socket, ``connect()`` to address A (raw bytes, 4 or
  16 of them) port N started (``-t`` reached from the host itself).  The
  kernel picks the source: A's own, as A is the namespace's;
* request ``{"op": "listen", "family": 2|10, "address": A, "port": N}``: a
  non-blocking TCP socket listening on A port N (``-T auto``: the host
  started listening on N);
* ``{"op": "udp_connect", ...}`` and ``{"op": "udp_bind", ...}``: the
  same for UDP, a socket connected to (``-u`` from the host itself) or
  bound on (``-U auto``) address A port N;
* answer ``{"ok": true}`` with that one fd, or ``{"error": "..."}`` and
  none.

The worker may be the attacker's, so every request is checked before any
socket is made (:func:`decide`, no I/O): exactly those keys (and
``fdpass``'s ``"nfds": 0``), of those types, a port the forwarding
options let that operation use and an address they let it reach
(``nspolicy``: the namespace's own addresses, its loopback only where
asked for; never any other).  A malformed frame, request or refused port
or address gets an error answer and the source goes on: it answers
requests in order and ends only when the worker closes its end.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import NoReturn

import msgpack

from ..nspolicy import LOOPBACK as LOOPBACK_ADDRESS
from ..nspolicy import Policy
from ..ports import MAX_PORT
from . import fdpass
from .portsock import LISTEN_BACKLOG

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
FIELDS = frozenset({"op", "family", "address", "port", "nfds"})
ADDRESS_SIZE = {socket.AF_INET: 4, socket.AF_INET6: 16}
MAX_REQUEST = 256           # a request's body is some 40 bytes
DISCARD_CHUNK = 65536
_LENGTH = struct.Struct("!I")


class NsSourceError(Exception):
    """The namespace side could not make the socket."""


class RequestError(Exception):
    """A request the source refuses; the message says why, in words."""


class SourceClosed(Exception):
    """The worker closed its end (or the socket broke): the source ends."""


@dataclass(frozen=True)
class Request:
    """One request to the ns socket source, checked."""

    op: str
    family: int
    address: bytes
    port: int


def serve(sock: socket.socket, policy: Policy) -> NoReturn:
    """The source's loop (in the target namespace, jailed, filtered)."""
    while True:
        try:
            answer, out = _next_answer(sock, policy)
        except SourceClosed:
            os._exit(0)
        except Exception as exc:  # a bug, not the worker's: the splice path must not die of it
            answer, out = {"error": f"internal error ({type(exc).__name__})"}, []
        try:
            fdpass.send(sock, answer, out)
        except OSError:
            os._exit(0)
        finally:
            for fd in out:
                os.close(fd)


def _next_answer(sock: socket.socket, policy: Policy) -> tuple[dict, list[int]]:
    try:
        request = decide(read_request(sock), policy)
    except RequestError as exc:
        return {"error": str(exc)}, []
    return make(request)


# -- the frame ------------------------------------------------------------------------

def read_request(sock: socket.socket) -> bytes:
    """The body of the next ``fdpass`` frame.

    The source takes no fds: any that come along are closed at once.  A
    body longer than ``MAX_REQUEST`` is read to its end and dropped
    (``RequestError``), so the next frame is still read in step.
    ``SourceClosed`` at the end of the stream or on a socket error."""
    (length,) = _LENGTH.unpack(_receive(sock, _LENGTH.size))
    if length > MAX_REQUEST:
        left = length
        while left:
            left -= len(_receive(sock, min(left, DISCARD_CHUNK)))
        raise RequestError(f"request of {length} bytes, more than {MAX_REQUEST}")
    return _receive(sock, length)


def _receive(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    space = socket.CMSG_SPACE(fdpass.FDS_PER_MSG * 4)
    while len(data) < size:
        try:
            chunk, ancillary, _flags, _addr = sock.recvmsg(size - len(data), space)
        except OSError as exc:
            raise SourceClosed(str(exc)) from None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                for fd in fds:
                    fdpass.close_quietly(fd)
        if not chunk:
            raise SourceClosed("the worker closed its end")
        data += chunk
    return bytes(data)


# -- the decision (no I/O) -------------------------------------------------------------

def decide(body: bytes, policy: Policy) -> Request:
    """The request in a frame's ``body``, if well formed and allowed by
    ``policy``; else ``RequestError`` saying why."""
    request = _validate(_decode(body))
    if request.port not in policy.ports(request.op):
        raise RequestError(f"{request.op} on port {request.port}: not a forwarded port")
    if request.address not in policy.addresses(request.op):
        shown = socket.inet_ntop(request.family, request.address)
        raise RequestError(f"{request.op} at {shown}: not an address the options allow")
    return request


def _decode(body: bytes) -> object:
    try:
        return msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise RequestError("request is not msgpack") from None


def _validate(message: object) -> Request:
    if not isinstance(message, dict):
        raise RequestError("request is not a map")
    if set(message) != FIELDS:
        raise RequestError("request must have exactly the keys op, family, address, port "
                           "and nfds")
    op, family, address, port, nfds = (message[key] for key in
                                       ("op", "family", "address", "port", "nfds"))
    if type(op) is not str or op not in OPS:
        raise RequestError(f"op must be one of {', '.join(OPS)}")
    if type(family) is not int or family not in ADDRESS_SIZE:
        raise RequestError(f"family must be {int(socket.AF_INET)} or {int(socket.AF_INET6)}")
    if type(address) is not bytes or len(address) != ADDRESS_SIZE[family]:
        raise RequestError("address must be 4 (family 2) or 16 (family 10) raw bytes")
    if type(port) is not int or not 0 < port <= MAX_PORT:
        raise RequestError(f"port must be an integer from 1 to {MAX_PORT}")
    if type(nfds) is not int or nfds != 0:
        raise RequestError("the source takes no fds: nfds must be 0")
    return Request(op, family, address, port)


# -- the socket -------------------------------------------------------------------------

def make(request: Request) -> tuple[dict, list[int]]:
    """The answer to an allowed request, and the socket's fd to send."""
    kind, action = OPS[request.op]
    try:
        made = socket.socket(request.family,
                             kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    except OSError as exc:
        return {"error": exc.strerror or str(exc)}, []
    try:
        action(made, (socket.inet_ntop(request.family, request.address), request.port))
    except OSError as exc:
        made.close()
        return {"error": exc.strerror or str(exc)}, []
    return {"ok": True}, [made.detach()]


def _connect(made: socket.socket, where: tuple[str, int]) -> None:
    code = made.connect_ex(where)
    if code not in (0, errno.EINPROGRESS):
        raise OSError(code, os.strerror(code))


def _bind(made: socket.socket, where: tuple[str, int]) -> None:
    made.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    made.bind(where)


def _listen(made: socket.socket, where: tuple[str, int]) -> None:
    _bind(made, where)
    made.listen(LISTEN_BACKLOG)


OPS = {"connect": (socket.SOCK_STREAM, _connect), "listen": (socket.SOCK_STREAM, _listen),
       "udp_connect": (socket.SOCK_DGRAM, _connect), "udp_bind": (socket.SOCK_DGRAM, _bind)}


class NsSource:
    """The worker's side: ask for a socket, get its fd."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)

    def connect(self, family: int, address: bytes, port: int) -> int:
        """A socket connecting to ``address`` (raw) ``port`` in the namespace."""
        return self.ask("connect", family, address, port)

    def listen(self, family: int, port: int) -> int:
        """A socket listening on the namespace's loopback ``port``."""
        return self.ask("listen", family, LOOPBACK_ADDRESS[family], port)

    def ask(self, op: str, family: int, address: bytes, port: int) -> int:
        """Any of ``OPS``: the socket's fd, or ``NsSourceError``."""
        fdpass.send(self.sock, {"op": op, "family": int(family), "address": address,
                                "port": port}, [])
        answer, fds = fdpass.receive(self.sock)
        if "error" in answer or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise NsSourceError(answer.get("error", "no socket"))
        return fds[0]
