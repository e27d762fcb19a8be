"""The long-lived translation worker.

Entered in a freshly forked child of the jailed broker.  Order matters:
close every inherited fd but the handoff socket; receive and check the
handoff; set up the loop and the protocol handlers from the manifest; arm
seccomp; tell the broker we are ready; serve.  Everything this module and
its handlers use is imported before the broker closes the jail.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py's enums cost 1 ms of start-up
import os
import socket
from typing import TYPE_CHECKING, NoReturn

from ..config import Mode
from ..handoff import (
    READY,
    Handoff,
    HandoffError,
    ListenerMeta,
    LogMeta,
    NetnsWatchMeta,
    Role,
)
from ..system import handoff_io, linux
from ..system.log import ERROR, INFO, TRACE, Logger, describe_exception
from ..system.sandbox import Prepared
from .context import WorkerContext
from .guest import Capture, StreamLink, TapLink
from .icmp_io import EchoHandler
from .loop import EPOLLIN, Loop
from .nsfwd import HostDiverts, NamespaceForwarding
from .services import GuestServices, TracingReceiver
from .tcp_io import TcpHandler, TcpListener, new_secret
from .udp_io import SendDatagrams, UdpHandler, UdpListener

if TYPE_CHECKING:
    from .vhost_io import VhostUserLink

EXIT_OK = 0
EXIT_FAILURE = 1
DRAIN_SECONDS = 10.0
DRAIN_POLL = 0.05
SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGHUP: "SIGHUP"}


def preload(vhost_user: bool) -> None:
    """Import what only some workers use, for a worker that will: called
    before the jail closes, after which nothing can be imported (a worker
    without vhost-user does not pay for its modules, nor carry them)."""
    if vhost_user:
        from . import vhost_io  # noqa: F401


def run(sock: socket.socket, sandbox: Prepared, prog: str = "passt-sep") -> NoReturn:
    """Worker entry point; never returns.  ``prog`` names the program the
    user started (pasta-sep or passt-sep) in every line."""
    code = EXIT_FAILURE
    log = Logger(prog)
    log.to_fd(2)
    try:
        os.setsid()  # no terminal signals, no controlling tty
        linux.close_all_except({sock.fileno()})
        received = handoff_io.receive(sock)
        worker = Worker(received, log)
        sandbox.load()
        sock.sendall(READY)
        sock.close()
        code = worker.serve()
    except HandoffError as exc:
        log.error(str(exc))
    except BaseException as exc:  # anything else is a bug: say where, exit
        log.error(describe_exception(exc))
    os._exit(code)  # no interpreter shutdown: it could touch a path


class Worker:
    """Owns the loop and wires the handlers from the handoff manifest, in
    dependency order: the context (loop, log, configuration, network, the
    guest link, what derives from them), pasta's diverts, the handlers, the
    namespace's forwarding, the dispatch of the guest's frames; last, the
    link starts delivering to that dispatch."""

    def __init__(self, received: Handoff, log: Logger) -> None:
        self.handoff = received
        self.config = config = received.config
        self.log = log
        self._setup_stdio_and_log()
        self.loop = Loop()
        self.loop.on_error = self._internal_error
        self.loop.spin = config.busy_poll / 1e6
        self.exit_code = EXIT_OK
        capture = Capture(received.fd(Role.PCAP))
        link = self._guest_link(capture, received.network.mtu)
        ctx = WorkerContext.build(self.loop, log, config, received.network, link)
        flows = ctx.flows       # how full the one table is, with the counters
        self.loop.counters.sources.append(lambda: {"flows": len(flows)})
        diverts = HostDiverts(ctx, received) if config.mode is Mode.PASTA else None
        echo = None if config.no_icmp else EchoHandler(ctx)
        udp = None if config.no_udp else UdpHandler(
            ctx, [UdpListener(fd, meta.family, meta.port, meta.target, meta.dual)
                  for fd, meta in self._listeners(Role.UDP_LISTENER)],
            divert=diverts.udp if diverts else None,
            send_datagrams=self._send_datagrams(link, capture))
        self.tcp = None if config.no_tcp else TcpHandler(
            ctx, [TcpListener(fd, meta.family, meta.port, meta.target)    # unmaps IPv4 peers
                  for fd, meta in self._listeners(Role.TCP_LISTENER)], new_secret(),
            divert=diverts.tcp if diverts else None, tso=isinstance(link, TapLink))
        if diverts is not None:
            self.nsfwd = NamespaceForwarding(ctx, received, diverts, self.tcp, udp)
        self.services = GuestServices(ctx, echo, tcp=self.tcp, udp=udp)
        self.link = link
        self._signals()
        self._watch_command()

    # -- setup ------------------------------------------------------------------
    def _setup_stdio_and_log(self) -> None:
        """Standard error in the foreground, with ``-e`` and in pasta's
        command mode, unless a log file takes its place there (as passt's
        do, the foreground writes to both)."""
        config, received = self.config, self.handoff
        self.log.level = config.log_level
        devnull = received.fd(Role.DEVNULL)
        log = received.one(Role.LOG)
        command_mode = received.one(Role.COMMAND_PIDFD) is not None
        keep_stderr = config.stderr or command_mode
        if devnull is not None:
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            if not keep_stderr:
                os.dup2(devnull, 2)
            os.close(devnull)
        if log is not None:
            assert isinstance(log.meta, LogMeta)
            self.log.start = log.meta.start
            self.log.to_file(log.fd, config.log_size)
        if not keep_stderr or (log is not None and not config.stderr):
            self.log.to_fd(None)

    def _guest_link(self, capture: Capture, mtu: int) -> TapLink | StreamLink | VhostUserLink:
        received = self.handoff
        tap = received.fd(Role.TAP)
        if tap is not None:
            return TapLink(self.loop, tap, capture, self.log, mtu)
        listener = received.fd(Role.UNIX_LISTENER)
        if self.config.vhost_user and listener is not None:
            from .vhost_io import VhostUserLink  # preloaded: see ``preload``
            return VhostUserLink(self.loop, capture, self.log, listener, mtu)
        return StreamLink(self.loop, capture, self.log, listener=listener,
                          connected=received.fd(Role.GUEST_STREAM))

    @staticmethod
    def _send_datagrams(link: TapLink | StreamLink | VhostUserLink,
                        capture: Capture) -> SendDatagrams | None:
        """The tap takes batches of datagrams behind one header (USO); not
        when capturing, where every frame must be one the guest sees."""
        if isinstance(link, TapLink) and capture.fd is None:
            return link.send_datagrams
        return None

    def _listeners(self, role: Role) -> list[tuple[int, ListenerMeta]]:
        return [(e.fd, e.meta) for e in self.handoff.by_role(role)
                if isinstance(e.meta, ListenerMeta)]

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
                self.log.info(f"{SIGNAL_NAMES.get(signum, signum)}: exiting")
                self.loop.stop()

    def _watch_command(self) -> None:
        pidfd = self.handoff.fd(Role.COMMAND_PIDFD)
        if pidfd is not None:
            self.loop.add_fd(pidfd, EPOLLIN, self._command_exited)
        watch = self.handoff.one(Role.NETNS_WATCH)
        if watch is not None:
            self.loop.add_fd(watch.fd, EPOLLIN, self._netns_event)
        target = self.handoff.fd(Role.TARGET_PIDFD)
        if target is not None:
            self.loop.add_fd(target, EPOLLIN, self._target_exited)

    def _netns_event(self, fd: int, events: int, now: float) -> None:
        watch = self.handoff.one(Role.NETNS_WATCH)
        assert watch is not None and isinstance(watch.meta, NetnsWatchMeta)
        try:
            names = linux.inotify_names(os.read(fd, 4096))
        except BlockingIOError:
            return
        if watch.meta.name in names:
            self.log.info("the network namespace is gone: exiting")
            self.loop.stop()

    def _target_exited(self, fd: int, events: int, now: float) -> None:
        """PID mode: the process whose namespace we serve is gone."""
        self.loop.remove_fd(fd)
        self.log.info("the target process is gone: exiting")
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

    # -- serving ----------------------------------------------------------------
    def serve(self) -> int:
        """Start the guest link (a guest already there gets its router
        advertisement), then run the loop."""
        receiver = TracingReceiver(self.services, self.log) \
            if self.config.log_level >= TRACE else self.services
        self.link.start(receiver)
        self.loop.run()
        return self.exit_code
