"""The setup broker: everything that needs a privilege or a path, once.

Stages: open or create the namespaces (pasta), or bind the guest socket
(passt); open the files and the host's listeners, as whoever started us;
when real root serves a namespace owned by another user namespace, become
an unprivileged user and join that user namespace; learn the host's
network and have the tap created and configured inside (pasta), both from
the netlink helper (``netlink.py``); make what lives in the namespace;
close the jail around itself; fork the worker and hand it the fds; then, in
daemon mode, write the pid file and exit, or in pasta's command mode release
the command and return its exit status.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py's enums cost 1 ms of start-up
import dataclasses
import fcntl
import gc
import os
import resource
import socket
import sys
from collections.abc import Callable
from typing import NoReturn

from .. import clat, nspolicy
from ..config import Config, Mode
from ..handoff import FdEntry, Role
from ..netparams import Network
from ..packet import mac_to_bytes
from ..system import bundle, codecache, linux, nssource, sandbox
from ..system.handoff_io import WorkerStartError
from ..system.log import ERROR, INFO, WARNING, Logger, level_for, startup_block
from . import hostinfo, jail, mac, namespaces, sockets
from .netlink import NetlinkHelper, NetlinkHelperError
from .tap import TapError

NS_GET_USERNS = 0xB701
BROKER_ERRORS = (sockets.SetupError, namespaces.NamespaceError, TapError, jail.JailError,
                 NetlinkHelperError, WorkerStartError, sandbox.AllowlistError)


def run(config: Config, netlink: NetlinkHelper, prelude: namespaces.Prelude | None = None) -> int:
    """Set everything up and start the worker; the caller's exit status.
    A failure is said on standard error and in the ``-l`` file, if it was
    opened by then (the broker opens it first)."""
    log = Logger(_prog(config), level_for(config))
    try:
        return Broker(config, netlink, log, prelude).run()
    except BROKER_ERRORS as exc:
        _say(config, log, ERROR, str(exc))
    except OSError as exc:  # anything not foreseen above: still one line
        where = f" ({exc.filename})" if exc.filename else ""
        _say(config, log, ERROR, f"{exc.strerror or exc}{where}")
    finally:
        if log.file is not None:
            os.close(log.file.fd)
    return 1


def _raise_fd_limit() -> None:
    """Every flow holds a host socket: allow as many as the hard limit does
    (as passt does), so the flow cap, not a default of 1024, is the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _check_interfaces(config: Config) -> None:
    """``-i`` and ``--outbound-if4/6`` name host interfaces: a wrong name
    is an error at start, not a silent fall-back to local mode."""
    for option, name in (("-i", config.interface), ("--outbound-if4", config.outbound_if4),
                         ("--outbound-if6", config.outbound_if6)):
        if name is None:
            continue
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise sockets.SetupError(f"{option} {name}: no such interface on the host") from None
    if config.mode == Mode.PASTA and config.interface == "lo" and not config.ns_ifname:
        raise sockets.SetupError("-i lo: the namespace's interface would be called lo too, "
                                 "which is its loopback: name it with -I")


def _settle_memory() -> None:
    """Before the long-lived processes are forked: every object made so far
    (the imported modules, mostly) goes to the collector's permanent
    generation, where no collection walks it, so that the ns socket source
    and the worker keep sharing its pages with each other; then the
    collector, off during start-up (``cli.main``), runs again for what
    they make."""
    gc.freeze()
    gc.enable()


def _say(config: Config, log: Logger, level: int, message: str) -> None:
    """One line on standard error (errors and warnings whatever ``-q``
    says, as passt's) and in the ``-l`` file once open (``log`` has no
    other target)."""
    if level <= WARNING or not config.quiet:
        label = "warning: " if level == WARNING else ""
        _to_stderr(f"{_prog(config)}: {label}{message}")
    log.log(level, message)


def _print_block(log: Logger, lines: list[str]) -> None:
    """Lines for the user, unprefixed on standard error (as passt prints
    its start-up block), stamped in the ``-l`` file."""
    _to_stderr("\n".join(lines))
    for line in lines:
        log.info(line)


def _to_stderr(text: str) -> None:
    """A caller that closed its end of standard error does not stop the start."""
    try:
        os.write(2, f"{text}\n".encode(errors="replace"))
    except OSError:
        pass


def _prog(config: Config) -> str:
    return "pasta-sep" if config.mode == Mode.PASTA else "passt-sep"


class Broker:
    def __init__(self, config: Config, netlink: NetlinkHelper, log: Logger | None = None,
                 prelude: namespaces.Prelude | None = None) -> None:
        self.config = config
        self.netlink = netlink
        self.log = log or Logger(_prog(config), level_for(config))
        self.host: hostinfo.HostInfo | None = None      # as the netlink helper saw it
        self.prelude = prelude = prelude or namespaces.prelude(config)
        self.entries: list[FdEntry] = []
        self.tap_ifname: str | None = None              # pasta: the tap's name, once made
        self.target: namespaces.Target | None = None
        # the ns socket source, once forked: our child, which ends when the
        # worker does (its socket closes) and is waited for where the worker is
        self.source_pid: int | None = None
        # root of a user namespace someone else made (Podman's) is not "real
        # root": it has nobody to switch to, and nothing on the host to protect
        self.real_root = prelude.real_root
        # files we opened for writing, until the worker serves: removed
        # if start-up fails (the pid file always, the others if made here)
        self.outputs: list[sockets.OutputFile] = []
        self.pid_output: sockets.OutputFile | None = None
        self.socket_path: str | None = None             # a UNIX socket we created
        self.jailed = False
        self.own_userns = prelude.own_userns
        # real root joining another user namespace: who it becomes first
        self.join_as: jail.Identity | None = None
        self.caller = jail.Identity(*prelude.caller)           # before any user namespace

    def run(self) -> int:
        try:
            return self._run()
        except BaseException:
            self._abandon()
            raise

    def _run(self) -> int:
        """The stages, in an order that privileges dictate: the files and the
        host's listeners (ports below 1024) are opened as whoever started us,
        before real root gives up its uid to join a user namespace
        (``_join_owner_userns``); what is made inside the namespace comes
        after the join, which gives the capabilities there.  The command's
        namespace (pasta's command mode) has nothing to join: its tap is
        asked for as soon as it exists, before the worker's code is
        imported (``_import_worker``)."""
        config = self.config
        self._open_log()
        _raise_fd_limit()
        _check_interfaces(config)
        if config.runas:   # an unknown user, or root, fails before anything
            jail.resolve_runas(config.runas, self.real_root)
        if config.mode == Mode.PASTA:
            self._pasta_namespace()
        else:
            self._own_user_namespace()
            self._passt_socket()
        start_worker = self._import_worker()
        worker_filter = sandbox.prepare(
            "worker", frozenset({"vhost-user"}) if config.vhost_user else frozenset())
        waiter_filter = sandbox.prepare("waiter")
        self.source_filter = sandbox.prepare("nssource")
        self._files()
        self._host_forwarding()
        if config.mode == Mode.PASTA and self.target.holder is None:   # else asked for already
            self._join_owner_userns()
            self._request_tap()
        identity = self._jail_identity()
        if identity == self.caller and not self.real_root:
            identity = None         # --runas naming oneself: nothing to switch
        _settle_memory()
        net = self._network()
        config = self.config                # with the NAT64 prefix found
        if config.mode == Mode.PASTA and not config.no_splice:
            self._ns_source(identity, net)
        self._announce(net)
        if config.mode == Mode.PASTA:  # after the tap: the helper brings up the namespace's lo
            self._namespace_forwarding()
        confinement = mac.prepare()                     # needs /proc: before the jail
        jail.close(identity, keep_net_bind=self._needs_low_ports())
        self.jailed = True
        tied = config.foreground or (self.target is not None and self.target.holder is not None)
        worker = start_worker(config, net, self.entries, worker_filter, tied=tied,
                              confinement=confinement,
                              host_tcp_listening=self.netlink.tcp_listening)
        self.entries = []
        self.netlink.reap()     # it exited meanwhile: its exit is no wait of ours
        self._keep_outputs(worker)
        if self.socket_path and not config.quiet:
            _print_block(self.log, _qemu_hint(self.socket_path, config.vhost_user).split("\n"))
        self.socket_path = None
        return self._after_start(worker, waiter_filter)

    def _import_worker(self) -> Callable[..., int]:
        """Import the worker's code, the last import (none after the
        jail) and a third of the broker's CPU: after the command's namespace
        is made and its tap asked for, so that the netlink helper, on the
        other CPU, makes the tap meanwhile; then the install-time caches of
        code go (``codecache``, ``bundle``).  ``start_worker``."""
        from ..worker import main as worker_main
        from .worker_start import start_worker
        worker_main.preload(self.config.vhost_user)
        codecache.release()     # so every class a start makes is made
        bundle.release()
        return start_worker

    # -- pasta ------------------------------------------------------------------
    def _pasta_namespace(self) -> None:
        """Open or create the namespaces (joined later: ``_join_owner_userns``);
        a namespace of our own for the command gets its tap asked for now."""
        config = self.config
        if config.netns or config.target_pid is not None:
            self.target = namespaces.open_existing(config.netns, config.target_pid, config.userns)
            if self.target.pidfd is not None:
                self.entries.append(FdEntry(Role.TARGET_PIDFD, self.target.pidfd))
            self._owner_userns()
        else:                       # started already: ``namespaces.prelude``
            if self.prelude.error is not None:
                raise self.prelude.error
            assert self.prelude.holder is not None
            self.target = namespaces.command_target(self.prelude.holder)
            self.entries.append(FdEntry(Role.COMMAND_PIDFD,
                                        os.pidfd_open(self.target.holder.pid)))
            self._request_tap()

    def _request_tap(self) -> None:
        """Have the netlink helper make the tap in the target namespace,
        persistent in the command's (``netlink._tap``)."""
        assert self.target is not None
        self.netlink.request_tap(self.target.netns_fd, persist=self.target.holder is not None)

    def _network(self) -> Network:
        """The host's network and (pasta) the tap, from the netlink helper,
        asked for last: it has been reading it all along."""
        config = self.config
        self.host = host = hostinfo.HostInfo.from_map(self.netlink.host())
        for warning in host.warnings:
            _say(config, self.log, WARNING, warning)
        if config.clat and not config.nat64_prefix:
            self.config = config = self._discovered_nat64(config)
        net = hostinfo.guest_network(config, host)
        if config.mode != Mode.PASTA:
            self.netlink.close()
            return net
        ifname, mac, fd, inside = self.netlink.tap()
        self.tap_ifname = ifname
        self.entries.append(FdEntry(Role.TAP, fd))
        self.entries += inside
        return dataclasses.replace(net, guest_mac=mac_to_bytes(mac))

    def _discovered_nat64(self, config: Config) -> Config:
        """``--clat`` without a prefix: the one the helper discovered (RFC
        7050), else the well-known one, with a warning."""
        found = self.netlink.nat64
        if found is None:
            found = clat.WELL_KNOWN_PREFIX
            _say(config, self.log, WARNING, "no NAT64 prefix found (no answer for "
                 f"{clat.DISCOVERY_NAME} from the host's resolvers): using {found}")
        elif config.debug:
            _say(config, self.log, INFO, f"NAT64 prefix {found}, discovered")
        return dataclasses.replace(config, nat64_prefix=found)

    def _needs_low_ports(self) -> bool:
        """Keep CAP_NET_BIND_SERVICE for the worker only where it was
        granted (real root: a user namespace of ours grants nothing over
        the host's ports) and may be needed: pasta's ``auto`` binds host
        ports after the jail, whatever the namespace listens on.  Fixed
        ports are bound here, before it."""
        config = self.config
        auto = (not config.no_tcp and config.tcp_ports.mode == "auto") or \
            (not config.no_udp and config.udp_ports.mode == "auto")
        return self.real_root and not self.own_userns and config.mode == Mode.PASTA and auto

    def _jail_identity(self) -> jail.Identity | None:
        """Who the jail makes us: ``--runas`` or nobody for real root in the
        host's user namespace; nobody new once the switch came before a
        join (``_join_owner_userns``)."""
        if self.join_as is not None:
            return None
        return jail.resolve_runas(self.config.runas, self.real_root and not self.own_userns)

    def _ns_source(self, identity: jail.Identity | None, net: Network) -> None:
        """The process that makes sockets inside the namespace for the
        worker (loopback fast path), jailed and filtered like it, serving
        only the ports the forwarding options call for, at the namespace's
        own addresses (``net``) and its loopback where they call for it:
        none at all with every forwarding ``none`` (Podman's), and then it
        is not made."""
        assert self.target is not None
        source_filter = self.source_filter
        policy = nspolicy.for_config(self.config, net)
        if not policy.serves_anything():
            return

        def serve(sock: socket.socket) -> None:
            confinement = mac.prepare()
            jail.close(identity)
            mac.enter(confinement)                      # the worker's profile or domain
            source_filter.load()
            nssource.serve(sock, policy)

        self.source_pid, fd = namespaces.spawn_inside(self.target, serve)
        self.entries.append(FdEntry(Role.NS_SOURCE, fd))

    def _own_user_namespace(self) -> None:
        """Unprivileged: a user namespace of our own gives the capabilities
        the jail needs (and nothing on the host)."""
        if not self.real_root:
            namespaces.create_user_namespace()
            self.own_userns = True

    def _owner_userns(self) -> None:
        """Find the user namespace to join: ``--userns``, else the one that
        owns the target network namespace (joining it gives this process
        capabilities over the namespace, as pasta does); none if we are in
        it already.  Real root also decides now whom to become before it
        joins, and fails now, before opening anything, if that user could
        not join: a uid keeps its host value in any user namespace, and the
        worker must never run as host root."""
        if self.config.netns_only:
            return
        target = self.target
        assert target is not None
        if target.userns_fd is None:
            try:
                owner = fcntl.ioctl(target.netns_fd, NS_GET_USERNS)
            except OSError:
                return
            if namespaces.same_namespace(owner, "user"):
                os.close(owner)
                return
            target.userns_fd = owner
        if self.real_root and not namespaces.same_namespace(target.userns_fd, "user"):
            self.join_as = self._joining_identity(target.userns_fd)

    def _joining_identity(self, userns_fd: int) -> jail.Identity:
        """``--runas``, else the namespace's owner (a rootless container's
        user), else, for a namespace root made, nobody; refused unless it
        is the uid that may join (``namespaces.owner_uid``)."""
        try:
            owner = namespaces.owner_uid(userns_fd)
        except OSError as exc:
            raise namespaces.NamespaceError(
                f"cannot find who owns the user namespace of {self._netns_name()}: "
                f"{exc.strerror}") from None
        runas = self.config.runas
        identity = jail.owner_identity(owner) if owner and not runas else \
            jail.resolve_runas(runas, True)
        assert identity is not None
        if identity.uid == owner:
            return identity
        if owner == 0:
            self._join_refused(identity, "only root may, and the worker never runs as root")
        self._join_refused(identity, f"only its owner, uid {owner}, may; "
                                     "pass --runas the namespace's owner")

    def _join_owner_userns(self) -> None:
        """Join the user namespace found by ``_owner_userns``; real root
        becomes the identity chosen there first, dropping its supplementary
        groups and every capability (joining gives capabilities inside)."""
        target = self.target
        assert target is not None
        if target.userns_fd is None or namespaces.same_namespace(target.userns_fd, "user"):
            return
        try:
            if self.join_as is not None:
                jail.become(self.join_as)
            namespaces.enter_user_namespace(target.userns_fd)
        except OSError as exc:
            if self.join_as is not None:
                self._join_refused(self.join_as, f"{exc.strerror}; "
                                                 "pass --runas the namespace's owner")
            raise namespaces.NamespaceError(
                f"cannot join the namespace's user namespace: {exc.strerror} "
                "(pass --userns, or run as its owner)") from None
        self.own_userns = True

    def _join_refused(self, identity: jail.Identity, reason: str) -> NoReturn:
        raise namespaces.NamespaceError(
            f"cannot join the user namespace owning {self._netns_name()} as uid {identity.uid}: "
            f"{reason}")

    def _netns_name(self) -> str:
        config = self.config
        if config.target_pid is not None:
            return f"/proc/{config.target_pid}/ns/net"
        return (self.target.path if self.target else None) or str(config.netns)

    # -- passt ------------------------------------------------------------------
    def _passt_socket(self) -> None:
        config = self.config
        if config.fd is not None:
            os.set_inheritable(config.fd, False)
            self.entries.append(FdEntry(Role.GUEST_STREAM, os.dup(config.fd)))
            return
        entry, self.socket_path = sockets.unix_listener(config.socket_path)
        self.entries.append(entry)

    # -- common -------------------------------------------------------------------
    def _open_log(self) -> None:
        """``-l`` before anything else, as passt opens its own: whatever
        fails after it is said there too.  The file is kept when start-up
        fails, holding the reason (the pid and capture files go).  The
        worker gets it with the start time its lines count from."""
        path = self.config.log_file
        if not path:
            return
        entry, output = sockets.log_file(path, self.log.start)
        output.release()
        self.entries.append(entry)
        self.log.to_file(fcntl.fcntl(entry.fd, fcntl.F_DUPFD_CLOEXEC, 3), self.config.log_size)
        self.log.header(os.path.realpath(sys.argv[0]))

    def _announce(self, net: Network) -> None:
        """The start-up block, where passt prints its own: standard error
        unless ``-q``, and the ``-l`` file; pasta's command mode leaves the
        terminal to the command unless ``-d`` asks for it."""
        config = self.config
        command_mode = self.target is not None and self.target.holder is not None
        if (config.quiet or command_mode) and not config.debug:
            return
        host = self.host
        templates = (host.v4.ifname if host and host.v4 else None,
                     host.v6.ifname if host and host.v6 else None)
        _print_block(self.log, startup_block(config, net, templates, self.tap_ifname))

    def _host_forwarding(self) -> None:
        """``-t`` and ``-u``: the host's listeners, bound as whoever started
        us, before any identity switch (real root may forward ports below
        1024); with ``--clat`` IPv6 ones even for an IPv4-only guest, which
        IPv6 peers reach over IPv4."""
        config = self.config
        v4, v6 = not config.ipv6_only, not config.ipv4_only or config.clat
        if not config.no_tcp and config.tcp_ports.mode in ("spec", "all"):
            self.entries += sockets.forward_listeners(
                config.tcp_ports, socket.SOCK_STREAM, v4, v6, config.tcp_ports.mode == "all",
                freebind=config.freebind)
        if not config.no_udp and config.udp_ports.mode in ("spec", "all"):
            self.entries += sockets.forward_listeners(
                config.udp_ports, socket.SOCK_DGRAM, v4, v6, config.udp_ports.mode == "all",
                freebind=config.freebind)

    def _namespace_forwarding(self) -> None:
        """``auto`` in either direction: the host's tables too (the
        namespace's come with the tap, with pasta's ``-T`` and ``-U``
        sockets: ``namespaces.forwarding_inside``)."""
        auto = namespaces.auto_protocols(self.config)
        if auto:
            self.entries += sockets.proc_net_tables("host", auto)

    def _files(self) -> None:
        config = self.config
        if config.pcap:
            entry, output = sockets.pcap_file(config.pcap)
            self.entries.append(entry)
            self.outputs.append(output)
        if config.pid_file:
            self.pid_output = sockets.pid_file(config.pid_file)
        if self.target and self.target.path and not config.no_netns_quit:
            self.entries.append(sockets.netns_watch(self.target.path))
        self.entries.append(FdEntry(Role.DEVNULL, os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)))

    def _after_start(self, worker: int, waiter_filter: sandbox.Prepared) -> int:
        """Daemon: return at once.  Command mode and ``-f``: wait for the
        worker, then for the ns socket source, which leaves a moment after
        it: whoever waits for this process finds nothing of it left."""
        holder = self.target.holder if self.target else None
        helpers = [worker] if self.source_pid is None else [worker, self.source_pid]
        if holder is not None:
            return _run_command(holder, helpers, waiter_filter)
        if self.config.foreground:
            _forward_signals(worker)
            return _wait_all(helpers)
        return 0

    def _keep_outputs(self, worker: int) -> None:
        """The worker serves: name it in the pid file; the files are kept,
        and their directories' fds closed (the pid file is left at exit,
        as passt does: systemd and libvirt remove it)."""
        if self.pid_output is not None:
            os.write(self.pid_output.fd, f"{worker}\n".encode())
            os.close(self.pid_output.fd)
            self.outputs.append(self.pid_output)
            self.pid_output = None
        for output in self.outputs:
            output.release()
        self.outputs = []

    def _abandon(self) -> None:
        """Setup failed: leave nothing behind (files go through their
        directories' fds, which work after the jail closed too)."""
        self._remove_outputs()
        if self.socket_path and not self.jailed:
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        for entry in self.entries:
            try:
                os.close(entry.fd)
            except OSError:
                pass
        if self.prelude.holder is not None:     # the target's in command mode
            self.prelude.holder.abandon()
        self.netlink.close(kill=True)

    def _remove_outputs(self) -> None:
        """The pid file (it names no worker yet), and the capture and log
        files that did not exist before; keep the ones that did."""
        doomed = [output for output in self.outputs if output.created]
        if self.pid_output is not None:
            os.close(self.pid_output.fd)
            doomed.append(self.pid_output)
        for output in self.outputs:
            if not output.created:
                output.release()
        for output in doomed:
            try:
                output.remove()
            except OSError as exc:
                _say(self.config, self.log, ERROR, f"cannot remove {output.path}: {exc.strerror}")
        self.outputs, self.pid_output = [], None


def _run_command(holder: namespaces.CommandHolder, helpers: list[int],
                 waiter_filter: sandbox.Prepared) -> NoReturn:
    """pasta's command mode: run the command, return its status once the
    worker has drained its flows and exited, and every other helper
    (``helpers``, the worker first) with it.  From here this process holds
    no fd and no capability, and may only wait and exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    waiter_filter.load()
    holder.release()
    linux.close_range(0)
    status = _wait(holder.pid)
    _wait_all(helpers)
    os._exit(status)  # no interpreter shutdown under the waiter's filter


def _forward_signals(worker: int) -> None:
    """Foreground: the process the caller started stands for the worker, so
    what a supervisor sends it reaches the worker (SIGKILL, which cannot be
    forwarded, reaches it as the parent-death signal)."""
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(worker, signum)
        except ProcessLookupError:
            pass
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)


def _wait_all(pids: list[int]) -> int:
    """Wait for each of ``pids`` in turn; the first one's status."""
    status = _wait(pids[0])
    for pid in pids[1:]:
        _wait(pid)
    return status


def _wait(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code


def _qemu_hint(path: str, vhost_user: bool = False) -> str:
    if vhost_user:
        return (f"UNIX domain socket bound at {path}\n\n"
                "You can start qemu with (the guest's memory must be shared):\n"
                "    qemu-system-x86_64 ... -m 1G -object memory-backend-memfd,id=mem,"
                "size=1G,share=on -numa node,memdev=mem "
                f"-chardev socket,id=c,path={path} -netdev vhost-user,id=v,chardev=c "
                "-device virtio-net-pci,netdev=v")
    return (f"UNIX domain socket bound at {path}\n\n"
            "You can now start qemu (>= 7.2), with:\n"
            "    qemu-system-x86_64 ... -device virtio-net-pci,netdev=s "
            f"-netdev stream,id=s,server=off,addr.type=unix,addr.path={path}")
