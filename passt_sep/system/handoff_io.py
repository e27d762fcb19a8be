"""The handoff's transport: the one message of ``passt_sep.handoff`` and
its fds over the broker's socket pair, in ``fdpass`` framing."""

from __future__ import annotations

import socket

from ..handoff import FdEntry, Handoff, HandoffError, WorkerConfig, decode, encode
from ..netparams import Network
from . import fdpass


class WorkerStartError(Exception):
    """The worker died or refused the handoff before it became ready."""


def send(sock: socket.socket, config: WorkerConfig, network: Network,
         entries: list[FdEntry]) -> None:
    """Send the message and every fd; the caller closes its copies after."""
    fdpass.send(sock, encode(config, network, entries), [e.fd for e in entries])


def receive(sock: socket.socket) -> Handoff:
    """Receive and check the whole handoff; on error no received fd stays open."""
    try:
        message, fds = fdpass.receive(sock)
    except fdpass.FdPassError as exc:
        raise HandoffError(f"handoff: {exc}") from None
    try:
        return decode(message, fds)
    except BaseException:
        for fd in fds:
            fdpass.close_quietly(fd)
        raise
