"""pasta's forwarding between the host and the namespace, wired from the
handoff: the loopback splice paths (TCP and UDP), ``-T``/``-U`` sockets
the broker made on the namespace's loopback, and ``auto`` both ways for
both protocols.  Nothing here runs in passt mode."""

from __future__ import annotations

import socket

from ..config import Config
from ..fwd import is_loopback
from ..handoff import Handoff
from ..log import Logger
from ..netparams import Network
from ..nssource import NsSource
from .fwd_io import AutoForwarding, Direction, host_socket
from .loop import Loop
from .splice_io import LocalSplicer, NamespaceListeners
from .tcp_io import Listener, TcpHandler
from .udp_io import UdpHandler, UdpListener
from .udp_splice_io import UdpRelay, connect_host_loopback


class NamespaceForwarding:
    def __init__(self, loop: Loop, log: Logger, config: Config, handoff: Handoff, net: Network,
                 tcp: TcpHandler | None, udp: UdpHandler | None) -> None:
        self.loop, self.log, self.config, self.handoff = loop, log, config, handoff
        self.tcp, self.udp = tcp, udp
        entry = handoff.one("ns_source")
        self.source = NsSource(entry.fd) if entry else None
        self.families = [f for f, params in ((socket.AF_INET, net.ipv4),
                                             (socket.AF_INET6, net.ipv6)) if params is not None]
        self.outward = NamespaceListeners(loop, log) if tcp else None
        self.relay = UdpRelay(loop, log, config.max_flows) if udp else None
        self._splice(net)
        self.static_ns_tcp = self._static("tcp_ns_listener", self._add_tcp_ns)
        self.static_ns_udp = self._static("udp_ns_listener", self._add_udp_ns)
        self.autos = [a for a in (self._auto_tcp(), self._auto_udp()) if a is not None]

    # -- the loopback fast paths --------------------------------------------------------
    def _splice(self, net: Network) -> None:
        if self.source is None:
            return
        if self.tcp is not None:
            own = {p.addr for p in (net.ipv4, net.ipv6) if p is not None}
            self.tcp.divert = LocalSplicer(self.loop, self.source, own, self.log)
        if self.udp is not None:
            self.udp.divert = self._udp_from_host_loopback

    def _udp_from_host_loopback(self, bound: socket.socket, peer: tuple, payload: memoryview,
                                target: int, now: float) -> bool:
        address = socket.inet_pton(bound.family, peer[0].split("%")[0])
        if not is_loopback(address) or self.relay is None or self.source is None:
            return False
        source = self.source
        self.relay.forward(bound, peer, payload, target,
                           lambda family, port: source.ask("udp_connect", family, port), now)
        return True

    # -- -T, -U -------------------------------------------------------------------------
    def _static(self, role: str, add) -> set[int]:
        ports = set()
        for entry in self.handoff.by_role(role):
            add(entry.fd, entry.meta["target"])
            ports.add(entry.meta["port"])
        return ports

    def _add_tcp_ns(self, fd: int, target: int) -> None:
        assert self.outward is not None
        self.outward.add(fd, target)

    def _add_udp_ns(self, fd: int, target: int) -> None:
        assert self.relay is not None
        self.relay.add(fd, target, connect_host_loopback)

    # -- auto ---------------------------------------------------------------------------
    def _tables(self, protocol: str) -> dict[str, list[int]]:
        tables: dict[str, list[int]] = {}
        for entry in self.handoff.by_role("proc_net"):
            if entry.meta["table"].startswith(protocol):
                tables.setdefault(entry.meta["side"], []).append(entry.fd)
        return tables

    def _static_host(self, role: str) -> set[int]:
        return {e.meta["port"] for e in self.handoff.by_role(role)}

    def _auto_tcp(self) -> AutoForwarding | None:
        tcp, outward, config = self.tcp, self.outward, self.config
        tables = self._tables("tcp")
        if tcp is None or outward is None or not tables:
            return None
        static_host = self._static_host("tcp_listener")
        directions: list[Direction] = []
        inward = outward_dir = None
        if config.tcp_ports.mode == "auto":
            def open_inward(family: int, port: int) -> int:
                fd = host_socket(family, socket.SOCK_STREAM, port)
                tcp.add_listener(Listener(fd, family, port, port))
                return fd
            inward = Direction("ns", open_inward, tcp.remove_listener,
                               lambda: self.static_ns_tcp | _ports(outward_dir))
            directions.append(inward)
        if config.tcp_ns.mode == "auto" and self.source is not None:
            source = self.source

            def open_outward(family: int, port: int) -> int:
                fd = source.listen(family, port)
                outward.add(fd, port)
                return fd
            outward_dir = Direction("host", open_outward, outward.remove,
                                    lambda: static_host | _ports(inward))
            directions.append(outward_dir)
        return AutoForwarding(self.loop, self.log, tables, False, self.families, directions)

    def _auto_udp(self) -> AutoForwarding | None:
        udp, relay, config = self.udp, self.relay, self.config
        tables = self._tables("udp")
        if udp is None or relay is None or not tables:
            return None
        static_host = self._static_host("udp_listener")
        directions: list[Direction] = []
        inward = outward_dir = None
        if config.udp_ports.mode == "auto":
            def open_inward(family: int, port: int) -> int:
                fd = host_socket(family, socket.SOCK_DGRAM, port)
                udp.add_listener(UdpListener(fd, family, port, port))
                return fd
            inward = Direction("ns", open_inward, udp.remove_listener,
                               lambda: self.static_ns_udp | _ports(outward_dir))
            directions.append(inward)
        if config.udp_ns.mode == "auto" and self.source is not None:
            source = self.source

            def open_outward(family: int, port: int) -> int:
                fd = source.ask("udp_bind", family, port)
                relay.add(fd, port, connect_host_loopback)
                return fd
            outward_dir = Direction("host", open_outward, relay.remove,
                                    lambda: static_host | udp.bound_ports() | _ports(inward))
            directions.append(outward_dir)
        return AutoForwarding(self.loop, self.log, tables, True, self.families, directions)


def _ports(direction: Direction | None) -> set[int]:
    return set(direction.forwarded) if direction is not None else set()
