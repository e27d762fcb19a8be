"""pasta's forwarding between the host and the namespace, wired from the
handoff: the loopback splice paths (TCP and UDP), ``-T``/``-U`` sockets
the broker made on the namespace's loopback, and ``auto`` both ways for
both protocols.  Nothing here runs in passt mode.

Two parts, built around the TCP and UDP handlers: ``HostDiverts`` before
them (they take its diverts: what comes from the host itself is spliced,
not made into frames), ``NamespaceForwarding`` after (it adds listeners
to them)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from ..fwd import is_loopback_text, text_family, unmapped_text
from ..handoff import Handoff, ListenerMeta, ProcNetMeta, Role
from ..nspolicy import LOOPBACK as LOOPBACK_ADDRESS
from ..packet import address_text
from ..system.nssource import NsSource
from .context import WorkerContext
from .fwd_io import AutoDirection, AutoForwarding, Close, Open, OpenDual, host_socket
from .splice_io import Landing, LocalSplicer, NamespaceListeners
from .tcp_io import TcpHandler, TcpListener
from .udp_io import UdpHandler, UdpListener
from .udp_splice_io import UdpRelay, connect_host_loopback


class HostDiverts:
    """The loopback fast paths, for the handlers to take: ``tcp`` and
    ``udp`` (None without the ns socket source, ``--no-splice``); ``relay``,
    the UDP relay they share with ``-U`` and ``auto``."""

    def __init__(self, ctx: WorkerContext, handoff: Handoff) -> None:
        config, net = ctx.config, ctx.net
        entry = handoff.one(Role.NS_SOURCE)
        self.source = NsSource(entry.fd) if entry else None
        self.relay = None if config.no_udp else UdpRelay(ctx.loop, ctx.log, ctx.flows)
        # the host's own address is the namespace's too: a peer there could
        # not be answered over the tap, so it is spliced like loopback
        own = {family: p.addr for family, p in ((socket.AF_INET, net.ipv4),
                                                (socket.AF_INET6, net.ipv6)) if p is not None}
        self.loop = ctx.loop
        self.landing = Landing(own, config.host_lo_to_ns_lo)
        self.own_text = {address_text(a) for a in own.values()}
        source = self.source
        self.tcp = LocalSplicer(ctx.loop, source, self.landing, ctx.log, ctx.flows) \
            if source is not None and not config.no_tcp else None
        self.udp = self._udp_from_host_itself if source is not None and self.relay else None

    def _udp_from_host_itself(self, bound: socket.socket, peer: tuple, payload: memoryview,
                              target: int, now: float) -> bool:
        if self.relay is None or self.source is None:
            return False
        host = unmapped_text(peer[0])                   # from a dual-stack socket
        from_loopback = is_loopback_text(host)
        if not (from_loopback or host in self.own_text):
            return False
        address = self.landing.address(text_family(host), from_loopback)
        if address is None:
            self.loop.counters.add("udp_splice_no_address")
            return True
        source = self.source
        self.relay.forward(
            bound, peer, payload, target,
            lambda family, port: source.ask("udp_connect", family, address, port), now)
        return True


class NamespaceForwarding:
    """``-T``, ``-U`` and ``auto``, once the handlers exist."""

    def __init__(self, ctx: WorkerContext, handoff: Handoff, diverts: HostDiverts,
                 tcp: TcpHandler | None, udp: UdpHandler | None) -> None:
        self.loop, self.log, self.config, self.handoff = ctx.loop, ctx.log, ctx.config, handoff
        self.tcp, self.udp = tcp, udp
        self.source, self.relay = diverts.source, diverts.relay
        self.families = [f for f, params in ((socket.AF_INET, ctx.net.ipv4),
                                             (socket.AF_INET6, ctx.net.ipv6))
                         if params is not None]
        self.outward = NamespaceListeners(ctx.loop, ctx.log, ctx.flows) if tcp else None
        self.static_ns_tcp = self._static(Role.TCP_NS_LISTENER, self._add_tcp_ns)
        self.static_ns_udp = self._static(Role.UDP_NS_LISTENER, self._add_udp_ns)
        self.autos = [a for a in (self._auto_tcp(), self._auto_udp()) if a is not None]

    # -- -T, -U -------------------------------------------------------------------------
    def _static(self, role: Role, add) -> set[int]:
        ports = set()
        for entry in self.handoff.by_role(role):
            meta = entry.meta
            assert isinstance(meta, ListenerMeta)
            add(entry.fd, meta.target)
            ports.add(meta.port)
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
        for entry in self.handoff.by_role(Role.PROC_NET):
            meta = entry.meta
            assert isinstance(meta, ProcNetMeta)
            if meta.table.startswith(protocol):
                tables.setdefault(meta.side, []).append(entry.fd)
        return tables

    def _static_host(self, role: Role) -> set[int]:
        return {e.meta.port for e in self.handoff.by_role(role)
                if isinstance(e.meta, ListenerMeta)}

    def _auto_tcp(self) -> AutoForwarding | None:
        tcp, outward, source, config = self.tcp, self.outward, self.source, self.config
        if tcp is None or outward is None:
            return None

        def open_inward(family: int, port: int, dual: bool = False) -> int:
            fd = host_socket(family, socket.SOCK_STREAM, port, dual)
            tcp.add_listener(TcpListener(fd, family, port, port))
            return fd

        def open_outward(family: int, port: int) -> int:
            assert source is not None
            fd = source.listen(family, port)
            outward.add(fd, port)
            return fd

        static_host = self._static_host(Role.TCP_LISTENER)
        return self._auto(
            "tcp", (open_inward, tcp.remove_listener) if config.tcp_auto else None,
            (open_outward, outward.remove) if config.tcp_ns_auto and source else None,
            self.static_ns_tcp, lambda: static_host,
            lambda port: open_inward(socket.AF_INET6, port, dual=True),
            None if config.host_tcp_listening is None else frozenset(config.host_tcp_listening))

    def _auto_udp(self) -> AutoForwarding | None:
        udp, relay, source, config = self.udp, self.relay, self.source, self.config
        if udp is None or relay is None:
            return None

        def open_inward(family: int, port: int, dual: bool = False) -> int:
            fd = host_socket(family, socket.SOCK_DGRAM, port, dual)
            udp.add_listener(UdpListener(fd, family, port, port, dual))
            return fd

        def open_outward(family: int, port: int) -> int:
            assert source is not None
            fd = source.ask("udp_bind", family, LOOPBACK_ADDRESS[family], port)
            relay.add(fd, port, connect_host_loopback)
            return fd

        static_host = self._static_host(Role.UDP_LISTENER)
        return self._auto(
            "udp", (open_inward, udp.remove_listener) if config.udp_auto else None,
            (open_outward, relay.remove) if config.udp_ns_auto and source else None,
            self.static_ns_udp, lambda: static_host | udp.bound_ports(),
            lambda port: open_inward(socket.AF_INET6, port, dual=True))

    def _auto(self, protocol: str, inward: tuple[Open, Close] | None,
              outward: tuple[Open, Close] | None, static_ns: set[int],
              host_ours: Callable[[], set[int]], inward_dual: OpenDual,
              host_known: frozenset[int] | None = None) -> AutoForwarding | None:
        """``inward`` follows the namespace's table (open, close on the
        host; ``inward_dual``, one socket for both families), ``outward``
        the host's (open, close in the namespace, on its loopback: one
        socket per family); each leaves alone the ports the other holds
        for us.  ``host_known``: the host's listeners when the broker
        started, if it read them."""
        tables = self._tables(protocol)
        if not tables or (inward is None and outward is None):
            return None
        directions: list[AutoDirection] = []
        inward_dir = outward_dir = None
        if inward is not None:
            fresh = self.handoff.one(Role.COMMAND_PIDFD) is not None
            inward_dir = AutoDirection("ns", *inward, lambda: static_ns | _ports(outward_dir),
                                       known=frozenset() if fresh else None,
                                       open_dual=inward_dual)
            directions.append(inward_dir)
        if outward is not None:
            outward_dir = AutoDirection("host", *outward, lambda: host_ours() | _ports(inward_dir),
                                        known=host_known)
            directions.append(outward_dir)
        return AutoForwarding(self.loop, self.log, tables, protocol == "udp", self.families,
                              directions)


def _ports(direction: AutoDirection | None) -> set[int]:
    return set(direction.forwarded) if direction is not None else set()
