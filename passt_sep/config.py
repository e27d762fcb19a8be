"""The whole passt/pasta command line, parsed into one immutable ``Config``.

The option table ``OPTIONS`` is the single description of every option: the
parser, ``--help`` and the man-page test all read it.  A bad option or value
raises ``ConfigError`` with one line naming it; ``-h`` and ``--version``
raise ``ShowText``.  No I/O here.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .clat import Nat64Error, Nat64Prefix
from .ports import ConfigError, Forwarding, Mode, is_decimal, parse_forward

__all__ = ["Config", "ConfigError", "Mode", "ShowText", "OPTIONS", "parse_args", "usage"]

BOTH = "both"                       # Option.modes: either Mode
PASST, PASTA = Mode.PASST, Mode.PASTA
IFNAMSIZ = 16
MIN_MTU, MAX_MTU = 68, 65535
IPV6_MIN_MTU = 1280
MIN_LOG_SIZE = 40960                # room to drop old entries, as passt
INT_MAX = (1 << 31) - 1
CAPABILITIES = '{\n  "type": "net"\n}'   # --print-capabilities, as passt prints it
SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MAX_SIZE = 1 << 40
PID_MAX_LIMIT = 1 << 22             # the kernel's largest pid_max
DEFAULT_LOG_SIZE = 1 << 20          # --log-size, as passt
DEFAULT_BUSY_POLL = 100             # --busy-poll, microseconds
MAX_BUSY_POLL = 10_000


class ShowText(Exception):
    """Print ``text`` to standard output and exit 0 (--help, --version)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Config:
    """The parsed command line: every option, with passt's defaults."""

    mode: Mode
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
    dns_host: tuple[str, ...] = ()
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
    vhost_user: bool = False
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
    host_lo_to_ns_lo: bool = False
    """pasta: connections forwarded from the host's loopback keep a loopback
    source in the namespace, instead of the namespace's public address."""
    command: tuple[str, ...] = ()
    target_pid: int | None = None
    max_flows: int = 8192
    busy_poll: int = DEFAULT_BUSY_POLL
    clat: bool = False
    """464XLAT: the guest's IPv4 leaves as IPv6 to the NAT64 prefix."""
    nat64_prefix: str | None = None
    """PREFIX/LEN for --clat; None: discovered by the broker (RFC 7050)."""


# -- the option table -------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One command-line option: its names, argument, modes and help text."""

    short: str | None
    long: str
    arg: str | None        # metavar, or None for a flag
    modes: str             # BOTH, PASST or PASTA
    help: str
    default: str = ""
    aliases: tuple[str, ...] = ()
    refused: str = ""      # recognised, but refused with this reason


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
    Option("-P", "--pid", "FILE", BOTH, "Write own PID to the given file",
           aliases=("--pid-file",)),
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
    Option(None, "--dns-host", "ADDR", BOTH,
           "Host resolver that queries to the --dns-forward address go to",
           "the host's first resolver"),
    Option(None, "--no-dhcp-dns", None, PASST, "No DNS list in DHCP/DHCPv6/NDP"),
    Option(None, "--no-dhcp-search", None, PASST, "No search list in DHCP/DHCPv6/NDP"),
    Option(None, "--dhcp-dns", None, PASTA, "Pass the DNS list via DHCP/DHCPv6/NDP"),
    Option(None, "--dhcp-search", None, PASTA, "Pass the search list via DHCP/DHCPv6/NDP"),
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
    Option(None, "--max-flows", "N", BOTH,
           "Maximum number of concurrent flows, one cap for all of them together: TCP "
           "connections, spliced loopback connections, UDP flows (relayed loopback ones too) "
           "and ICMP echo flows.  Once it is reached, a new flow of any kind is refused and "
           "counted: TCP with a reset, UDP datagrams and echo requests dropped", "8192"),
    Option(None, "--busy-poll", "USEC", BOTH,
           "After a short TCP write to a socket (a likely request) or a short answer "
           "passed to the guest, poll for the reply without sleeping for up to USEC "
           "microseconds, yielding the CPU to other processes meanwhile (0: sleep at "
           "once).  A reply that comes within it skips the wake-up, which costs 10-20 us "
           "in a VM; the price is up to that much CPU per exchange", str(DEFAULT_BUSY_POLL)),
    Option(None, "--clat", None, BOTH,
           "IPv4 for the guest through the network's NAT64: every IPv4 flow leaves the host "
           "as IPv6 to the NAT64 prefix (464XLAT's CLAT, RFC 6877)"),
    Option(None, "--nat64-prefix", "PREFIX/LEN", BOTH,
           "NAT64 prefix for --clat, of 32, 40, 48, 56, 64 or 96 bits (RFC 6052); "
           "implies --clat",
           "discovered by asking the host's resolver for ipv4only.arpa (RFC 7050), "
           "else 64:ff9b::/96"),
    Option("-s", "--socket", "PATH", PASST, "UNIX domain socket path",
           "probe free path starting from /tmp/passt-sep_1.socket",
           aliases=("--socket-path",)),
    Option(None, "--vhost-user", None, PASST,
           "vhost-user back-end: QEMU shares the guest's memory on the socket"),
    Option(None, "--print-capabilities", None, BOTH,
           "Print back-end capabilities in JSON format and exit"),
    Option("-F", "--fd", "FD", PASST,
           "Use FD as pre-opened connected socket; implies --one-off"),
    Option("-1", "--one-off", None, PASST, "Quit after handling one single client"),
    Option("-I", "--ns-ifname", "NAME", PASTA, "Namespace interface name",
           "the name of the host's upstream interface"),
    Option("-T", "--tcp-ns", "SPEC", PASTA, "TCP port forwarding to init namespace", "auto"),
    Option("-U", "--udp-ns", "SPEC", PASTA, "UDP port forwarding to init namespace", "auto"),
    Option(None, "--host-lo-to-ns-lo", None, PASTA,
           "Forwards (-t, -u) from the host's loopback arrive on the namespace's loopback, "
           "from it. Without this they arrive on the namespace's own address, from that "
           "address, and services bound to the namespace's loopback are out of the host's "
           "reach"),
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

# How each option differs from the current passt's, where it does (the man
# pages' COMPATIBILITY section is made from this and ``Option.refused``).
DIFFERENCES: dict[str, str] = {
    "--debug": "prints a summary of the configuration at start, not passt's full dump",
    "--trace": "as --debug, and a line per guest frame (family, protocol, addresses, size)",
    "--stderr": "logs to standard error too (deprecated without effect in passt)",
    "--log-size": "also takes k, m, g and t suffixes; a full log file is emptied and "
                  "starts over",
    "--mtu": "pasta mode: below 1280 needs -4 (passt fails later, setting IPv6 addresses)",
    "--address": "loopback, unspecified, multicast and broadcast addresses are refused",
    "--gateway": "loopback, unspecified, multicast and broadcast addresses are refused",
    "--interface": "pasta mode: -i lo needs -I (passt fails creating the tap)",
    "--outbound-if4": "the interface must exist at start",
    "--outbound-if6": "the interface must exist at start",
    "--map-host-loopback": "one address in all, not one per address family",
    "--map-guest-addr": "one address in all, not one per address family",
    "--tcp-ports": "port 0 is refused; IPv6-bound ports are not also forwarded for IPv4",
    "--udp-ports": "port 0 is refused; not implied by -t; IPv6-bound ports are not also "
                   "forwarded for IPv4",
    "--socket": "the default path is passt-sep_N.socket in $XDG_RUNTIME_DIR or /tmp",
    "--fd": "passt mode only: pasta's pre-opened tap device is refused",
    "--vhost-user": "one queue pair and no live migration (no dirty-page log); "
                    "--fd is refused with it",
}

_BY_NAME = {name: opt for opt in OPTIONS
            for name in (opt.short, opt.long, *opt.aliases) if name}


def usage(mode: str) -> str:
    prog = "pasta-sep" if mode == PASTA else "passt-sep"
    synopsis = (f"Usage: {prog} [OPTION]... [COMMAND [ARG]...]\n"
                f"       {prog} [OPTION]... PID\n"
                f"       {prog} [OPTION]... --netns [PATH|NAME]\n" if mode == PASTA
                else f"Usage: {prog} [OPTION]...\n")
    lines = [synopsis]
    for opt in OPTIONS:
        if opt.modes not in (BOTH, mode) or opt.refused:
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

def mode_for(prog: str) -> Mode:
    return PASTA if "pasta" in os.path.basename(prog) else PASST


def parse_args(argv: Sequence[str], prog: str) -> Config:
    """``argv`` without the program name; ``prog`` picks the mode.

    As with passt, when an option is given more than once the last one
    takes effect (``-a``, ``-g``, ``-o``, ``--dns-host``: the last one per
    address family); ``-D``, ``-S``, ``--dns-forward`` and the port options
    accumulate."""
    tokens = _tokens(argv)
    mode = _mode(tokens, prog)
    values: dict[str, Any] = {"mode": mode, "no_dhcp_dns": mode == PASTA,
                              "no_dhcp_search": mode == PASTA}
    multi: dict[str, list[str]] = {"-t": [], "-u": [], "-T": [], "-U": []}
    positional: list[str] = []
    for name, value, is_option in tokens:
        if not is_option:
            positional.append(value)
            continue
        opt = _BY_NAME[name]
        _check_encoding(opt, name, value)
        if opt.long == "--fd" and mode == PASTA:
            raise ConfigError(f"{name}: a pre-opened tap device is not supported by pasta-sep, "
                              "which creates the tap itself")
        if opt.modes not in (BOTH, mode):
            raise ConfigError(f"{name} is only valid in {opt.modes} mode")
        if opt.refused:
            raise ConfigError(f"{name}: {opt.refused}")
        key = opt.short if opt.short in multi else opt.long
        if key in multi:
            multi[key].append(value)
            continue
        _apply(opt, value, values)
    _forwardings(values, multi, mode)
    _positionals(values, positional, mode)
    _check_combinations(values)
    return Config(**values)


def _tokens(argv: Sequence[str]) -> list[tuple[str, str, bool]]:
    """(option name, value, True) or ("", positional, False), in order; an
    abbreviated long option comes out under its full name."""
    out: list[tuple[str, str, bool]] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            out += [("", rest, False) for rest in argv[index:]]
            break
        if arg.startswith("--"):
            given, eq, inline = arg.partition("=")
            name = _long_name(given)
            opt = _BY_NAME[name]
            if opt.arg is None:
                if eq:
                    raise ConfigError(f"Option {given} takes no argument")
                out.append((name, "", True))
                continue
            if not eq:
                if index >= len(argv):
                    raise ConfigError(f"Option {given} requires an argument")
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


def _long_name(given: str) -> str:
    """The long option ``given`` names, exactly or as an unambiguous prefix
    (as getopt_long: prefixes of one option's synonyms are not ambiguous)."""
    if given in _BY_NAME:
        return given
    matches = [name for name in _BY_NAME if name.startswith("--") and name.startswith(given)
               and given != "--"]
    if not matches:
        raise ConfigError(f"Unknown option: {given}")
    if len({id(_BY_NAME[name]) for name in matches}) > 1:
        raise ConfigError(f"Option {given} is ambiguous; possibilities: " + " ".join(matches))
    return matches[0]


def _mode(tokens: list[tuple[str, str, bool]], prog: str) -> Mode:
    mode = mode_for(prog)
    for name, value, is_option in tokens:
        if is_option and name == "--mode":
            if value not in (PASST, PASTA):
                raise ConfigError(f"Invalid mode: {value} (use passt or pasta)")
            mode = Mode(value)
    for name, _, is_option in tokens:
        if is_option and name in ("-h", "--help"):
            raise ShowText(usage(mode))
        if is_option and name == "--version":
            raise ShowText(version_text())
        if is_option and name == "--print-capabilities":
            raise ShowText(CAPABILITIES)
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


def _unusable(address: str) -> str | None:
    """Why ``address`` cannot be the guest's address or gateway, if it cannot."""
    parsed = ipaddress.ip_address(address)
    if parsed.is_unspecified:
        return "the unspecified address"
    if parsed.is_loopback:
        return "a loopback address"
    if parsed.is_multicast:
        return "a multicast address"
    if parsed == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    return None


ROLES = {"--address": "assigned to the guest", "--gateway": "the guest's gateway"}


def _c_integer(value: str) -> int | None:
    """An integer as C's strtol reads it with base 0 (decimal, 0x hex,
    leading-0 octal), the whole text; None if it is not one."""
    text = value[1:] if value[:1] in "+-" else value
    if not text.isascii() or not text:
        return None
    try:
        if text[:2].lower() == "0x":
            number = int(text[2:], 16) if text[2:] and text[2:].isalnum() else None
        elif text.startswith("0"):
            number = int(text, 8)
        else:
            number = int(text, 10) if text.isdigit() else None
    except ValueError:
        return None
    if number is None:
        return None
    return -number if value.startswith("-") else number


def _int_range(low: int, high: int) -> Callable[[str, str], int]:
    def convert(value: str, name: str) -> int:
        if not is_decimal(value) or not low <= int(value) <= high:
            raise ConfigError(f"Invalid value for {name}: {value} (must be {low} to {high})")
        return int(value)
    return convert


def _mtu(value: str, name: str) -> int:
    number = _c_integer(value)
    if number is None or not (number == 0 or MIN_MTU <= number <= MAX_MTU):
        raise ConfigError(f"Invalid value for {name}: {value} (must be {MIN_MTU} to "
                          f"{MAX_MTU}, or 0 to advertise none)")
    return number


def _fd(value: str, name: str) -> int:
    number = _c_integer(value)
    if number is None or not 0 <= number <= INT_MAX:
        raise ConfigError(f"Invalid value for {name}: {value} (must be a file descriptor "
                          "number)")
    if number <= 2:
        raise ConfigError(f"Invalid value for {name}: {value} (0, 1 and 2 are standard "
                          "input, output and error: pass the socket as 3 or above)")
    return number


def _size(value: str, name: str) -> int:
    number, suffix = (value[:-1], value[-1].lower()) if value[-1:] in "kKmMgGtT" and \
        value[-1:] else (value, "")
    base = _c_integer(number) if number else None
    if base is None or base < 0 or (suffix and suffix not in SIZE_SUFFIXES):
        raise ConfigError(f"Invalid size for {name}: {value}")
    size = base * SIZE_SUFFIXES.get(suffix, 1)
    if size > MAX_SIZE:
        raise ConfigError(f"Invalid size for {name}: {value} (at most 1t)")
    if size < MIN_LOG_SIZE:
        raise ConfigError(f"Invalid size for {name}: {value} (at least {MIN_LOG_SIZE} "
                          "bytes, to leave room for dropping old entries)")
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
    bits = _c_integer(value) if "." not in value else None
    if bits is not None and 0 <= bits <= 32:
        return bits
    try:
        mask = int(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(f"Invalid netmask for {name}: {value}") from None
    prefix = bin(mask).count("1")
    if mask != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        raise ConfigError(f"Invalid netmask for {name}: {value}")
    return prefix


def _nat64_prefix(value: str, name: str) -> str:
    try:
        return str(Nat64Prefix.parse(value))
    except Nat64Error as exc:
        raise ConfigError(f"Invalid prefix for {name}: {exc}") from None


SINGLE: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "--log-file": ("log_file", _text), "--log-size": ("log_size", _size),
    "--runas": ("runas", _runas), "--pcap": ("pcap", _text), "--pid": ("pid_file", _text),
    "--mtu": ("mtu", _mtu),
    "--netmask": ("prefix4", _netmask), "--mac-addr": ("mac_addr", _mac),
    "--interface": ("interface", _ifname),
    "--outbound-if4": ("outbound_if4", _ifname), "--outbound-if6": ("outbound_if6", _ifname),
    "--map-host-loopback": ("map_host_loopback", _addr()),
    "--map-guest-addr": ("map_guest_addr", _addr()),
    "--socket": ("socket_path", _text), "--fd": ("fd", _fd),
    "--ns-ifname": ("ns_ifname", _ifname), "--userns": ("userns", _text),
    "--netns": ("netns", _text), "--ns-mac-addr": ("ns_mac_addr", _mac),
    "--max-flows": ("max_flows", _int_range(1, 1 << 20)),
    "--busy-poll": ("busy_poll", _int_range(0, MAX_BUSY_POLL)),
    "--nat64-prefix": ("nat64_prefix", _nat64_prefix),
}
# flag -> (config key, value); -4 and -6 each clear the other: the last one wins
FLAGS: dict[str, tuple[tuple[str, bool], ...]] = {
    "--debug": (("debug", True),), "--trace": (("trace", True), ("debug", True)),
    "--quiet": (("quiet", True),), "--foreground": (("foreground", True),),
    "--stderr": (("stderr", True),),
    "--no-dhcp-dns": (("no_dhcp_dns", True),), "--dhcp-dns": (("no_dhcp_dns", False),),
    "--no-dhcp-search": (("no_dhcp_search", True),),
    "--dhcp-search": (("no_dhcp_search", False),),
    "--no-tcp": (("no_tcp", True),), "--no-udp": (("no_udp", True),),
    "--no-icmp": (("no_icmp", True),), "--no-dhcp": (("no_dhcp", True),),
    "--no-ndp": (("no_ndp", True),), "--no-dhcpv6": (("no_dhcpv6", True),),
    "--no-ra": (("no_ra", True),), "--freebind": (("freebind", True),),
    "--no-map-gw": (("no_map_gw", True),),
    "--ipv4-only": (("ipv4_only", True), ("ipv6_only", False)),
    "--ipv6-only": (("ipv6_only", True), ("ipv4_only", False)),
    "--one-off": (("one_off", True),), "--netns-only": (("netns_only", True),),
    "--vhost-user": (("vhost_user", True),),
    "--no-netns-quit": (("no_netns_quit", True),), "--config-net": (("config_net", True),),
    "--no-splice": (("no_splice", True),), "--no-copy-routes": (("no_copy_routes", True),),
    "--no-copy-addrs": (("no_copy_addrs", True),),
    "--host-lo-to-ns-lo": (("host_lo_to_ns_lo", True),),
    "--clat": (("clat", True),),
}
PER_FAMILY = {"--address": ("address4", "address6"), "--gateway": ("gateway4", "gateway6"),
              "--outbound": ("outbound4", "outbound6")}
IGNORED = {"--mode", "--map-gw"}


def _apply(opt: Option, value: str, values: dict[str, Any]) -> None:
    name = opt.long
    if name in IGNORED:
        return
    if name in FLAGS:
        values.update(FLAGS[name])
        return
    if name in PER_FAMILY:
        _per_family(name, value, values)
        return
    if name == "--dns":
        _dns(value, values)
        return
    if name == "--dns-forward":
        address = _addr()(value, name)
        why = _unusable(address)
        if why:                         # as pasta: the guest could not tell it from its own
            raise ConfigError(f"Invalid DNS forwarding address: {value} ({why})")
        values["dns_forward"] = values.get("dns_forward", ()) + (address,)
        return
    if name == "--dns-host":
        address = _addr()(value, name)
        others = tuple(a for a in values.get("dns_host", ()) if (":" in a) != (":" in address))
        values["dns_host"] = others + (address,)
        return
    if name == "--search":
        _search(value, values)
        return
    if name in ("--map-host-loopback", "--map-guest-addr") and value == "none":
        values[SINGLE[name][0]] = None           # map nothing
        if name == "--map-host-loopback":
            values["no_map_gw"] = True
        return
    key, convert = SINGLE[name]
    values[key] = convert(value, name)
    if name == "--fd":
        values["one_off"] = True
    if name == "--nat64-prefix":
        values["clat"] = True


def _per_family(name: str, value: str, values: dict[str, Any]) -> None:
    address = _addr()(value, name)
    if name in ROLES:
        why = _unusable(address)
        if why:
            raise ConfigError(f"Invalid address for {name}: {value} ({why} cannot be "
                              f"{ROLES[name]})")
    values[PER_FAMILY[name][1 if ":" in address else 0]] = address


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


def _forwardings(values: dict[str, Any], multi: dict[str, list[str]], mode: Mode) -> None:
    default = ["auto"] if mode == PASTA else ["none"]
    values["tcp_ports"] = parse_forward(multi["-t"] or default, mode, "-t")
    values["udp_ports"] = parse_forward(multi["-u"] or default, mode, "-u")
    if mode == PASTA:
        values["tcp_ns"] = parse_forward(multi["-T"] or default, mode, "-T")
        values["udp_ns"] = parse_forward(multi["-U"] or default, mode, "-U")


# Paths and names of files: any bytes the command line holds (as str with
# surrogate escapes, as Python decodes argv); they stay in the broker.
PATH_OPTIONS = frozenset({"--log-file", "--pcap", "--pid", "--socket", "--netns", "--userns"})


def _check_encoding(opt: Option, name: str, value: str) -> None:
    """Other values are text, addresses and names: UTF-8 only (a search
    domain or interface name the worker is given goes as a msgpack string)."""
    if opt.long in PATH_OPTIONS:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"Invalid value for {name}: not UTF-8") from None


def _positionals(values: dict[str, Any], positional: list[str], mode: Mode) -> None:
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
    has_target = values.get("netns") or values.get("target_pid") is not None
    if values.get("netns") and (values.get("target_pid") is not None or values.get("command")):
        raise ConfigError("--netns cannot be combined with a PID or a command")
    if values.get("netns_only") and not has_target:
        raise ConfigError("--netns-only requires --netns or a PID")
    if values.get("userns") and not has_target:
        raise ConfigError("--userns requires --netns or a PID")
    if values.get("fd") is not None and values.get("socket_path"):
        raise ConfigError("Options --fd and --socket are mutually exclusive")
    if values.get("clat") and values.get("ipv6_only"):
        raise ConfigError("--clat gives the guest IPv4: it cannot be combined with -6")
    if values.get("fd") is not None and values.get("vhost_user"):
        raise ConfigError("--vhost-user needs the listening socket (-s): --fd is refused with it")
    mtu = values.get("mtu")
    if values["mode"] == PASTA and mtu and mtu < IPV6_MIN_MTU and not values.get("ipv4_only"):
        raise ConfigError(f"Invalid value for --mtu: {mtu} (IPv6 needs an MTU of at least "
                          f"{IPV6_MIN_MTU}, and the namespace's interface would lose its IPv6 "
                          "addresses: use -4 to disable IPv6, or a larger MTU)")
