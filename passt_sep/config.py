"""The whole passt/pasta command line, parsed into one immutable ``Config``.

The option table ``OPTIONS`` is the single description of every option: the
parser, ``--help`` and the man-page test all read it.  A bad option or value
raises ``ConfigError`` with one line naming it; ``-h`` and ``--version``
raise ``ShowText``.  No I/O here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .ports import ConfigError, Forwarding, is_decimal, parse_forward

__all__ = ["Config", "ConfigError", "ShowText", "OPTIONS", "parse_args", "usage"]

BOTH, PASST, PASTA = "both", "passt", "pasta"
IFNAMSIZ = 16
MIN_MTU, MAX_MTU = 68, 65520
SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MAX_SIZE = 1 << 40
PID_MAX_LIMIT = 1 << 22             # the kernel's largest pid_max
DEFAULT_LOG_SIZE = 1 << 20          # --log-size, as passt


class ShowText(Exception):
    """Print ``text`` to standard output and exit 0 (--help, --version)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Config:
    mode: str
    debug: bool = False
    trace: bool = False
    quiet: bool = False
    foreground: bool = False
    stderr: bool = False
    log_file: str | None = None
    log_size: int | None = DEFAULT_LOG_SIZE
    runas: str | None = None
    pcap: str | None = None
    pid_file: str | None = None
    mtu: int | None = None
    address4: str | None = None
    address6: str | None = None
    prefix4: int | None = None
    mac_addr: str | None = None
    gateway4: str | None = None
    gateway6: str | None = None
    interface: str | None = None
    outbound4: str | None = None
    outbound6: str | None = None
    outbound_if4: str | None = None
    outbound_if6: str | None = None
    dns: tuple[str, ...] = ()
    dns_none: bool = False
    dns_forward: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    search_none: bool = False
    no_dhcp_dns: bool = False
    no_dhcp_search: bool = False
    no_tcp: bool = False
    no_udp: bool = False
    no_icmp: bool = False
    no_dhcp: bool = False
    no_ndp: bool = False
    no_dhcpv6: bool = False
    no_ra: bool = False
    no_map_gw: bool = False
    map_host_loopback: str | None = None
    map_guest_addr: str | None = None
    ipv4_only: bool = False
    ipv6_only: bool = False
    freebind: bool = False
    tcp_ports: Forwarding = field(default_factory=Forwarding)
    udp_ports: Forwarding = field(default_factory=Forwarding)
    tcp_ns: Forwarding = field(default_factory=Forwarding)
    udp_ns: Forwarding = field(default_factory=Forwarding)
    socket_path: str | None = None
    fd: int | None = None
    one_off: bool = False
    ns_ifname: str | None = None
    userns: str | None = None
    netns: str | None = None
    netns_only: bool = False
    no_netns_quit: bool = False
    config_net: bool = False
    ns_mac_addr: str | None = None
    no_splice: bool = False
    no_copy_routes: bool = False
    no_copy_addrs: bool = False
    command: tuple[str, ...] = ()
    target_pid: int | None = None
    max_flows: int = 8192

    _FORWARDINGS = ("tcp_ports", "udp_ports", "tcp_ns", "udp_ns")

    def to_dict(self) -> dict[str, Any]:
        """A plain, msgpack-able dict (the handoff carries it)."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Forwarding):
                value = value.to_dict()
            elif item.name == "command":
                value = [os.fsencode(arg) for arg in value]    # any bytes, as exec takes them
            elif isinstance(value, tuple):
                value = list(value)
            out[item.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
        values = dict(data)
        for name in cls._FORWARDINGS:
            if name in values:
                values[name] = Forwarding.from_dict(values[name])
        for name in ("dns", "dns_forward", "search"):
            if name in values:
                values[name] = tuple(values[name])
        if "command" in values:
            values["command"] = tuple(os.fsdecode(arg) for arg in values["command"])
        return cls(**values)


# -- the option table -------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    short: str | None
    long: str
    arg: str | None        # metavar, or None for a flag
    modes: str             # BOTH, PASST or PASTA
    help: str
    default: str = ""


OPTIONS: tuple[Option, ...] = (
    Option("-d", "--debug", None, BOTH, "Be verbose, don't log to the system logger"),
    Option(None, "--trace", None, BOTH, "Be extra verbose, implies --debug"),
    Option("-q", "--quiet", None, BOTH, "Don't print informational messages"),
    Option("-f", "--foreground", None, BOTH, "Don't run in background"),
    Option("-e", "--stderr", None, BOTH, "Log to stderr too"),
    Option("-l", "--log-file", "PATH", BOTH, "Log (only) to given file"),
    Option(None, "--log-size", "BYTES", BOTH, "Maximum log file size (k, m, g suffixes)",
           "1m"),
    Option(None, "--runas", "UID|UID:GID|LOGIN|LOGIN:GROUP", BOTH,
           "Run as given UID, GID, which can be numeric, or login and group names",
           "drop to user 'nobody' if started as root"),
    Option("-h", "--help", None, BOTH, "Display this help message and exit"),
    Option(None, "--version", None, BOTH, "Show version and exit"),
    Option(None, "--mode", "passt|pasta", BOTH, "Operation mode, overriding the program name"),
    Option("-p", "--pcap", "FILE", BOTH, "Log tap-facing traffic to pcap file"),
    Option("-P", "--pid", "FILE", BOTH, "Write own PID to the given file"),
    Option(None, "--pid-file", "FILE", BOTH, "Same as --pid"),
    Option("-m", "--mtu", "MTU", BOTH, "Assign MTU via DHCP/NDP (pasta: set it on the tap)",
           "65520"),
    Option("-a", "--address", "ADDR", BOTH, "Assign IPv4 or IPv6 address ADDR",
           "the address of the interface with the default route"),
    Option("-n", "--netmask", "MASK", BOTH, "Assign IPv4 MASK, dot-decimal or bits",
           "the host's netmask"),
    Option("-M", "--mac-addr", "ADDR", BOTH, "Use source MAC address ADDR",
           "9a:55:9a:55:9a:55"),
    Option("-g", "--gateway", "ADDR", BOTH, "Pass IPv4 or IPv6 address as gateway",
           "the host's default gateway"),
    Option("-i", "--interface", "NAME", BOTH, "Interface for addresses and routes",
           "the interface with the first default route"),
    Option("-o", "--outbound", "ADDR", BOTH, "Bind to address as outbound source"),
    Option(None, "--outbound-if4", "NAME", BOTH, "Bind to outbound interface for IPv4"),
    Option(None, "--outbound-if6", "NAME", BOTH, "Bind to outbound interface for IPv6"),
    Option("-D", "--dns", "ADDR", BOTH, "Use IPv4 or IPv6 address as DNS (or 'none')",
           "the host's resolvers"),
    Option(None, "--dns-forward", "ADDR", BOTH,
           "Forward DNS queries sent to ADDR to the host's first resolver"),
    Option("-S", "--search", "LIST", BOTH, "Space-separated list, search domains (or 'none')",
           "the host's search list"),
    Option(None, "--no-dhcp-dns", None, BOTH, "No DNS list in DHCP/DHCPv6/NDP"),
    Option(None, "--no-dhcp-search", None, BOTH, "No search list in DHCP/DHCPv6/NDP"),
    Option(None, "--no-tcp", None, BOTH, "Disable TCP protocol handler"),
    Option(None, "--no-udp", None, BOTH, "Disable UDP protocol handler"),
    Option(None, "--no-icmp", None, BOTH, "Disable ICMP/ICMPv6 echo handler"),
    Option(None, "--no-dhcp", None, BOTH, "Disable DHCP server"),
    Option(None, "--no-ndp", None, BOTH, "Disable NDP responses"),
    Option(None, "--no-dhcpv6", None, BOTH, "Disable DHCPv6 server"),
    Option(None, "--no-ra", None, BOTH, "Disable router advertisements"),
    Option(None, "--freebind", None, BOTH, "Bind to any address for forwarding"),
    Option(None, "--no-map-gw", None, BOTH, "Don't map gateway address to host"),
    Option(None, "--map-gw", None, BOTH, "Map gateway address to host (the default)"),
    Option(None, "--map-host-loopback", "ADDR", BOTH,
           "Translate ADDR to refer to host loopback"),
    Option(None, "--map-guest-addr", "ADDR", BOTH,
           "Translate ADDR to guest's address on the host"),
    Option("-4", "--ipv4-only", None, BOTH, "Enable IPv4 operation only"),
    Option("-6", "--ipv6-only", None, BOTH, "Enable IPv6 operation only"),
    Option("-t", "--tcp-ports", "SPEC", BOTH, "TCP port forwarding to guest or namespace",
           "none for passt, auto for pasta"),
    Option("-u", "--udp-ports", "SPEC", BOTH, "UDP port forwarding to guest or namespace",
           "none for passt, auto for pasta"),
    Option(None, "--max-flows", "N", BOTH, "Maximum number of concurrent flows", "8192"),
    Option("-s", "--socket", "PATH", PASST, "UNIX domain socket path",
           "probe free path starting from /tmp/passt-sep_1.socket"),
    Option("-F", "--fd", "FD", PASST, "Use FD as pre-opened connected socket"),
    Option("-1", "--one-off", None, PASST, "Quit after handling one single client"),
    Option("-I", "--ns-ifname", "NAME", PASTA, "Namespace interface name",
           "the name of the host's upstream interface"),
    Option("-T", "--tcp-ns", "SPEC", PASTA, "TCP port forwarding to init namespace", "auto"),
    Option("-U", "--udp-ns", "SPEC", PASTA, "UDP port forwarding to init namespace", "auto"),
    Option(None, "--userns", "NSPATH", PASTA, "Target user namespace to join"),
    Option(None, "--netns", "PATH|NAME", PASTA, "Target network namespace to join"),
    Option(None, "--netns-only", None, PASTA, "Don't join existing user namespace"),
    Option(None, "--no-netns-quit", None, PASTA,
           "Don't quit if filesystem-bound namespace is gone"),
    Option(None, "--config-net", None, PASTA, "Configure tap interface in namespace"),
    Option(None, "--ns-mac-addr", "ADDR", PASTA, "Set MAC address on tap interface"),
    Option(None, "--no-splice", None, PASTA, "Disable the loopback splice fast path"),
    Option(None, "--no-copy-routes", None, PASTA, "Don't copy all routes to namespace"),
    Option(None, "--no-copy-addrs", None, PASTA, "Don't copy all addresses to namespace"),
)

_BY_NAME = {name: opt for opt in OPTIONS for name in (opt.short, opt.long) if name}


def usage(mode: str) -> str:
    prog = "pasta-sep" if mode == PASTA else "passt-sep"
    synopsis = (f"Usage: {prog} [OPTION]... [COMMAND [ARG]...]\n"
                f"       {prog} [OPTION]... PID\n"
                f"       {prog} [OPTION]... --netns [PATH|NAME]\n" if mode == PASTA
                else f"Usage: {prog} [OPTION]...\n")
    lines = [synopsis]
    for opt in OPTIONS:
        if opt.modes not in (BOTH, mode):
            continue
        names = f"{opt.short}, {opt.long}" if opt.short else f"    {opt.long}"
        if opt.arg:
            names += f" {opt.arg}"
        default = f" (default: {opt.default})" if opt.default else ""
        lines.append(f"  {names:<36} {opt.help}{default}")
    return "\n".join(lines)


def version_text() -> str:
    return (f"passt-sep {__version__}\n"
            "A privilege-separated Python reimplementation of passt and pasta.\n"
            "License GPLv2+: GNU GPL version 2 or later.")


# -- parsing --------------------------------------------------------------------------

def mode_for(prog: str) -> str:
    return PASTA if "pasta" in os.path.basename(prog) else PASST


def parse_args(argv: Sequence[str], prog: str) -> Config:
    """``argv`` without the program name; ``prog`` picks the mode."""
    tokens = _tokens(argv)
    mode = _mode(tokens, prog)
    values: dict[str, Any] = {"mode": mode}
    multi: dict[str, list[str]] = {"-t": [], "-u": [], "-T": [], "-U": []}
    positional: list[str] = []
    seen: set[str] = set()
    for name, value, is_option in tokens:
        if not is_option:
            positional.append(value)
            continue
        _check_encoding(name, value)
        opt = _BY_NAME[name]
        if opt.modes not in (BOTH, mode):
            raise ConfigError(f"{name} is only valid in {opt.modes} mode")
        key = opt.short if opt.short in multi else opt.long
        if key in multi:
            multi[key].append(value)
            continue
        _apply(opt, value, values, seen)
    _forwardings(values, multi, mode)
    _positionals(values, positional, mode)
    _check_combinations(values)
    return Config(**values)


def _tokens(argv: Sequence[str]) -> list[tuple[str, str, bool]]:
    """(option name, value, True) or ("", positional, False), in order."""
    out: list[tuple[str, str, bool]] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            out += [("", rest, False) for rest in argv[index:]]
            break
        if arg.startswith("--"):
            name, eq, inline = arg.partition("=")
            opt = _lookup(name)
            if opt.arg is None:
                if eq:
                    raise ConfigError(f"Option {name} takes no argument")
                out.append((name, "", True))
                continue
            if not eq:
                if index >= len(argv):
                    raise ConfigError(f"Option {name} requires an argument")
                inline, index = argv[index], index + 1
            out.append((name, inline, True))
        elif arg.startswith("-") and len(arg) > 1:
            index = _short_bundle(arg, argv, index, out)
        else:
            # first positional: everything from here on is the command
            out += [("", rest, False) for rest in argv[index - 1:]]
            break
    return out


def _short_bundle(arg: str, argv: Sequence[str], index: int,
                  out: list[tuple[str, str, bool]]) -> int:
    position = 1
    while position < len(arg):
        name = "-" + arg[position]
        opt = _lookup(name)
        position += 1
        if opt.arg is None:
            out.append((name, "", True))
            continue
        if position < len(arg):
            out.append((name, arg[position:], True))
        elif index < len(argv):
            out.append((name, argv[index], True))
            index += 1
        else:
            raise ConfigError(f"Option {name} requires an argument")
        break
    return index


def _lookup(name: str) -> Option:
    opt = _BY_NAME.get(name)
    if opt is None:
        raise ConfigError(f"Unknown option: {name}")
    return opt


def _mode(tokens: list[tuple[str, str, bool]], prog: str) -> str:
    mode = mode_for(prog)
    for name, value, is_option in tokens:
        if is_option and name == "--mode":
            if value not in (PASST, PASTA):
                raise ConfigError(f"Invalid mode: {value} (use passt or pasta)")
            mode = value
    for name, _, is_option in tokens:
        if is_option and name in ("-h", "--help"):
            raise ShowText(usage(mode))
        if is_option and name == "--version":
            raise ShowText(version_text())
    return mode


# Handlers: (config key, converter) for single-valued options.
def _addr(version: int | None = None) -> Callable[[str, str], str]:
    def convert(value: str, name: str) -> str:
        try:
            parsed = ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(f"Invalid address for {name}: {value}") from None
        if version and parsed.version != version:
            raise ConfigError(f"Invalid address for {name}: {value}")
        return str(parsed)
    return convert


def _int_range(low: int, high: int) -> Callable[[str, str], int]:
    def convert(value: str, name: str) -> int:
        if not is_decimal(value) or not low <= int(value) <= high:
            raise ConfigError(f"Invalid value for {name}: {value} (must be {low} to {high})")
        return int(value)
    return convert


def _size(value: str, name: str) -> int:
    number, suffix = (value[:-1], value[-1].lower()) if value[-1:].isalpha() else (value, "")
    if not is_decimal(number) or (suffix and suffix not in SIZE_SUFFIXES):
        raise ConfigError(f"Invalid size for {name}: {value}")
    size = int(number) * SIZE_SUFFIXES.get(suffix, 1)
    if size > MAX_SIZE:
        raise ConfigError(f"Invalid size for {name}: {value} (at most 1t)")
    return size


def _ifname(value: str, name: str) -> str:
    if not 0 < len(value) < IFNAMSIZ or "/" in value or any(c.isspace() for c in value):
        raise ConfigError(f"Invalid interface name for {name}: {value}")
    return value


def _mac(value: str, name: str) -> str:
    parts = value.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                  for p in parts):
        raise ConfigError(f"Invalid MAC address for {name}: {value}")
    return value.lower()


def _runas(value: str, name: str) -> str:
    user, sep, group = value.partition(":")
    if not user or (sep and not group) or any(c.isspace() for c in value):
        raise ConfigError(f"Invalid user for {name}: {value}")
    return value


def _text(value: str, name: str) -> str:
    if not value:
        raise ConfigError(f"Empty value for {name}")
    return value


def _netmask(value: str, name: str) -> int:
    """A prefix length or a dotted netmask (leading ones only, not a host
    mask such as 0.0.0.255)."""
    if is_decimal(value) and int(value) <= 32:
        return int(value)
    try:
        mask = int(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(f"Invalid netmask for {name}: {value}") from None
    prefix = bin(mask).count("1")
    if mask != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        raise ConfigError(f"Invalid netmask for {name}: {value}")
    return prefix


SINGLE: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "--log-file": ("log_file", _text), "--log-size": ("log_size", _size),
    "--runas": ("runas", _runas), "--pcap": ("pcap", _text), "--pid": ("pid_file", _text),
    "--pid-file": ("pid_file", _text), "--mtu": ("mtu", _int_range(MIN_MTU, MAX_MTU)),
    "--netmask": ("prefix4", _netmask), "--mac-addr": ("mac_addr", _mac),
    "--interface": ("interface", _ifname),
    "--outbound-if4": ("outbound_if4", _ifname), "--outbound-if6": ("outbound_if6", _ifname),
    "--map-host-loopback": ("map_host_loopback", _addr()),
    "--map-guest-addr": ("map_guest_addr", _addr()),
    "--socket": ("socket_path", _text), "--fd": ("fd", _int_range(0, 1 << 30)),
    "--ns-ifname": ("ns_ifname", _ifname), "--userns": ("userns", _text),
    "--netns": ("netns", _text), "--ns-mac-addr": ("ns_mac_addr", _mac),
    "--max-flows": ("max_flows", _int_range(1, 1 << 20)),
}
FLAGS = {"--debug": "debug", "--trace": "trace", "--quiet": "quiet",
         "--foreground": "foreground", "--stderr": "stderr", "--no-dhcp-dns": "no_dhcp_dns",
         "--no-dhcp-search": "no_dhcp_search", "--no-tcp": "no_tcp", "--no-udp": "no_udp",
         "--no-icmp": "no_icmp", "--no-dhcp": "no_dhcp", "--no-ndp": "no_ndp",
         "--no-dhcpv6": "no_dhcpv6", "--no-ra": "no_ra", "--freebind": "freebind",
         "--no-map-gw": "no_map_gw", "--ipv4-only": "ipv4_only", "--ipv6-only": "ipv6_only",
         "--one-off": "one_off", "--netns-only": "netns_only",
         "--no-netns-quit": "no_netns_quit", "--config-net": "config_net",
         "--no-splice": "no_splice", "--no-copy-routes": "no_copy_routes",
         "--no-copy-addrs": "no_copy_addrs"}
PER_FAMILY = {"--address": ("address4", "address6"), "--gateway": ("gateway4", "gateway6"),
              "--outbound": ("outbound4", "outbound6")}
IGNORED = {"--mode", "--map-gw"}


def _apply(opt: Option, value: str, values: dict[str, Any], seen: set[str]) -> None:
    name = opt.long
    if name in IGNORED:
        return
    if name in FLAGS:
        values[FLAGS[name]] = True
        if name == "--trace":
            values["debug"] = True
        return
    if name in PER_FAMILY:
        address = _addr()(value, name)
        key = PER_FAMILY[name][1 if ":" in address else 0]
        _once(key, name, seen)
        values[key] = address
        return
    if name == "--dns":
        _dns(value, values)
        return
    if name == "--dns-forward":
        values["dns_forward"] = values.get("dns_forward", ()) + (_addr()(value, name),)
        return
    if name == "--search":
        _search(value, values)
        return
    key, convert = SINGLE[name]
    _once(key, name, seen)
    values[key] = convert(value, name)


def _once(key: str, name: str, seen: set[str]) -> None:
    if key in seen:
        raise ConfigError(f"Multiple {name} options given")
    seen.add(key)


def _dns(value: str, values: dict[str, Any]) -> None:
    if value == "none":
        values["dns_none"] = True
        return
    values["dns"] = values.get("dns", ()) + (_addr()(value, "-D"),)


def _search(value: str, values: dict[str, Any]) -> None:
    if value == "none":
        values["search_none"] = True
        return
    domains = tuple(d for d in value.replace(",", " ").split() if d)
    for domain in domains:
        labels = domain.rstrip(".").split(".")
        if len(domain) > 253 or any(not 0 < len(label) < 64 for label in labels):
            raise ConfigError(f"Invalid search domain: {domain}")
    values["search"] = values.get("search", ()) + domains


def _forwardings(values: dict[str, Any], multi: dict[str, list[str]], mode: str) -> None:
    default = ["auto"] if mode == PASTA else ["none"]
    values["tcp_ports"] = parse_forward(multi["-t"] or default, mode, "-t")
    values["udp_ports"] = parse_forward(multi["-u"] or default, mode, "-u")
    if mode == PASTA:
        values["tcp_ns"] = parse_forward(multi["-T"] or default, mode, "-T")
        values["udp_ns"] = parse_forward(multi["-U"] or default, mode, "-U")


def _check_encoding(name: str, value: str | None) -> None:
    """Option values travel to the worker as msgpack strings: UTF-8 only
    (the command, which only the broker uses, may be any bytes)."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"Invalid value for {name}: not UTF-8") from None


def _positionals(values: dict[str, Any], positional: list[str], mode: str) -> None:
    if not positional:
        return
    if mode == PASST:
        raise ConfigError(f"Unexpected argument: {positional[0]}")
    if len(positional) == 1 and is_decimal(positional[0]):
        if not 0 < int(positional[0]) <= PID_MAX_LIMIT:
            raise ConfigError(f"Invalid PID: {positional[0]}")
        values["target_pid"] = int(positional[0])
        return
    values["command"] = tuple(positional)


def _check_combinations(values: dict[str, Any]) -> None:
    if values.get("ipv4_only") and values.get("ipv6_only"):
        raise ConfigError("Options -4 and -6 are mutually exclusive")
    has_target = values.get("netns") or values.get("target_pid") is not None
    if values.get("netns") and (values.get("target_pid") is not None or values.get("command")):
        raise ConfigError("--netns cannot be combined with a PID or a command")
    if values.get("netns_only") and not has_target:
        raise ConfigError("--netns-only requires --netns or a PID")
    if values.get("userns") and not has_target:
        raise ConfigError("--userns requires --netns or a PID")
    if values.get("fd") is not None and values.get("socket_path"):
        raise ConfigError("Options --fd and --socket are mutually exclusive")
