"""The broker -> worker handoff: one message type and one fd manifest.

Wire format, over a ``socketpair(AF_UNIX, SOCK_STREAM)`` created by the
broker before it forks the worker:

1. One msgpack map, framed and sent with every fd by ``fdpass`` (a length
   prefix; fds as SCM_RIGHTS in chunks of at most 250, since ``-t all``
   hands over thousands of listeners)::

       {"v": 1,
        "config":  Config.to_dict(),
        "network": {...},          # netparams.Network, addresses as bytes
        "fds": [{"role": "tap", "index": 0, ...}, ...],
        "nfds": N}

   ``index`` is the position of the fd in the order received.

2. The worker answers one byte, ``READY``, once its sandbox is armed and its
   loop is about to start; the broker then writes the pid file and exits
   (or, in pasta's command mode, lets the command run).

Each manifest entry names its ``role`` (see ``ROLES``) and any metadata the
worker needs to use it (a listener's port, say).  The worker refuses a
message whose version, roles or fd count do not match, closes every fd
that is not in the manifest, and only then arms seccomp.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from . import fdpass
from .config import Config
from .netparams import IPv4Params, IPv6Params, Network

VERSION = 1
READY = b"R"

# role -> (how many may appear, what it is)
ROLES: dict[str, tuple[str, str]] = {
    "tap": ("0-1", "pasta: the tap device in the target namespace"),
    "unix_listener": ("0-1", "passt: listening UNIX socket for the guest (-s)"),
    "guest_stream": ("0-1", "passt: already-connected guest socket (-F)"),
    "tcp_listener": ("*", "-t forwarded port: listening TCP socket (port, target, family)"),
    "tcp_ns_listener": ("*", "pasta -T: listening TCP socket on the namespace's loopback"
                        " (port, target, family)"),
    "udp_ns_listener": ("*", "pasta -U: bound UDP socket on the namespace's loopback"
                        " (port, target, family)"),
    "udp_listener": ("*", "-u forwarded port: bound UDP socket (port, target, family)"),
    "proc_net": ("*", "pasta auto: /proc/net/{tcp,tcp6,udp,udp6} of one side (side, table)"),
    "pcap": ("0-1", "capture file (-p), header already written"),
    "log": ("0-1", "log file (-l) or connected syslog socket"),
    "netns_watch": ("0-1", "inotify fd watching the --netns file's directory (name)"),
    "command_pidfd": ("0-1", "pasta: pidfd of the command; its exit ends the worker"),
    "target_pidfd": ("0-1", "pasta, PID mode: pidfd of the process whose namespace we"
                     " serve; its exit ends the worker"),
    "ns_source": ("0-1", "pasta: socket to the ns socket source"),
    "devnull": ("0-1", "/dev/null for stdin, stdout and (daemon) stderr"),
}


class HandoffError(Exception):
    """The handoff message is missing, malformed or does not match."""


@dataclass
class FdEntry:
    role: str
    fd: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Handoff:
    config: Config
    network: Network
    fds: list[FdEntry]

    def by_role(self, role: str) -> list[FdEntry]:
        return [entry for entry in self.fds if entry.role == role]

    def one(self, role: str) -> FdEntry | None:
        entries = self.by_role(role)
        return entries[0] if entries else None


# -- network (de)serialisation -----------------------------------------------

def network_to_dict(net: Network) -> dict[str, Any]:
    def family(params: IPv4Params | IPv6Params | None) -> dict[str, Any] | None:
        if params is None:
            return None
        return {"addr": params.addr, "prefix_len": params.prefix_len,
                "gateway": params.gateway, "dns": list(params.dns)}
    ipv6 = family(net.ipv6)
    if net.ipv6 is not None and ipv6 is not None:
        ipv6["host_link_local"] = net.ipv6.host_link_local
    return {"our_mac": net.our_mac, "guest_mac": net.guest_mac, "mtu": net.mtu,
            "ipv4": family(net.ipv4), "ipv6": ipv6, "search": list(net.search),
            "host_resolvers": list(net.host_resolvers)}


def network_from_dict(d: dict[str, Any]) -> Network:
    def family(cls: type, data: dict[str, Any] | None) -> Any:
        if data is None:
            return None
        extra = {"host_link_local": data["host_link_local"]} if cls is IPv6Params else {}
        return cls(addr=data["addr"], prefix_len=data["prefix_len"],
                   gateway=data["gateway"], dns=tuple(data["dns"]), **extra)
    return Network(our_mac=d["our_mac"], guest_mac=d["guest_mac"], mtu=d["mtu"],
                   ipv4=family(IPv4Params, d["ipv4"]), ipv6=family(IPv6Params, d["ipv6"]),
                   search=tuple(d["search"]), host_resolvers=tuple(d["host_resolvers"]))


# -- message -------------------------------------------------------------------

def encode(config: Config, network: Network, entries: list[FdEntry]) -> dict[str, Any]:
    manifest = [{"role": e.role, "index": i, **e.meta} for i, e in enumerate(entries)]
    return {"v": VERSION, "config": config.to_dict(),
            "network": network_to_dict(network), "fds": manifest}


def decode(message: dict[str, Any], fds: list[int]) -> Handoff:
    if message.get("v") != VERSION:
        raise HandoffError("handoff: wrong or missing version")
    try:
        config = Config.from_dict(message["config"])
        network = network_from_dict(message["network"])
        entries = _manifest(message["fds"], fds)
    except (KeyError, TypeError, ValueError) as exc:
        raise HandoffError(f"handoff: bad message: {exc!r}") from None
    return Handoff(config, network, entries)


def _manifest(manifest: list[dict[str, Any]], fds: list[int]) -> list[FdEntry]:
    if len(manifest) != len(fds):
        raise HandoffError(f"handoff: manifest lists {len(manifest)} fds, got {len(fds)}")
    entries = []
    for position, item in enumerate(manifest):
        meta = dict(item)
        role, index = meta.pop("role"), meta.pop("index")
        if role not in ROLES:
            raise HandoffError(f"handoff: unknown fd role {role!r}")
        if index != position:
            raise HandoffError("handoff: manifest out of order")
        entries.append(FdEntry(role, fds[index], meta))
    for role, (count, _) in ROLES.items():
        if count == "0-1" and sum(e.role == role for e in entries) > 1:
            raise HandoffError(f"handoff: more than one {role!r} fd")
    return entries


# -- transport -------------------------------------------------------------------

def send(sock: socket.socket, config: Config, network: Network,
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
