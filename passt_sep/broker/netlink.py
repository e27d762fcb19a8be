"""The netlink helper: the one broker process that speaks rtnetlink.

Importing pyroute2 takes about 100 ms, more than all the rest of start-up.
So the broker forks this helper as soon as the options are parsed: the
helper imports pyroute2 and reads the host's network while the broker, on
the other CPU, imports the worker, compiles the seccomp filters and makes
the namespaces.  In pasta mode the helper then enters the target namespace,
creates the tap there and configures it, while the broker opens the other
fds.  Nothing else imports pyroute2 (see ``netconf``).

One exchange each way over a socket pair, in ``fdpass`` framing:

* helper -> broker: ``{"host": HostInfo.to_map()}``;
* broker -> helper (pasta mode; otherwise the broker just closes its end):
  ``{"tap": true}`` with the target's network and user namespace fds;
* helper -> broker: ``{"ifname": ..., "mac": ...}`` with the tap's fd.

Either reply may be ``{"error": message}`` instead.
"""

from __future__ import annotations

import os
import signal
import socket

from .. import fdpass
from ..config import Config
from . import hostinfo, namespaces
from .hostinfo import HostConfigError, HostInfo
from .tap import open_tap


class NetlinkHelper:
    """The broker's end: ask for the host, then for the tap."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock: socket.socket | None = sock

    @classmethod
    def start(cls, config: Config) -> NetlinkHelper:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _helper(config, theirs)
        theirs.close()
        return cls(pid, ours)

    def host(self) -> HostInfo:
        reply, _ = self._receive()
        if "error" in reply:
            raise HostConfigError(f"cannot read the host's network: {reply['error']}")
        return HostInfo.from_map(reply["host"])

    def request_tap(self, target: namespaces.Target) -> None:
        """Start creating the tap inside ``target``, entered through the
        user namespace this process is in now (ours, or the owner's)."""
        assert self.sock is not None
        userns_fd = os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fdpass.send(self.sock, {"tap": True}, [target.netns_fd, userns_fd])
        finally:
            os.close(userns_fd)

    def tap(self) -> tuple[str, str, int]:
        """The tap's name, MAC and fd, once the helper has set it up."""
        reply, fds = self._receive()
        self.close()
        if "error" in reply:
            raise namespaces.NamespaceError(reply["error"])
        return reply["ifname"], reply["mac"], fds[0]

    def close(self, kill: bool = False) -> None:
        """Let the helper go (it exits when our end closes) and reap it."""
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        if kill:
            os.kill(self.pid, signal.SIGKILL)
        namespaces.reap(self.pid)

    def _receive(self) -> tuple[dict, list[int]]:
        assert self.sock is not None
        try:
            reply, fds = fdpass.receive(self.sock)
        except fdpass.FdPassError as exc:
            raise namespaces.NamespaceError(f"netlink helper failed: {exc}") from None
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
        namespaces.report_failure(sock, exc)
        code = 1
    os._exit(code)


def _serve(config: Config, sock: socket.socket) -> None:
    from . import netconf  # pyroute2: here only, see the module's docstring
    host = netconf.read_host(config)
    fdpass.send(sock, {"host": host.to_map()}, [])
    _request, (netns_fd, userns_fd) = fdpass.receive(sock)
    namespaces.enter(namespaces.Target(netns_fd, userns_fd))
    ifname = config.ns_ifname or host.ifname or "tap0"
    fd = open_tap(ifname)
    mac = netconf.set_up_tap(config, ifname, hostinfo.guest_network(config, host), host)
    fdpass.send(sock, {"ifname": ifname, "mac": mac}, [fd])
