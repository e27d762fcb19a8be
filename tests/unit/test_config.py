"""The passt/pasta command line: defaults per mode, every option of
``OPTIONS`` in each of its documented forms, one-line errors, help, version."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt_sep import __version__, handoff
from passt_sep.config import (
    CAPABILITIES,
    OPTIONS,
    Config,
    ConfigError,
    Mode,
    ShowText,
    mode_for,
    parse_args,
    usage,
    version_text,
)
from passt_sep.handoff import WorkerConfig
from passt_sep.ports import Forwarding, ForwardRule

NONE, AUTO = Forwarding("none", ()), Forwarding("auto", ())
PROG = {"passt": "passt-sep", "pasta": "pasta-sep"}
BY_LONG = {opt.long: opt for opt in OPTIONS}


def parse(*argv: str, mode: str = "passt") -> Config:
    return parse_args(list(argv), PROG[mode])


def error(*argv: str, mode: str = "passt") -> str:
    with pytest.raises(ConfigError) as info:
        parse(*argv, mode=mode)
    assert type(info.value) is ConfigError
    message = str(info.value)
    assert message and "\n" not in message
    return message


# -- defaults -------------------------------------------------------------------------

def test_passt_defaults() -> None:
    config = parse()
    assert config == Config(mode="passt")
    assert (config.tcp_ports, config.udp_ports, config.tcp_ns, config.udp_ns) == (
        NONE, NONE, NONE, NONE)
    assert (config.max_flows, config.mtu, config.socket_path, config.fd) == (8192, None,
                                                                            None, None)
    assert config.command == () and config.target_pid is None
    assert not any(getattr(config, flag) for flag in ("debug", "quiet", "foreground",
                                                      "no_tcp", "one_off", "no_map_gw"))


def test_pasta_defaults() -> None:
    config = parse(mode="pasta")
    assert config == Config(mode="pasta", tcp_ports=AUTO, udp_ports=AUTO, tcp_ns=AUTO,
                            udp_ns=AUTO, no_dhcp_dns=True, no_dhcp_search=True)


@pytest.mark.parametrize("prog, mode", [
    ("passt", "passt"), ("passt-sep", "passt"), ("/usr/bin/passt.avx2", "passt"),
    ("qemu-helper", "passt"), ("", "passt"), ("/opt/pasta/bin/passt", "passt"),
    ("pasta", "pasta"), ("pasta-sep", "pasta"), ("/usr/local/bin/pasta.avx2", "pasta"),
])
def test_mode_follows_program_name(prog: str, mode: str) -> None:
    assert mode_for(prog) is Mode(mode)
    assert parse_args([], prog).mode is Mode(mode)


def test_mode_option_overrides_program_name() -> None:
    assert parse("--mode", "pasta") == parse(mode="pasta")
    assert parse("--mode=passt", mode="pasta") == parse()
    assert parse("--mode", "pasta", "--mode", "passt").mode is Mode.PASST  # last one wins
    assert error("--mode", "vde") == "Invalid mode: vde (use passt or pasta)"


def test_log_size_default_is_the_documented_one_mebibyte() -> None:
    assert BY_LONG["--log-size"].default == "1m"
    assert parse("-l", "/tmp/passt-sep.log").log_size == 1 << 20


# -- every option ------------------------------------------------------------------

# long option -> (value or None for a flag, expected Config changes, extra argv, mode)
CASES: dict[str, tuple[str | None, dict, tuple[str, ...], str]] = {
    "--debug": (None, {"debug": True}, (), "passt"),
    "--trace": (None, {"trace": True, "debug": True}, (), "passt"),
    "--quiet": (None, {"quiet": True}, (), "passt"),
    "--foreground": (None, {"foreground": True}, (), "passt"),
    "--stderr": (None, {"stderr": True}, (), "passt"),
    "--log-file": ("/tmp/passt-sep.log", {"log_file": "/tmp/passt-sep.log"}, (), "passt"),
    "--log-size": ("64k", {"log_size": 65536}, (), "passt"),
    "--runas": ("1000:1000", {"runas": "1000:1000"}, (), "passt"),
    "--pcap": ("/tmp/dump.pcap", {"pcap": "/tmp/dump.pcap"}, (), "passt"),
    "--pid": ("/run/p.pid", {"pid_file": "/run/p.pid"}, (), "passt"),
    "--mtu": ("1500", {"mtu": 1500}, (), "passt"),
    "--address": ("192.0.2.5", {"address4": "192.0.2.5"}, (), "passt"),
    "--netmask": ("255.255.255.0", {"prefix4": 24}, (), "passt"),
    "--mac-addr": ("02:00:00:AB:CD:EF", {"mac_addr": "02:00:00:ab:cd:ef"}, (), "passt"),
    "--gateway": ("2001:db8::1", {"gateway6": "2001:db8::1"}, (), "passt"),
    "--interface": ("eth0", {"interface": "eth0"}, (), "passt"),
    "--outbound": ("2001:DB8::5", {"outbound6": "2001:db8::5"}, (), "passt"),
    "--outbound-if4": ("eth1", {"outbound_if4": "eth1"}, (), "passt"),
    "--outbound-if6": ("wlan0", {"outbound_if6": "wlan0"}, (), "passt"),
    "--dns": ("192.0.2.53", {"dns": ("192.0.2.53",)}, (), "passt"),
    "--dns-forward": ("192.0.2.253", {"dns_forward": ("192.0.2.253",)}, (), "passt"),
    "--search": ("example.test lab.example.test",
                 {"search": ("example.test", "lab.example.test")}, (), "passt"),
    "--no-dhcp-dns": (None, {"no_dhcp_dns": True}, (), "passt"),
    "--no-dhcp-search": (None, {"no_dhcp_search": True}, (), "passt"),
    "--dhcp-dns": (None, {"no_dhcp_dns": False}, (), "pasta"),
    "--dhcp-search": (None, {"no_dhcp_search": False}, (), "pasta"),
    "--dns-host": ("192.0.2.53", {"dns_host": ("192.0.2.53",)}, (), "passt"),
    "--host-lo-to-ns-lo": (None, {"host_lo_to_ns_lo": True}, (), "pasta"),
    "--no-tcp": (None, {"no_tcp": True}, (), "passt"),
    "--no-udp": (None, {"no_udp": True}, (), "passt"),
    "--no-icmp": (None, {"no_icmp": True}, (), "passt"),
    "--no-dhcp": (None, {"no_dhcp": True}, (), "passt"),
    "--no-ndp": (None, {"no_ndp": True}, (), "passt"),
    "--no-dhcpv6": (None, {"no_dhcpv6": True}, (), "passt"),
    "--no-ra": (None, {"no_ra": True}, (), "passt"),
    "--freebind": (None, {"freebind": True}, (), "passt"),
    "--no-map-gw": (None, {"no_map_gw": True}, (), "passt"),
    "--map-gw": (None, {}, (), "passt"),
    "--map-host-loopback": ("192.0.2.2", {"map_host_loopback": "192.0.2.2"}, (), "passt"),
    "--map-guest-addr": ("2001:db8::3", {"map_guest_addr": "2001:db8::3"}, (), "passt"),
    "--ipv4-only": (None, {"ipv4_only": True}, (), "passt"),
    "--ipv6-only": (None, {"ipv6_only": True}, (), "passt"),
    "--tcp-ports": ("22:2222", {"tcp_ports": Forwarding("spec", (ForwardRule(22, 22, 2222),))},
                    (), "passt"),
    "--udp-ports": ("53", {"udp_ports": Forwarding("spec", (ForwardRule(53, 53, 53),))},
                    (), "passt"),
    "--max-flows": ("100", {"max_flows": 100}, (), "passt"),
    "--busy-poll": ("0", {"busy_poll": 0}, (), "passt"),
    "--socket": ("/tmp/s.socket", {"socket_path": "/tmp/s.socket"}, (), "passt"),
    "--fd": ("3", {"fd": 3, "one_off": True}, (), "passt"),
    "--one-off": (None, {"one_off": True}, (), "passt"),
    "--ns-ifname": ("eth0", {"ns_ifname": "eth0"}, (), "pasta"),
    "--tcp-ns": ("8080", {"tcp_ns": Forwarding("spec", (ForwardRule(8080, 8080, 8080),))},
                 (), "pasta"),
    "--udp-ns": ("none", {"udp_ns": NONE}, (), "pasta"),
    "--userns": ("/proc/1/ns/user", {"userns": "/proc/1/ns/user", "netns": "ns1"},
                 ("--netns", "ns1"), "pasta"),
    "--netns": ("/run/netns/ns1", {"netns": "/run/netns/ns1"}, (), "pasta"),
    "--netns-only": (None, {"netns_only": True, "target_pid": 4242}, ("4242",), "pasta"),
    "--no-netns-quit": (None, {"no_netns_quit": True}, (), "pasta"),
    "--config-net": (None, {"config_net": True}, (), "pasta"),
    "--ns-mac-addr": ("02:00:00:00:00:01", {"ns_mac_addr": "02:00:00:00:00:01"}, (), "pasta"),
    "--no-splice": (None, {"no_splice": True}, (), "pasta"),
    "--no-copy-routes": (None, {"no_copy_routes": True}, (), "pasta"),
    "--no-copy-addrs": (None, {"no_copy_addrs": True}, (), "pasta"),
    "--clat": (None, {"clat": True}, (), "pasta"),
    "--nat64-prefix": ("2001:DB8:122::/48", {"clat": True, "nat64_prefix": "2001:db8:122::/48"},
                       (), "passt"),
}
SPECIAL = {"--help", "--version", "--mode", "--print-capabilities", "--vhost-user"}


def test_every_option_has_a_case() -> None:
    assert set(CASES) | SPECIAL == set(BY_LONG)
    for name, (value, _, _, mode) in CASES.items():
        opt = BY_LONG[name]
        assert (value is None) == (opt.arg is None), name
        assert opt.modes in ("both", mode), name


def forms(name: str, value: str | None) -> list[list[str]]:
    short = BY_LONG[name].short
    if value is None:
        return [[name]] + ([[short]] if short else [])
    out = [[name, value], [f"{name}={value}"]]
    if short:
        out += [[short, value], [short + value]]
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_option_in_every_form(name: str) -> None:
    value, changes, extra, mode = CASES[name]
    expected = replace(parse(mode=mode), **changes)
    for argv in forms(name, value):
        assert parse(*argv, *extra, mode=mode) == expected, argv
    if BY_LONG[name].modes == "both":
        other = "pasta" if mode == "passt" else "passt"
        assert parse(*forms(name, value)[0], *extra, mode=other) == replace(
            parse(mode=other), **changes)


@pytest.mark.parametrize("name", sorted(n for n in CASES if BY_LONG[n].modes != "both"
                                         and n != "--fd"))
def test_mode_specific_option_refused_in_the_other_mode(name: str) -> None:
    value, _, extra, mode = CASES[name]
    other = "pasta" if mode == "passt" else "passt"
    for argv in forms(name, value):
        given_as = argv[0].split("=")[0] if argv[0].startswith("--") else argv[0][:2]
        assert error(*argv, *extra, mode=other) == f"{given_as} is only valid in {mode} mode"


@pytest.mark.parametrize("argv", [["-F", "5"], ["--fd=5"], ["--fd", "5", "--netns", "n"]])
def test_pasta_refuses_a_pre_opened_tap(argv: list[str]) -> None:
    """pasta takes -F as a tap device's fd; pasta-sep creates its own tap."""
    given_as = argv[0].split("=")[0]
    assert error(*argv, mode="pasta") == (
        f"{given_as}: a pre-opened tap device is not supported by pasta-sep, which creates "
        "the tap itself")


def test_both_families_of_per_family_options() -> None:
    config = parse("-a", "192.0.2.5", "-a", "2001:db8::5", "-g", "192.0.2.1", "-g", "fe80::1",
                   "-o", "192.0.2.9", "-o", "::ffff:1.2.3.4")
    assert (config.address4, config.address6) == ("192.0.2.5", "2001:db8::5")
    assert (config.gateway4, config.gateway6) == ("192.0.2.1", "fe80::1")
    assert (config.outbound4, config.outbound6) == ("192.0.2.9", "::ffff:102:304")


def test_repeatable_options_accumulate() -> None:
    config = parse("-D", "192.0.2.53", "--dns", "2001:db8::53", "--dns-forward", "192.0.2.1",
                   "--dns-forward", "192.0.2.2", "-S", "a.test,b.test", "-S", "c.test",
                   "-t", "22", "-t", "80:8080", "-u", "53")
    assert config.dns == ("192.0.2.53", "2001:db8::53")
    assert config.dns_forward == ("192.0.2.1", "192.0.2.2")
    assert config.search == ("a.test", "b.test", "c.test")
    assert config.tcp_ports == Forwarding("spec", (ForwardRule(22, 22, 22),
                                                   ForwardRule(80, 80, 8080)))


def test_none_values_of_dns_and_search() -> None:
    config = parse("-D", "none", "-S", "none")
    assert (config.dns_none, config.dns, config.search_none, config.search) == (
        True, (), True, ())


def test_pasta_port_options() -> None:
    config = parse("-t", "none", "-u", "22", "-T", "auto", "-U", "53:5353", mode="pasta")
    assert (config.tcp_ports, config.tcp_ns, config.udp_ns.rules) == (
        NONE, AUTO, (ForwardRule(53, 53, 5353),))
    assert config.udp_ports == Forwarding("spec", (ForwardRule(22, 22, 22),))
    assert parse("-t", "all").tcp_ports.mode == "all"
    assert error("-t", "all", mode="pasta") == \
        "'all' port forwarding is only allowed for passt (option -t)"
    assert error("--tcp-ports", "auto") == \
        "'auto' port forwarding is only allowed for pasta (option -t)"
    assert error("--udp-ns=0", mode="pasta") == "Invalid port specifier: 0 (option -U)"


@pytest.mark.parametrize("argv, changes", [
    (["-dfq"], {"debug": True, "foreground": True, "quiet": True}),
    (["-dm1500"], {"debug": True, "mtu": 1500}),
    (["-dm", "1500"], {"debug": True, "mtu": 1500}),
    (["-t22,80"], {"tcp_ports": Forwarding("spec", (ForwardRule(22, 22, 22),
                                                    ForwardRule(80, 80, 80)))}),
    (["-1fs", "/tmp/x"], {"one_off": True, "foreground": True, "socket_path": "/tmp/x"}),
    (["-n24"], {"prefix4": 24}),
    (["-D", "::1", "-D::2"], {"dns": ("::1", "::2")}),
])
def test_short_option_bundles(argv: list[str], changes: dict) -> None:
    assert parse(*argv) == replace(parse(), **changes)


@pytest.mark.parametrize("value, size", [("40960", 40960), ("0x10000", 65536), ("64k", 65536),
                                         ("64K", 65536), ("1m", 1 << 20), ("3M", 3 << 20),
                                         ("2g", 2 << 30)])
def test_log_sizes(value: str, size: int) -> None:
    assert parse("--log-size", value).log_size == size


@pytest.mark.parametrize("value, prefix", [("24", 24), ("0", 0), ("32", 32), ("8", 8),
                                           ("255.255.255.0", 24), ("255.255.0.0", 16),
                                           ("255.255.255.255", 32), ("255.255.255.252", 30),
                                           ("128.0.0.0", 1), ("0.0.0.0", 0)])
def test_netmasks(value: str, prefix: int) -> None:
    assert parse("-n", value).prefix4 == prefix


@pytest.mark.parametrize("value", ["0.0.0.255", "0.0.255.255", "0.255.255.255"])
def test_host_masks_are_not_netmasks(value: str) -> None:
    assert error("-n", value) == f"Invalid netmask for --netmask: {value}"


@pytest.mark.parametrize("runas", ["nobody", "1000", "1000:1000", "user:group", "0:0"])
def test_runas_forms(runas: str) -> None:
    assert parse("--runas", runas).runas == runas


# -- pasta's positional arguments --------------------------------------------------------

@pytest.mark.parametrize("argv, changes", [
    (["4242"], {"target_pid": 4242}),
    (["sh", "-c", "exit 3"], {"command": ("sh", "-c", "exit 3")}),
    (["-d", "ls", "-l", "--debug"], {"debug": True, "command": ("ls", "-l", "--debug")}),
    (["--", "-x", "y"], {"command": ("-x", "y")}),
    (["--config-net", "--", "4242"], {"config_net": True, "target_pid": 4242}),
    (["12", "34"], {"command": ("12", "34")}),
    (["-"], {"command": ("-",)}),
    (["--netns-only", "--netns", "n1"], {"netns_only": True, "netns": "n1"}),
])
def test_pasta_positionals(argv: list[str], changes: dict) -> None:
    assert parse(*argv, mode="pasta") == replace(parse(mode="pasta"), **changes)


# -- errors -------------------------------------------------------------------------

MTU_RANGE = "(must be 68 to 65535, or 0 to advertise none)"


@pytest.mark.parametrize("argv, mode, message", [
    (["--bogus"], "passt", "Unknown option: --bogus"),
    (["--nosuch-option=3"], "passt", "Unknown option: --nosuch-option"),
    (["-x"], "passt", "Unknown option: -x"),
    (["-dZ"], "passt", "Unknown option: -Z"),
    (["--debug=yes"], "passt", "Option --debug takes no argument"),
    (["--mtu"], "passt", "Option --mtu requires an argument"),
    (["-m"], "passt", "Option -m requires an argument"),
    (["-dm"], "passt", "Option -m requires an argument"),
    (["--mtu", "67"], "passt", f"Invalid value for --mtu: 67 {MTU_RANGE}"),
    (["-m", "65536"], "passt", f"Invalid value for --mtu: 65536 {MTU_RANGE}"),
    (["--mtu=1500b"], "passt", f"Invalid value for --mtu: 1500b {MTU_RANGE}"),
    (["--mtu="], "passt", f"Invalid value for --mtu:  {MTU_RANGE}"),
    (["--mtu", "-1"], "passt", f"Invalid value for --mtu: -1 {MTU_RANGE}"),
    (["--mtu", "0x"], "passt", f"Invalid value for --mtu: 0x {MTU_RANGE}"),
    (["--mtu", "09"], "passt", f"Invalid value for --mtu: 09 {MTU_RANGE}"),
    (["--max-flows", "0"], "passt", "Invalid value for --max-flows: 0 (must be 1 to 1048576)"),
    (["--max-flows", "1048577"], "passt",
     "Invalid value for --max-flows: 1048577 (must be 1 to 1048576)"),
    (["--busy-poll", "-1"], "pasta", "Invalid value for --busy-poll: -1 (must be 0 to 10000)"),
    (["--busy-poll", "10001"], "passt",
     "Invalid value for --busy-poll: 10001 (must be 0 to 10000)"),
    (["-F", "x"], "passt", "Invalid value for --fd: x (must be a file descriptor number)"),
    (["-a", "192.0.2"], "passt", "Invalid address for --address: 192.0.2"),
    (["-g", "2001:db8::g"], "passt", "Invalid address for --gateway: 2001:db8::g"),
    (["-o", "eth0"], "passt", "Invalid address for --outbound: eth0"),
    (["-D", "dns.example"], "passt", "Invalid address for -D: dns.example"),
    (["--dns-forward", "1.2.3.4.5"], "passt", "Invalid address for --dns-forward: 1.2.3.4.5"),
    (["--map-host-loopback", "x"], "passt", "Invalid address for --map-host-loopback: x"),
    (["--map-guest-addr", ""], "passt", "Invalid address for --map-guest-addr: "),
    (["-n", "33"], "passt", "Invalid netmask for --netmask: 33"),
    (["-n", "255.0.255.0"], "passt", "Invalid netmask for --netmask: 255.0.255.0"),
    (["-n", "/24"], "passt", "Invalid netmask for --netmask: /24"),
    (["-M", "00:11:22:33:44"], "passt", "Invalid MAC address for --mac-addr: 00:11:22:33:44"),
    (["-M", "0:1:2:3:4:5"], "passt", "Invalid MAC address for --mac-addr: 0:1:2:3:4:5"),
    (["-M", "00:11:22:33:44:gg"], "passt",
     "Invalid MAC address for --mac-addr: 00:11:22:33:44:gg"),
    (["--ns-mac-addr", "001122334455"], "pasta",
     "Invalid MAC address for --ns-mac-addr: 001122334455"),
    (["-i", ""], "passt", "Invalid interface name for --interface: "),
    (["-i", "abcdefghijklmnop"], "passt",
     "Invalid interface name for --interface: abcdefghijklmnop"),
    (["--outbound-if4", "a/b"], "passt", "Invalid interface name for --outbound-if4: a/b"),
    (["--outbound-if6", "a b"], "passt", "Invalid interface name for --outbound-if6: a b"),
    (["-I", "eth\t0"], "pasta", "Invalid interface name for --ns-ifname: eth\t0"),
    (["--runas", "user:"], "passt", "Invalid user for --runas: user:"),
    (["--runas", ":group"], "passt", "Invalid user for --runas: :group"),
    (["--runas", "a b"], "passt", "Invalid user for --runas: a b"),
    (["--log-size", "1x"], "passt", "Invalid size for --log-size: 1x"),
    (["--log-size", "k"], "passt", "Invalid size for --log-size: k"),
    (["--log-size", "1.5m"], "passt", "Invalid size for --log-size: 1.5m"),
    (["--log-size="], "passt", "Invalid size for --log-size: "),
    (["-l", ""], "passt", "Empty value for --log-file"),
    (["-p", ""], "passt", "Empty value for --pcap"),
    (["--netns="], "pasta", "Empty value for --netns"),
    (["-S", "a..b"], "passt", "Invalid search domain: a..b"),
    (["-S", "."], "passt", "Invalid search domain: ."),
    (["-S", "x" * 64 + ".test"], "passt", f"Invalid search domain: {'x' * 64}.test"),
    (["-S", ("a" * 60 + ".") * 4 + "bcdefghijklmn"], "passt",
     f"Invalid search domain: {('a' * 60 + '.') * 4}bcdefghijklmn"),
    (["-F", "3", "-s", "/tmp/s"], "passt", "Options --fd and --socket are mutually exclusive"),
    (["--netns", "n1", "4242"], "pasta", "--netns cannot be combined with a PID or a command"),
    (["--netns", "n1", "sh"], "pasta", "--netns cannot be combined with a PID or a command"),
    (["--netns-only"], "pasta", "--netns-only requires --netns or a PID"),
    (["--netns-only", "sh"], "pasta", "--netns-only requires --netns or a PID"),
    (["--userns", "/proc/1/ns/user"], "pasta", "--userns requires --netns or a PID"),
    (["foo"], "passt", "Unexpected argument: foo"),
    (["-d", "--", "-d"], "passt", "Unexpected argument: -d"),
    (["-t", "none", "-t", "22"], "passt",
     "Specific ports (22) cannot be specified together with all/none/auto (option -t)"),
    (["-I", "eth0"], "passt", "-I is only valid in pasta mode"),
    (["--netns", "n1"], "passt", "--netns is only valid in pasta mode"),
    (["-s", "/tmp/s"], "pasta", "-s is only valid in passt mode"),
    (["--one-off"], "pasta", "--one-off is only valid in passt mode"),
    (["--nat64-prefix", "64:ff9b::/80"], "pasta", "Invalid prefix for --nat64-prefix: "
     "64:ff9b::/80: the length must be one of 32, 40, 48, 56, 64, 96 (RFC 6052)"),
    (["--nat64-prefix", "64:ff9b::"], "passt", "Invalid prefix for --nat64-prefix: "
     "64:ff9b::: expected PREFIX/LEN, such as 64:ff9b::/96"),
    (["--nat64-prefix", "64:ff9b::1/96"], "passt", "Invalid prefix for --nat64-prefix: "
     "64:ff9b::1/96: bits set past the prefix length"),
    (["--clat", "-6"], "pasta", "--clat gives the guest IPv4: it cannot be combined with -6"),
])
def test_errors(argv: list[str], mode: str, message: str) -> None:
    assert error(*argv, mode=mode) == message


@pytest.mark.parametrize("argv", [["--mtu", "²"], ["-n", "²"], ["--log-size", "²"],
                                  ["--max-flows", "²"], ["--fd", "²"], ["-F", "³"]])
def test_non_ascii_digits_are_config_errors(argv: list[str]) -> None:
    error(*argv)


def test_superscript_command_is_a_command_not_a_crash() -> None:
    assert parse("²", mode="pasta").command == ("²",)


NOT_UTF8 = os.fsdecode(b"/tmp/\xff\xfe-dir/f\xff")     # as Python decodes such an argv


@pytest.mark.parametrize("option, key, mode", [
    ("-P", "pid_file", "passt"), ("--pid-file", "pid_file", "pasta"), ("-p", "pcap", "passt"),
    ("-l", "log_file", "pasta"), ("-s", "socket_path", "passt"), ("--netns", "netns", "pasta"),
])
def test_paths_take_any_bytes(option: str, key: str, mode: str) -> None:
    """Paths stay in the broker: any bytes a path can hold, never refused
    for not being UTF-8 (the worker gets the fds, not the paths)."""
    config = parse(option, NOT_UTF8, mode=mode)
    assert os.fsencode(getattr(config, key)) == b"/tmp/\xff\xfe-dir/f\xff"
    worker = WorkerConfig.from_config(config)
    assert handoff.config_from_dict(handoff.config_to_dict(worker)) == worker


@pytest.mark.parametrize("argv", [["-S", NOT_UTF8[5:]], ["-I", "e\udcff"],
                                  ["--outbound-if4", "e\udcff"]])
def test_other_values_stay_utf8(argv: list[str]) -> None:
    """Names the worker or the guest is given travel as text: UTF-8 only."""
    assert error(*argv, mode="pasta").endswith(": not UTF-8")


# -- help and version ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_help_lists_the_options_of_the_mode(mode: str) -> None:
    for argv in (["-h"], ["--help"], ["-dh"], ["--mtu", "1", "-h"]):
        with pytest.raises(ShowText) as info:
            parse(*argv, mode=mode)
        assert info.value.text == usage(mode)
    text = usage(mode)
    prog = PROG[mode]
    assert text.startswith(f"Usage: {prog} [OPTION]...")
    for opt in OPTIONS:
        shown = f" {opt.long}" in text
        assert shown == (opt.modes in ("both", mode) and not opt.refused), opt.long
        if shown and opt.default:
            assert f"(default: {opt.default})" in text
        if shown and opt.short:
            assert f"{opt.short}, {opt.long}" in text
    if mode == "pasta":
        assert f"{prog} [OPTION]... PID" in text
        assert f"{prog} [OPTION]... --netns [PATH|NAME]" in text


def test_help_follows_the_mode_option_and_bad_options_come_first() -> None:
    with pytest.raises(ShowText) as info:
        parse("--help", "--mode", "pasta")
    assert info.value.text == usage("pasta")
    assert error("--bogus", "-h") == "Unknown option: --bogus"
    assert error("--mode", "x", "-h") == "Invalid mode: x (use passt or pasta)"


def test_version() -> None:
    with pytest.raises(ShowText) as info:
        parse("--version", mode="pasta")
    assert info.value.text == version_text()
    assert info.value.text.splitlines()[0] == f"passt-sep {__version__}"
    assert "GPLv2+" in info.value.text
    with pytest.raises(ShowText) as info:
        parse("--version", "-h")
    assert info.value.text == version_text()
    with pytest.raises(ShowText) as info:
        parse("-h", "--version")
    assert info.value.text == usage("passt")


def test_show_text_is_not_a_config_error() -> None:
    assert not issubclass(ShowText, ConfigError)


# -- serialisation and properties -------------------------------------------------------

TOKENS = [name for opt in OPTIONS for name in (opt.short, opt.long) if name] + [
    "--", "-", "--bogus", "-dq", "22", "none", "auto", "all", "192.0.2.1", "::1", "eth0",
    "1500", "64k", "255.255.255.0", "02:00:00:00:00:01", "example.test", "--mtu=9000"]
printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


@given(st.lists(st.one_of(st.sampled_from(TOKENS), printable), max_size=8),
       st.sampled_from(["passt", "pasta"]))
def test_any_command_line_is_a_config_help_or_one_line_error(argv: list[str],
                                                             mode: str) -> None:
    try:
        config = parse(*argv, mode=mode)
    except ShowText as shown:
        assert shown.text in (usage("passt"), usage("pasta"), version_text(), CAPABILITIES)
        return
    except ConfigError as exc:
        assert type(exc) is ConfigError
        message = str(exc)
        assert message and "\n" not in message
        return
    assert config.mode in ("passt", "pasta")
    worker = WorkerConfig.from_config(config)        # what the handoff carries of it
    assert handoff.config_from_dict(handoff.config_to_dict(worker)) == worker


# -- the current passt's command lines (callers issue, items 3, 10, 12, 13, 15) --------

def test_fd_implies_one_off_and_refuses_standard_streams() -> None:
    assert parse("-F", "3").one_off and parse("--fd=0x10").fd == 16
    for fd in ("0", "1", "2"):
        assert error("-F", fd) == (f"Invalid value for --fd: {fd} (0, 1 and 2 are standard "
                                   "input, output and error: pass the socket as 3 or above)")


@pytest.mark.parametrize("given, full", [
    ("--config", "--config-net"), ("--conf", "--config-net"), ("--no-spl", "--no-splice"),
    ("--quie", "--quiet"), ("--ns-mac", "--ns-mac-addr"), ("--sock", "--socket"),
    ("--socket-p", "--socket"), ("--pi", "--pid"), ("--print", "--print-capabilities"),
])
def test_long_options_may_be_abbreviated(given: str, full: str) -> None:
    opt = BY_LONG[full]
    value, changes, extra, mode = CASES.get(full, (None, {}, (), "pasta"))
    argv = [given] + ([value] if opt.arg else [])
    if full == "--print-capabilities":
        with pytest.raises(ShowText):
            parse(*argv)
        return
    assert parse(*argv, *extra, mode=mode) == parse(full, *argv[1:], *extra, mode=mode)


@pytest.mark.parametrize("given", ["--no", "--no-d", "--dns-", "--m", "--map"])
def test_ambiguous_prefixes_are_errors(given: str) -> None:
    message = error(given, mode="pasta")
    assert message.startswith(f"Option {given} is ambiguous; possibilities: --")
    assert all(name.startswith(given) for name in message.split(": ", 1)[1].split())


def test_synonyms() -> None:
    assert parse("--socket-path", "/tmp/a.sock") == parse("-s", "/tmp/a.sock")
    assert parse("--pid-file", "/tmp/p") == parse("-P", "/tmp/p") == parse("--pid=/tmp/p")


def test_print_capabilities_prints_what_passt_prints() -> None:
    for mode in ("passt", "pasta"):
        with pytest.raises(ShowText) as info:
            parse("--print-capabilities", mode=mode)
        assert info.value.text == '{\n  "type": "net"\n}'


def test_vhost_user_is_accepted_but_not_with_fd() -> None:
    assert parse("--vhost-user", "-s", "/tmp/v.sock").vhost_user
    assert not parse().vhost_user
    assert "--fd is refused" in error("--vhost-user", "--fd", "5")


def test_dhcp_dns_and_search_defaults_follow_the_mode() -> None:
    pasta = parse(mode="pasta")
    assert pasta.no_dhcp_dns and pasta.no_dhcp_search
    assert not parse("--dhcp-dns", "--dhcp-search", mode="pasta").no_dhcp_dns
    assert not parse("--dhcp-search", mode="pasta").no_dhcp_search
    assert not parse().no_dhcp_dns and not parse().no_dhcp_search
    assert error("--dhcp-dns") == "--dhcp-dns is only valid in pasta mode"
    assert error("--no-dhcp-search", mode="pasta") == "--no-dhcp-search is only valid in " \
        "passt mode"


def test_dns_host_keeps_the_last_per_family() -> None:
    config = parse("--dns-host", "192.0.2.1", "--dns-host", "2001:db8::1",
                   "--dns-host", "192.0.2.2")
    assert config.dns_host == ("2001:db8::1", "192.0.2.2")


def test_accepted_flags_reach_config() -> None:
    config = parse("--freebind", "--host-lo-to-ns-lo", "--no-copy-addrs", "--netns-only",
                   "--netns", "n1", "-d", mode="pasta")
    assert (config.freebind, config.host_lo_to_ns_lo, config.no_copy_addrs,
            config.netns_only, config.debug) == (True, True, True, True, True)
    assert parse("--trace").debug


@pytest.mark.parametrize("value, mtu", [("0", 0), ("65535", 65535), ("0x500", 1280),
                                        ("02400", 1280), ("68", 68), ("+1500", 1500)])
def test_mtu_values_as_passt_reads_them(value: str, mtu: int) -> None:
    assert parse("-m", value).mtu == mtu


def test_small_mtu_needs_ipv4_only_in_pasta_mode() -> None:
    assert error("-m", "100", mode="pasta") == (
        "Invalid value for --mtu: 100 (IPv6 needs an MTU of at least 1280, and the "
        "namespace's interface would lose its IPv6 addresses: use -4 to disable IPv6, or a "
        "larger MTU)")
    assert parse("-m", "100", "-4", mode="pasta").mtu == 100
    assert parse("-m", "0", mode="pasta").mtu == 0
    assert parse("-m", "100").mtu == 100          # passt only advertises it


@pytest.mark.parametrize("argv, changes", [
    (["-4", "-6"], {"ipv6_only": True}),
    (["-6", "-4"], {"ipv4_only": True}),
    (["-46"], {"ipv6_only": True}),
    (["-a", "192.0.2.5", "-a", "192.0.2.6"], {"address4": "192.0.2.6"}),
    (["-g", "192.0.2.1", "-g", "192.0.2.9"], {"gateway4": "192.0.2.9"}),
    (["-o", "192.0.2.2", "-o", "192.0.2.3"], {"outbound4": "192.0.2.3"}),
    (["-m", "1500", "--mtu", "9000"], {"mtu": 9000}),
    (["-P", "a", "--pid-file", "b"], {"pid_file": "b"}),
    (["-i", "a", "-i", "b"], {"interface": "b"}),
    (["--runas", "1000", "--runas", "1001"], {"runas": "1001"}),
])
def test_the_last_option_wins(argv: list[str], changes: dict) -> None:
    assert parse(*argv) == replace(parse(), **changes)


def test_ns_mac_addr_last_wins() -> None:
    assert parse("--ns-mac-addr", "02:00:00:00:00:01", "--ns-mac-addr", "02:00:00:00:00:02",
                 mode="pasta").ns_mac_addr == "02:00:00:00:00:02"


@pytest.mark.parametrize("option, role", [("-a", "assigned to the guest"),
                                          ("-g", "the guest's gateway")])
@pytest.mark.parametrize("value, why", [
    ("127.0.0.1", "a loopback address"), ("::1", "a loopback address"),
    ("0.0.0.0", "the unspecified address"), ("::", "the unspecified address"),
    ("224.0.0.1", "a multicast address"), ("ff02::1", "a multicast address"),
    ("255.255.255.255", "the broadcast address"),
])
def test_unusable_addresses_are_named(option: str, role: str, value: str, why: str) -> None:
    name = BY_LONG["--address" if option == "-a" else "--gateway"].long
    assert error(option, value) == f"Invalid address for {name}: {value} ({why} cannot be {role})"


@pytest.mark.parametrize("value", ["1", "4096", "40959", "0x1000", "39k"])
def test_too_small_log_size(value: str) -> None:
    assert error("--log-size", value) == (f"Invalid size for --log-size: {value} (at least "
                                          "40960 bytes, to leave room for dropping old entries)")


@pytest.mark.parametrize("argv, message", [
    (["-t", "8080", "-t", "auto"], "Port forwarding mode 'auto' conflicts with previous mode "
     "(option -t)"),
    (["-t", "18146:"], "Invalid port specifier: 18146:: no target port after ':' (option -t)"),
    (["-T", "127.0.0.1/8080"], "Invalid port specifier: 127.0.0.1/8080: no address can be "
     "given, these ports are bound on the namespace's loopback (option -T)"),
    (["-t", "0"], "Invalid port specifier: 0 (option -t)"),
])
def test_mistakes_pasta_refuses(argv: list[str], message: str) -> None:
    assert error(*argv, mode="pasta") == message


def test_bracketed_ipv6_port_spec() -> None:
    assert parse("-t", "[::1]/8080", mode="pasta").tcp_ports == Forwarding(
        "spec", (ForwardRule(8080, 8080, 8080, "::1"),))


def test_netmask_in_any_base() -> None:
    assert parse("-n", "0x18").prefix4 == parse("-n", "24").prefix4 == 24


@pytest.mark.parametrize("value, why", [
    ("127.0.0.1", "a loopback address"), ("::1", "a loopback address"),
    ("0.0.0.0", "the unspecified address"), ("224.0.0.1", "a multicast address"),
])
def test_dns_forward_refuses_what_the_guest_cannot_ask(value: str, why: str) -> None:
    """As the current pasta: the forwarded resolver's address must be one
    the guest sends to the gateway, not one of its own."""
    assert error("--dns-forward", value) == f"Invalid DNS forwarding address: {value} ({why})"
    assert parse_args(["--dns-forward", "169.254.1.1"], "pasta-sep").dns_forward == \
        ("169.254.1.1",)
