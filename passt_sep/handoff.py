"""The broker -> worker handoff: one typed message and one fd manifest.

Wire format, over a ``socketpair(AF_UNIX, SOCK_STREAM)`` created by the
broker before it forks the worker:

1. One msgpack map, framed and sent with every fd by ``fdpass`` (a length
   prefix; fds as SCM_RIGHTS in chunks of at most 250, since ``-t all``
   hands over thousands of listeners)::

       {"v": 3,
        "config":  {...},          # WorkerConfig: its fields, nothing more
        "network": {...},          # netparams.Network, addresses as bytes
        "fds": [{"role": "tap"}, {"role": "tcp_listener", "family": 10,
                                  "port": 22, "target": 2022, "dual": true}, ...],
        "nfds": N}

   The n-th manifest entry describes the n-th fd received.

2. The worker answers one byte, ``READY``, once its sandbox is armed and its
   loop is about to start; the broker then writes the pid file and exits
   (or, in pasta's command mode, lets the command run).

What crosses is what the worker reads, and no more: ``WorkerConfig`` is
derived from the command line by the broker (no paths, no command, no user
or namespace names: those stay in the broker), and each fd comes with its
``Role`` and, for the roles in ``ROLES`` that have one, a typed metadata
record.  ``decode`` checks every key and type (exact key sets, ints in
range, addresses that parse) and raises ``HandoffError`` on anything else;
the worker then closes every fd that is not in the manifest, and only then
arms seccomp.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .clat import WELL_KNOWN_PREFIX, Nat64Error, Nat64Prefix
from .config import DEFAULT_BUSY_POLL, IFNAMSIZ, MAX_BUSY_POLL, Config, Mode
from .loglevel import DEBUG, ERROR, INFO, TRACE, WARNING, level_for
from .netparams import IPv4Params, IPv6Params, Network
from .ports import MAX_PORT

VERSION = 3
READY = b"R"
MAX_FLOWS = 1 << 20
MAX_LOG_SIZE = 1 << 40


class HandoffError(Exception):
    """The handoff message is missing, malformed or does not match."""


# -- the worker's configuration --------------------------------------------------

@dataclass(frozen=True)
class WorkerConfig:
    """Every option the worker (and the handlers it builds) reads, in the
    form it reads it; the broker derives it with :meth:`from_config`."""

    mode: Mode
    log_level: int = INFO               # -q, -d, --trace
    stderr: bool = False                # -f or -e: standard error stays a log target
    log_size: int | None = None         # --log-size, for the -l file
    max_flows: int = 8192
    busy_poll: int = DEFAULT_BUSY_POLL  # microseconds
    no_tcp: bool = False
    no_udp: bool = False
    no_icmp: bool = False
    no_dhcp: bool = False
    no_dhcpv6: bool = False
    no_ndp: bool = False
    no_ra: bool = False
    no_dhcp_dns: bool = False
    no_dhcp_search: bool = False
    advertise_mtu: bool = True          # -m 0: DHCP, NDP and RAs name no MTU
    one_off: bool = False
    vhost_user: bool = False
    outbound4: str | None = None        # -o, an IPv4 address
    outbound6: str | None = None        # -o, an IPv6 address
    outbound_if4: str | None = None
    outbound_if6: str | None = None
    no_map_gw: bool = False
    host_lo_to_ns_lo: bool = False      # pasta: host loopback lands on the namespace's loopback
    map_host_loopback: str | None = None
    map_guest_addr: str | None = None
    dns_forward: tuple[str, ...] = ()
    nat64_prefix: str | None = None     # --clat: PREFIX/LEN (the broker found or took one)
    tcp_auto: bool = False              # pasta: -t auto, -u auto, -T auto, -U auto
    udp_auto: bool = False
    tcp_ns_auto: bool = False
    udp_ns_auto: bool = False
    # -T auto: the host's listening TCP ports when the broker started, read
    # by the netlink helper (sock_diag walks the listeners alone, where
    # /proc/net/tcp walks every connection): the worker's first scan of the
    # host takes these; None, it reads the tables
    host_tcp_listening: tuple[int, ...] | None = None

    @property
    def verify_checksums(self) -> bool:
        """passt's guest computes its checksums; pasta's tap hands over
        segments the kernel has checked (or will)."""
        return self.mode is Mode.PASST

    @classmethod
    def from_config(cls, config: Config,
                    host_tcp_listening: list[int] | None = None) -> WorkerConfig:
        return cls(
            mode=config.mode, log_level=level_for(config),
            stderr=config.foreground or config.stderr, log_size=config.log_size,
            max_flows=config.max_flows, busy_poll=config.busy_poll,
            no_tcp=config.no_tcp, no_udp=config.no_udp, no_icmp=config.no_icmp,
            no_dhcp=config.no_dhcp, no_dhcpv6=config.no_dhcpv6,
            no_ndp=config.no_ndp, no_ra=config.no_ra, no_dhcp_dns=config.no_dhcp_dns,
            no_dhcp_search=config.no_dhcp_search, advertise_mtu=config.mtu != 0,
            one_off=config.one_off, vhost_user=config.vhost_user,
            outbound4=config.outbound4, outbound6=config.outbound6,
            outbound_if4=config.outbound_if4, outbound_if6=config.outbound_if6,
            no_map_gw=config.no_map_gw, host_lo_to_ns_lo=config.host_lo_to_ns_lo,
            map_host_loopback=config.map_host_loopback,
            map_guest_addr=config.map_guest_addr, dns_forward=config.dns_forward,
            nat64_prefix=(config.nat64_prefix or WELL_KNOWN_PREFIX) if config.clat else None,
            tcp_auto=config.tcp_ports.mode == "auto", udp_auto=config.udp_ports.mode == "auto",
            tcp_ns_auto=config.tcp_ns.mode == "auto", udp_ns_auto=config.udp_ns.mode == "auto",
            host_tcp_listening=None if host_tcp_listening is None else tuple(host_tcp_listening))

    @property
    def nat64(self) -> Nat64Prefix | None:
        return Nat64Prefix.parse(self.nat64_prefix) if self.nat64_prefix else None


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def _integer(low: int, high: int):
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise TypeError(f"expected an integer from {low} to {high}")
        return value
    return check


def _optional(check):
    return lambda value: None if value is None else check(value)


def _address(version: int | None = None):
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError("expected an address")
        parsed = ipaddress.ip_address(value)
        if version is not None and parsed.version != version:
            raise ValueError(f"expected an IPv{version} address")
        return value
    return check


def _level(value: Any) -> int:
    if isinstance(value, bool) or value not in (ERROR, WARNING, INFO, DEBUG, TRACE):
        raise TypeError("expected a log level")
    return value


def _ifname(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value.encode()) < IFNAMSIZ or "/" in value:
        raise TypeError("expected an interface name")
    return value


def _nat64(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected PREFIX/LEN")
    try:
        Nat64Prefix.parse(value)
    except Nat64Error as exc:
        raise ValueError(str(exc)) from None
    return value


def _ports(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_PORT:
        raise TypeError("expected a list of ports")
    port = _integer(1, MAX_PORT)
    return tuple(port(item) for item in value)


def _addresses(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list of addresses")
    return tuple(_address()(item) for item in value)


_CONFIG_CHECKS: dict[str, Any] = {
    "mode": Mode,
    "log_level": _level,
    "log_size": _optional(_integer(0, MAX_LOG_SIZE)),
    "max_flows": _integer(1, MAX_FLOWS),
    "busy_poll": _integer(0, MAX_BUSY_POLL),
    "outbound4": _optional(_address(4)), "outbound6": _optional(_address(6)),
    "outbound_if4": _optional(_ifname), "outbound_if6": _optional(_ifname),
    "map_host_loopback": _optional(_address()), "map_guest_addr": _optional(_address()),
    "dns_forward": _addresses, "nat64_prefix": _optional(_nat64),
    "host_tcp_listening": _optional(_ports),
}


def config_to_dict(config: WorkerConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["mode"] = str(config.mode)
    out["dns_forward"] = list(config.dns_forward)
    if config.host_tcp_listening is not None:
        out["host_tcp_listening"] = list(config.host_tcp_listening)
    return out


def config_from_dict(data: Any) -> WorkerConfig:
    """A WorkerConfig from exactly its fields, each of its type; else HandoffError."""
    if not isinstance(data, dict):
        raise HandoffError("handoff: config is not a map")
    names = [item.name for item in dataclasses.fields(WorkerConfig)]
    if set(data) != set(names):
        raise HandoffError("handoff: config fields do not match: "
                           f"{sorted(map(repr, set(data) ^ set(names)))}")
    values = {}
    for name in names:
        try:
            values[name] = _CONFIG_CHECKS.get(name, _flag)(data[name])
        except (TypeError, ValueError) as exc:
            raise HandoffError(f"handoff: config {name}: {exc}") from None
    return WorkerConfig(**values)


# -- the fd manifest ----------------------------------------------------------------

class Role(StrEnum):
    TAP = "tap"
    UNIX_LISTENER = "unix_listener"
    GUEST_STREAM = "guest_stream"
    TCP_LISTENER = "tcp_listener"
    TCP_NS_LISTENER = "tcp_ns_listener"
    UDP_LISTENER = "udp_listener"
    UDP_NS_LISTENER = "udp_ns_listener"
    PROC_NET = "proc_net"
    PCAP = "pcap"
    LOG = "log"
    NETNS_WATCH = "netns_watch"
    COMMAND_PIDFD = "command_pidfd"
    TARGET_PIDFD = "target_pidfd"
    NS_SOURCE = "ns_source"
    DEVNULL = "devnull"


@dataclass(frozen=True)
class ListenerMeta:
    """A forwarded port: ``port`` where the socket is bound, ``target`` the
    port on the other side.  ``dual``: an AF_INET6 socket on ``[::]``
    without IPV6_V6ONLY, taking both families (IPv4 peers as
    ``::ffff:a.b.c.d``): one socket per port where both are enabled."""

    family: int
    port: int
    target: int
    dual: bool = False

    def check(self) -> None:
        if self.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError("family: expected AF_INET or AF_INET6")
        _integer(1, 65535)(self.port)
        _integer(1, 65535)(self.target)
        if _flag(self.dual) and self.family != socket.AF_INET6:
            raise ValueError("dual: only an AF_INET6 socket takes both families")


PROC_NET_SIDES = ("ns", "host")
PROC_NET_TABLES = ("tcp", "tcp6", "udp", "udp6")


@dataclass(frozen=True)
class ProcNetMeta:
    """A ``/proc/net`` table of one side, for ``auto``."""

    side: str
    table: str

    def check(self) -> None:
        if self.side not in PROC_NET_SIDES or self.table not in PROC_NET_TABLES:
            raise ValueError(f"proc_net: side {self.side!r}, table {self.table!r}")


@dataclass(frozen=True)
class LogMeta:
    """The log file: the broker's start time, which its lines count from."""

    start: float

    def check(self) -> None:
        if isinstance(self.start, bool) or not isinstance(self.start, (int, float)):
            raise TypeError("start: expected a number")


@dataclass(frozen=True)
class NetnsWatchMeta:
    """The watched directory's entry whose removal ends the worker: any
    bytes a file name can hold."""

    name: bytes

    def check(self) -> None:
        if not isinstance(self.name, bytes) or not self.name or b"/" in self.name \
                or b"\0" in self.name:
            raise TypeError("name: expected a file name")


Meta = ListenerMeta | ProcNetMeta | LogMeta | NetnsWatchMeta


@dataclass(frozen=True)
class RoleSpec:
    """What the manifest allows for one role."""

    repeats: bool                       # may appear more than once
    meta: type | None                   # its metadata record, if it has one
    what: str


ROLES: dict[Role, RoleSpec] = {
    Role.TAP: RoleSpec(False, None, "pasta: the tap device in the target namespace"),
    Role.UNIX_LISTENER: RoleSpec(False, None, "passt: listening UNIX socket for the guest (-s)"),
    Role.GUEST_STREAM: RoleSpec(False, None, "passt: already-connected guest socket (-F)"),
    Role.TCP_LISTENER: RoleSpec(True, ListenerMeta, "-t forwarded port: listening TCP socket"),
    Role.TCP_NS_LISTENER: RoleSpec(True, ListenerMeta, "pasta -T: listening TCP socket on "
                                   "the namespace's loopback"),
    Role.UDP_LISTENER: RoleSpec(True, ListenerMeta, "-u forwarded port: bound UDP socket"),
    Role.UDP_NS_LISTENER: RoleSpec(True, ListenerMeta, "pasta -U: bound UDP socket on the "
                                   "namespace's loopback"),
    Role.PROC_NET: RoleSpec(True, ProcNetMeta, "pasta auto: /proc/net/{tcp,tcp6,udp,udp6} "
                            "of one side"),
    Role.PCAP: RoleSpec(False, None, "capture file (-p), header already written"),
    Role.LOG: RoleSpec(False, LogMeta, "log file (-l)"),
    Role.NETNS_WATCH: RoleSpec(False, NetnsWatchMeta, "inotify fd watching the --netns "
                               "file's directory"),
    Role.COMMAND_PIDFD: RoleSpec(False, None, "pasta: pidfd of the command; its exit ends "
                                 "the worker"),
    Role.TARGET_PIDFD: RoleSpec(False, None, "pasta, PID mode: pidfd of the process whose "
                                "namespace we serve; its exit ends the worker"),
    Role.NS_SOURCE: RoleSpec(False, None, "pasta: socket to the ns socket source"),
    Role.DEVNULL: RoleSpec(False, None, "/dev/null for stdin, stdout and (daemon) stderr"),
}


@dataclass
class FdEntry:
    """One fd of the handoff, what it is for, and its metadata."""

    role: Role
    fd: int
    meta: Meta | None = None


def check_entry(entry: FdEntry) -> None:
    """The metadata is the record ``ROLES`` names for the role; HandoffError."""
    try:
        spec = ROLES[Role(entry.role)]
    except ValueError:
        raise HandoffError(f"handoff: unknown fd role {entry.role!r}") from None
    if spec.meta is None and entry.meta is None:
        return
    if spec.meta is None or type(entry.meta) is not spec.meta:
        raise HandoffError(f"handoff: {entry.role} fd with {type(entry.meta).__name__}")
    try:
        entry.meta.check()  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise HandoffError(f"handoff: {entry.role} fd: {exc}") from None


def entry_to_dict(entry: FdEntry) -> dict[str, Any]:
    check_entry(entry)
    meta = dataclasses.asdict(entry.meta) if entry.meta is not None else {}
    return {"role": str(entry.role), **meta}


def entry_from_dict(item: Any, fd: int) -> FdEntry:
    if not isinstance(item, dict) or not isinstance(item.get("role"), str):
        raise HandoffError("handoff: manifest entry without a role")
    fields = dict(item)
    try:
        role = Role(fields.pop("role"))
    except ValueError:
        raise HandoffError(f"handoff: unknown fd role {item['role']!r}") from None
    spec = ROLES[role]
    names = {f.name for f in dataclasses.fields(spec.meta)} if spec.meta else set()
    if set(fields) != names:
        raise HandoffError(f"handoff: {role} fd: expected fields {sorted(names)}")
    entry = FdEntry(role, fd, spec.meta(**fields) if spec.meta else None)
    check_entry(entry)
    return entry


@dataclass
class Handoff:
    """Everything the worker receives from the broker."""

    config: WorkerConfig
    network: Network
    fds: list[FdEntry]

    def by_role(self, role: Role) -> list[FdEntry]:
        return [entry for entry in self.fds if entry.role == role]

    def one(self, role: Role) -> FdEntry | None:
        entries = self.by_role(role)
        return entries[0] if entries else None

    def fd(self, role: Role) -> int | None:
        entry = self.one(role)
        return entry.fd if entry else None


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

def encode(config: WorkerConfig, network: Network, entries: list[FdEntry]) -> dict[str, Any]:
    """The message for ``entries``; HandoffError if one's metadata is wrong."""
    return {"v": VERSION, "config": config_to_dict(config),
            "network": network_to_dict(network), "fds": [entry_to_dict(e) for e in entries]}


def decode(message: dict[str, Any], fds: list[int]) -> Handoff:
    if message.get("v") != VERSION:
        raise HandoffError("handoff: wrong or missing version")
    try:
        config = config_from_dict(message["config"])
        network = network_from_dict(message["network"])
        entries = _manifest(message["fds"], fds)
    except (KeyError, TypeError, ValueError) as exc:
        raise HandoffError(f"handoff: bad message: {exc!r}") from None
    return Handoff(config, network, entries)


def _manifest(manifest: Any, fds: list[int]) -> list[FdEntry]:
    if not isinstance(manifest, list):
        raise HandoffError("handoff: the manifest is not a list")
    if len(manifest) != len(fds):
        raise HandoffError(f"handoff: manifest lists {len(manifest)} fds, got {len(fds)}")
    entries = [entry_from_dict(item, fd) for item, fd in zip(manifest, fds, strict=True)]
    for role, spec in ROLES.items():
        if not spec.repeats and sum(e.role == role for e in entries) > 1:
            raise HandoffError(f"handoff: more than one {str(role)!r} fd")
    return entries
