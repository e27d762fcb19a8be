"""``-o/--outbound`` and ``--outbound-if4/6``: where the host sockets that
carry the guest's traffic (TCP, UDP, ping) leave from.

By default the kernel picks the source address and interface, exactly as
for any local program.  With these options every such socket is bound to
the interface (SO_BINDTODEVICE, allowed without privilege on an unbound
socket since Linux 5.7) and then to the address, before it connects.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ..handoff import WorkerConfig
from ..system.portsock import SO_BINDTODEVICE


@dataclass(frozen=True)
class Outbound:
    """Where outbound sockets bind: ``--outbound`` and ``--outbound-if``."""

    address4: str | None = None
    address6: str | None = None
    ifname4: str | None = None
    ifname6: str | None = None

    @classmethod
    def from_config(cls, config: WorkerConfig) -> Outbound:
        return cls(config.outbound4, config.outbound6, config.outbound_if4, config.outbound_if6)

    def address(self, family: int) -> str | None:
        return self.address6 if family == socket.AF_INET6 else self.address4

    def prepare(self, sock: socket.socket, port: int | None = 0) -> None:
        """Bind to the interface, then to the address (and ``port``; None:
        the caller binds the port itself, with :meth:`address`)."""
        ifname = self.ifname6 if sock.family == socket.AF_INET6 else self.ifname4
        if ifname:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
        address = self.address(sock.family)
        if address and port is not None:
            sock.bind((address, port))


DEFAULT_OUTBOUND = Outbound()   # the kernel chooses
