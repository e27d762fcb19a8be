"""The ns socket source: sockets made inside the target namespace on request.

A socket belongs to the network namespace it was created in, and the
worker (host namespace, no capabilities, seccomp) can never enter another
one.  So in pasta mode the broker leaves one more small process in the
target namespace, jailed like the worker and under its own allowlist
(``seccomp/nssource.x86_64``), whose only job is to create sockets there
and pass them back.

Request protocol, over a UNIX stream socket pair (the worker's end is the
``ns_source`` fd of the handoff), each message framed by ``fdpass``:

* request ``{"op": "connect", "family": 2|10, "port": N}``: a non-blocking
  TCP socket, ``connect()`` to the namespace's loopback (127.0.0.1 or ::1)
  port N started (``-t`` reached from the host's loopback);
* request ``{"op": "listen", "family": 2|10, "port": N}``: a non-blocking
  TCP socket listening on the namespace's loopback port N (``-T auto``:
  the host started listening on N);
* ``{"op": "udp_connect", ...}`` and ``{"op": "udp_bind", ...}``: the
  same for UDP, a socket connected to (``-u`` from the host's loopback) or
  bound on (``-U auto``) the namespace's loopback port N;
* answer ``{"ok": true}`` with that one fd, or ``{"error": "..."}`` and
  none.

The source answers requests in order and exits when the worker closes its
end.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import NoReturn

from . import fdpass
from .portsock import LISTEN_BACKLOG

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


class NsSourceError(Exception):
    """The namespace side could not make the socket."""


def serve(sock: socket.socket) -> NoReturn:
    """The source's loop (in the target namespace, jailed, filtered)."""
    while True:
        try:
            request, fds = fdpass.receive(sock)
        except (fdpass.FdPassError, OSError):
            os._exit(0)
        for fd in fds:
            os.close(fd)
        answer, out = _answer(request)
        try:
            fdpass.send(sock, answer, out)
        except OSError:
            os._exit(0)
        for fd in out:
            os.close(fd)


def _answer(request: dict) -> tuple[dict, list[int]]:
    op, family, port = request.get("op"), request.get("family"), request.get("port")
    if op not in OPS or family not in LOOPBACK or not isinstance(port, int) \
            or not 0 < port < 65536:
        return {"error": "bad request"}, []
    kind, action = OPS[op]
    try:
        made = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    except OSError as exc:
        return {"error": exc.strerror or str(exc)}, []
    try:
        action(made, family, port)
    except OSError as exc:
        made.close()
        return {"error": exc.strerror or str(exc)}, []
    return {"ok": True}, [made.detach()]


def _connect(made: socket.socket, family: int, port: int) -> None:
    code = made.connect_ex((LOOPBACK[family], port))
    if code not in (0, errno.EINPROGRESS):
        raise OSError(code, os.strerror(code))


def _bind(made: socket.socket, family: int, port: int) -> None:
    made.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    made.bind((LOOPBACK[family], port))


def _listen(made: socket.socket, family: int, port: int) -> None:
    _bind(made, family, port)
    made.listen(LISTEN_BACKLOG)


OPS = {"connect": (socket.SOCK_STREAM, _connect), "listen": (socket.SOCK_STREAM, _listen),
       "udp_connect": (socket.SOCK_DGRAM, _connect), "udp_bind": (socket.SOCK_DGRAM, _bind)}


class NsSource:
    """The worker's side: ask for a socket, get its fd."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)

    def connect(self, family: int, port: int) -> int:
        """A socket connecting to the namespace's loopback ``port``."""
        return self.ask("connect", family, port)

    def listen(self, family: int, port: int) -> int:
        """A socket listening on the namespace's loopback ``port``."""
        return self.ask("listen", family, port)

    def ask(self, op: str, family: int, port: int) -> int:
        """Any of ``OPS``: the socket's fd, or ``NsSourceError``."""
        fdpass.send(self.sock, {"op": op, "family": int(family), "port": port}, [])
        answer, fds = fdpass.receive(self.sock)
        if "error" in answer or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise NsSourceError(answer.get("error", "no socket"))
        return fds[0]
