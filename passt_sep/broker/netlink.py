"""The netlink helper: the one broker process that speaks rtnetlink.

Forked as soon as the options are parsed, it imports pyroute2's message
classes (``netconf``; some 15 ms) and reads the host's network while the
broker, on the other CPU, imports the worker and makes the namespaces.  In
pasta mode the helper then enters the target namespace, creates the tap
there and configures it, and makes the namespace's side of pasta's
forwarding options, while the broker opens the other fds.  Nothing
else imports pyroute2, so only this short-lived process pays for it.  It
gets the parsed options with the fork: nothing is parsed twice.

One exchange each way over a socket pair, in ``fdpass`` framing:

* helper -> broker: ``{"host": HostInfo.to_map(), "nat64": prefix,
  "tcp_listening": ports}``, the NAT64 prefix ``--clat`` discovered
  (``nat64.py``), or None; for pasta's ``-T auto``, the host's listening
  TCP ports (``netconf.listening_tcp_ports``), or None;
* broker -> helper (pasta mode; otherwise the broker just closes its end):
  ``{"tap": true, "persist": bool}`` with the target's network and user
  namespace fds;
* helper -> broker: ``{"ifname": ..., "mac": ..., "entries": [[role, meta],
  ...]}`` with the tap's fd, then the fds of pasta's ``-T``/``-U`` sockets
  and ``auto`` tables made in the namespace (``forwarding_inside``).

Either reply may be ``{"error": message}`` instead.
"""

from __future__ import annotations

import fcntl
import os
import socket
from typing import TYPE_CHECKING

from ..config import Config, Mode
from ..system import codecache, fdpass

if TYPE_CHECKING:
    from ..handoff import FdEntry

TUNSETPERSIST = 0x400454CB


class NetlinkHelperError(Exception):
    """The helper could not read the host or set up the tap: its reason."""


class NetlinkHelper:
    """The broker's end: ask for the host, then for the tap."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid: int | None = pid
        self.sock: socket.socket | None = sock
        self.nat64: str | None = None       # the discovered NAT64 prefix, with host()
        self.tcp_listening: list[int] | None = None   # the host's listening ports, with host()

    @classmethod
    def start(cls, config: Config) -> NetlinkHelper:
        """Fork the helper for these options."""
        from . import hostinfo, namespaces, sockets, tap  # noqa: F401  # loaded once, shared
        return cls(*fdpass.fork_peer(lambda theirs: _helper(config, theirs)))

    def host(self) -> dict:
        """The host's network, as ``HostInfo.to_map`` gives it."""
        reply, _ = self._receive()
        if "error" in reply:
            raise NetlinkHelperError(f"cannot read the host's network: {reply['error']}")
        self.nat64 = reply.get("nat64")
        self.tcp_listening = reply.get("tcp_listening")
        return reply["host"]

    def request_tap(self, netns_fd: int, persist: bool = False) -> None:
        """Start creating the tap in network namespace ``netns_fd``, entered
        through the user namespace this process is in now (ours, or the
        namespace owner's).  ``persist``: only for a namespace that goes
        away with the command (see ``_tap``)."""
        assert self.sock is not None
        userns_fd = os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fdpass.send(self.sock, {"tap": True, "persist": persist}, [netns_fd, userns_fd])
        finally:
            os.close(userns_fd)

    def tap(self) -> tuple[str, str, int, list[FdEntry]]:
        """The tap's name, MAC and fd, once the helper has set it up, and
        what it made inside the namespace for the forwarding options."""
        reply, fds = self._receive()
        self.close()
        if "error" in reply:
            raise NetlinkHelperError(reply["error"])
        from ..handoff import entry_from_dict  # not at the top: see the module's docstring
        inside = [entry_from_dict(item, fd)
                  for item, fd in zip(reply["entries"], fds[1:], strict=True)]
        return reply["ifname"], reply["mac"], fds[0], inside

    def close(self, kill: bool = False) -> None:
        """Let the helper go (it exits when our end closes), reaped by
        ``reap`` once the broker has other work behind it (a process's exit
        takes 1-3 ms), or now when killed."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if kill and self.pid is not None:
            import signal  # error paths only
            os.kill(self.pid, signal.SIGKILL)
            self.reap()

    def reap(self) -> None:
        """Wait for the helper's exit, once, after ``close``."""
        if self.pid is not None:
            from .namespaces import reap  # not at the top: nothing to load before the fork
            reap(self.pid)
            self.pid = None

    def _receive(self) -> tuple[dict, list[int]]:
        assert self.sock is not None
        try:
            reply, fds = fdpass.receive(self.sock)
        except fdpass.FdPassError as exc:
            raise NetlinkHelperError(f"netlink helper failed: {exc}") from None
        if "error" in reply:
            for fd in fds:
                fdpass.close_quietly(fd)
        return reply, fds


def _helper(config: Config, sock: socket.socket) -> None:
    code = 0
    try:
        _serve(config, sock)
    except fdpass.FdPassError:      # the broker closed its end: no tap wanted
        pass
    except BaseException as exc:    # reported to the broker, whatever it is
        from .namespaces import report_failure
        report_failure(sock, exc)
        code = 1
    os._exit(code)


def _serve(config: Config, sock: socket.socket) -> None:
    """Read the host, then (pasta) make the tap."""
    _without_package_init("pyroute2")
    codecache.defer("traceback")    # pyroute2's and logging's error paths: 2-5 ms
    from . import netconf
    from .hostinfo import guest_network
    from .namespaces import Target, enter, forwarding_inside
    host = netconf.read_host(config)
    nat64 = None
    if config.clat and not config.nat64_prefix:
        from .nat64 import discover
        found = discover(host.resolvers)
        nat64 = str(found) if found else None
    tcp_listening = netconf.listening_tcp_ports() if _follows_host_tcp(config) else None
    fdpass.send(sock, {"host": host.to_map(), "nat64": nat64, "tcp_listening": tcp_listening},
                [])
    request, (netns_fd, userns_fd) = fdpass.receive(sock)
    enter(Target(netns_fd, userns_fd))
    ifname = config.ns_ifname or host.ifname or "tap0"
    fd = _tap(ifname, request.get("persist") is True)
    mac = netconf.set_up_tap(config, ifname, guest_network(config, host), host)
    inside = forwarding_inside(config)      # the loopback is up now
    from ..handoff import entry_to_dict
    fdpass.send(sock, {"ifname": ifname, "mac": mac,
                       "entries": [entry_to_dict(e) for e in inside]},
                [fd, *(e.fd for e in inside)])


def _follows_host_tcp(config: Config) -> bool:
    """pasta's ``-T auto``: the worker's first scan of the host's TCP
    listeners takes the ones read here, in the host's namespace."""
    return config.mode == Mode.PASTA and not config.no_tcp and config.tcp_ns.mode == "auto"


def _tap(ifname: str, persist: bool) -> int:
    """The tap, persistent in a namespace that pasta's command mode made.

    Closing the last fd of a tap that is not persistent unregisters the
    device there and then, two RCU grace periods under the RTNL lock:
    15-30 ms in the worker's exit, which the caller waits for.  The
    command's namespace is ours and goes when the command and the worker
    have gone; the kernel then removes a persistent tap with it, in the
    background.  A namespace that outlives us (``--netns``, a PID) must not
    keep a tap nobody serves: there it is not persistent."""
    from .tap import TapError, open_tap
    fd = open_tap(ifname)
    if persist:
        try:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        except OSError as exc:
            os.close(fd)
            raise TapError(f"cannot make tap device {ifname} persistent: "
                           f"{exc.strerror}") from None
    return fd


def _without_package_init(name: str) -> None:
    """Register package ``name`` without running its ``__init__``.

    pyroute2's ``__init__`` imports every netlink family it knows (conntrack,
    IPDB, NDB, nl80211, WireGuard, 9P...), some 40 ms.  We use the rtnetlink
    message classes alone, whose modules import what they need themselves.
    Only this process is affected.
    """
    import importlib.util
    import sys
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is not None:
            sys.modules[name] = importlib.util.module_from_spec(spec)
