"""The long-lived translation worker.

Entered in a freshly forked child of the jailed broker.  Order matters:
close every inherited fd but the handoff socket; receive and check the
handoff; set up the loop and the protocol handlers from the manifest; arm
seccomp; tell the broker we are ready; serve.  Everything this module and
its handlers use is imported before the broker closes the jail.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import NoReturn

from .. import handoff, linux
from ..config import Config
from ..fwd import AddressMap
from ..handoff import Handoff, HandoffError
from ..log import DEBUG, ERROR, INFO, TRACE, WARNING, Logger, describe_exception
from ..sandbox import Prepared
from .guest import Capture, StreamLink, TapLink
from .icmp_io import EchoHandler
from .loop import EPOLLIN, Loop
from .nsfwd import NamespaceForwarding
from .outbound import Outbound
from .services import GuestServices
from .tcp_io import TcpHandler, TcpListener, new_secret
from .udp_io import UdpHandler, UdpListener

EXIT_OK = 0
EXIT_FAILURE = 1
DRAIN_SECONDS = 10.0
DRAIN_POLL = 0.05


def run(sock: socket.socket, sandbox: Prepared) -> NoReturn:
    """Worker entry point; never returns."""
    code = EXIT_FAILURE
    log = Logger("passt-sep")
    log.to_fd(2)
    try:
        os.setsid()  # no terminal signals, no controlling tty
        linux.close_all_except({sock.fileno()})
        received = handoff.receive(sock)
        worker = Worker(received, log)
        sandbox.load()
        sock.sendall(handoff.READY)
        sock.close()
        code = worker.serve()
    except HandoffError as exc:
        log.error(str(exc))
    except BaseException as exc:  # anything else is a bug: say where, exit
        log.error(describe_exception(exc))
    os._exit(code)  # no interpreter shutdown: it could touch a path


def _log_level(config: Config) -> int:
    if config.trace:
        return TRACE
    if config.debug:
        return DEBUG
    return WARNING if config.quiet else INFO


class Worker:
    """Owns the loop and wires the handlers from the handoff manifest."""

    def __init__(self, received: Handoff, log: Logger) -> None:
        self.config = config = received.config
        self.net = received.network
        self.handoff = received
        self.log = log
        self._setup_stdio_and_log()
        self.loop = Loop()
        self.loop.on_error = self._internal_error
        self.exit_code = EXIT_OK
        capture = Capture(self._fd("pcap"))
        self.link = self._guest_link(capture)
        addrmap = self._address_map()
        outbound = Outbound.from_config(config)
        echo = None if config.no_icmp else EchoHandler(
            self.loop, self.net, addrmap, self.link.send, lambda: self.services.mac(), log,
            config.max_flows, outbound)
        udp_handler = None if config.no_udp else UdpHandler(
            self.loop, self.net, addrmap, self.link.send, lambda: self.services.mac(), log,
            config.max_flows, self._udp_listeners(), verify_checksums=config.mode == "passt",
            outbound=outbound, send_datagrams=self._send_datagrams(capture))
        self.tcp = None if config.no_tcp else TcpHandler(
            self.loop, self.net, addrmap, self.link.send, lambda: self.services.mac(), log,
            config.max_flows, self._tcp_listeners(), new_secret(),
            verify_checksums=config.mode == "passt", outbound=outbound,
            tso=isinstance(self.link, TapLink))
        if config.mode == "pasta":
            self.nsfwd = NamespaceForwarding(self.loop, log, config, received, self.net,
                                             self.tcp, udp_handler)
        self.services = GuestServices(self.loop, self.net, config, log, self.link.send, echo,
                                      tcp=self.tcp, udp=udp_handler)
        self.link.on_frame = self.services.on_frame
        self._signals()
        self._watch_command()

    # -- setup ------------------------------------------------------------------
    def _fd(self, role: str) -> int | None:
        entry = self.handoff.one(role)
        return entry.fd if entry else None

    def _setup_stdio_and_log(self) -> None:
        self.log.level = _log_level(self.config)
        devnull = self._fd("devnull")
        log_fd = self._fd("log")
        command_mode = self.handoff.one("command_pidfd") is not None
        keep_stderr = self.config.foreground or self.config.stderr or command_mode
        if devnull is not None:
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            if not keep_stderr:
                os.dup2(devnull, 2)
            os.close(devnull)
        if log_fd is not None:
            self.log.to_fd(log_fd, self.config.log_size)
        elif not keep_stderr:
            self.log.to_fd(None)

    def _guest_link(self, capture: Capture) -> TapLink | StreamLink:
        tap = self._fd("tap")
        if tap is not None:
            return TapLink(self.loop, tap, capture, self.log, self.net.mtu)
        link = StreamLink(self.loop, capture, self.log, listener=self._fd("unix_listener"),
                          connected=self._fd("guest_stream"))
        link.on_connect = lambda: self.services.announce()
        link.on_disconnect = self._guest_gone
        return link

    def _send_datagrams(self, capture: Capture):
        """The tap takes batches of datagrams behind one header (USO); not
        when capturing, where every frame must be one the guest sees."""
        if isinstance(self.link, TapLink) and capture.fd is None:
            return self.link.send_datagrams
        return None

    def _tcp_listeners(self) -> list[TcpListener]:
        return [TcpListener(e.fd, e.meta["family"], e.meta["port"], e.meta["target"])
                for e in self.handoff.by_role("tcp_listener")]

    def _udp_listeners(self) -> list[UdpListener]:
        return [UdpListener(e.fd, e.meta["family"], e.meta["port"], e.meta["target"])
                for e in self.handoff.by_role("udp_listener")]

    def _address_map(self) -> AddressMap:
        config, net = self.config, self.net
        return AddressMap.build(
            gateway4=net.ipv4.gateway if net.ipv4 else None,
            gateway6=net.ipv6.gateway if net.ipv6 else None,
            no_map_gw=config.no_map_gw, map_host_loopback=config.map_host_loopback,
            map_guest_addr=config.map_guest_addr,
            host_addr4=net.ipv4.addr if net.ipv4 else None,
            host_addr6=net.ipv6.addr if net.ipv6 else None,
            dns_forward=config.dns_forward, dns_servers=net.host_resolvers)

    def _signals(self) -> None:
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        self._wake = (wake_read, wake_write)
        signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: None)
        signal.signal(signal.SIGUSR1, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.loop.add_fd(wake_read.fileno(), EPOLLIN, self._on_signal)

    def _on_signal(self, fd: int, events: int, now: float) -> None:
        try:
            received = self._wake[0].recv(64)
        except BlockingIOError:
            return
        for signum in received:
            if signum == signal.SIGUSR1:
                self.log.log(INFO, f"counters: {self.loop.counters.snapshot()}")
            else:
                self.log.info(f"{signal.Signals(signum).name}: exiting")
                self.loop.stop()

    def _watch_command(self) -> None:
        pidfd = self._fd("command_pidfd")
        if pidfd is not None:
            self.loop.add_fd(pidfd, EPOLLIN, self._command_exited)
        watch = self.handoff.one("netns_watch")
        if watch is not None:
            self.loop.add_fd(watch.fd, EPOLLIN, self._netns_event)

    def _netns_event(self, fd: int, events: int, now: float) -> None:
        watch = self.handoff.one("netns_watch")
        assert watch is not None
        try:
            names = linux.inotify_names(os.read(fd, 4096))
        except BlockingIOError:
            return
        if watch.meta["name"] in names:
            self.log.info("the network namespace is gone: exiting")
            self.loop.stop()

    def _command_exited(self, fd: int, events: int, now: float) -> None:
        """The command is gone: let open TCP flows drain (bounded), then exit,
        so that everything it wrote reaches its peers."""
        self.loop.remove_fd(fd)
        self._drain(now, now + DRAIN_SECONDS)

    def _drain(self, now: float, give_up: float) -> None:
        if self.tcp is None or self.tcp.active_flows() == 0 or now >= give_up:
            self.loop.stop()
            return
        self.loop.call_at(now + DRAIN_POLL, lambda later: self._drain(later, give_up))

    def _internal_error(self, exc: Exception) -> None:
        self.log.ratelimited("internal_error", ERROR, f"internal error: {describe_exception(exc)}")

    def _guest_gone(self) -> None:
        if self.config.one_off:
            self.loop.stop()
        elif self.tcp is not None:  # the next guest starts afresh
            self.tcp.reset_all()

    # -- serving ----------------------------------------------------------------
    def serve(self) -> int:
        self.services.announce()
        self.loop.run()
        self._remove_pid_file()
        return self.exit_code

    def _remove_pid_file(self) -> None:
        entry = self.handoff.one("pidfile_dir")
        if entry is None:
            return
        try:
            os.unlink(entry.meta["name"], dir_fd=entry.fd)
        except OSError:
            pass
