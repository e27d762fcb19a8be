"""Command lines of the current passt/pasta, end to end: what each option
does at start-up, and the errors that name what is wrong."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest

from topology import GW_ADDR4, HOST_ADDR4, HOST_IFNAME, Topology

QUIET = ("-t", "none", "-u", "none", "-T", "none", "-U", "none")


@pytest.mark.parametrize("command, reason", [
    ("/nonexistent", "No such file or directory"),
    ("no-such-command-anywhere", "No such file or directory"),
    ("/etc", "Permission denied"),
])
def test_a_command_that_cannot_start_is_named(topo: Topology, pasta: str, command: str,
                                              reason: str) -> None:
    result = topo.run_host(pasta, *QUIET, "--", command)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"pasta-sep: Failed to start command {command}: {reason}"]


@pytest.mark.parametrize("argv, message", [
    (["-i", "nosuchif"], "-i nosuchif: no such interface on the host"),
    (["--outbound-if4", "nosuchif"], "--outbound-if4 nosuchif: no such interface on the host"),
    (["-i", "lo"], "-i lo: the namespace's interface would be called lo too, which is its "
     "loopback: name it with -I"),
    (["-m", "100"], "IPv6 needs an MTU of at least 1280"),
    (["-a", "127.0.0.1"], "Invalid address for --address: 127.0.0.1 (a loopback address "
     "cannot be assigned to the guest)"),
    (["--vhost-user"], "--vhost-user is only valid in passt mode"),
    (["--no"], "Option --no is ambiguous"),
])
def test_start_up_errors_name_the_option(topo: Topology, pasta: str, argv: list[str],
                                         message: str) -> None:
    result = topo.run_host(pasta, *QUIET, *argv, "--", "true")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_abbreviated_option_and_last_one_wins(topo: Topology, pasta: str) -> None:
    result = topo.run_host(pasta, *QUIET, "--config", "-4", "-6", "-4", "-a", "192.0.2.9",
                           "-a", "198.51.100.7", "--", "ip", "-4", "-o", "addr", "show",
                           HOST_IFNAME)
    assert result.returncode == 0, result.stderr
    assert "inet 198.51.100.7/" in result.stdout


def _udhcpc_script() -> str:
    handle = tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False, dir="/tmp")
    with handle:
        handle.write('#!/bin/sh\n[ "$1" = bound ] && echo "ip=$ip" && echo "dns=$dns" '
                     '&& echo "search=$search" && echo "mtu=$mtu"\nexit 0\n')
    os.chmod(handle.name, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH
             | stat.S_IXOTH)
    return handle.name


def _lease(topo: Topology, pasta: str, *options: str) -> dict[str, str]:
    script = _udhcpc_script()
    try:
        # as with pasta, the tap is down without --config-net
        result = topo.run_host(pasta, *QUIET, *options, "--", "sh", "-c",
                               f'ip link set dev {HOST_IFNAME} up && exec "$@"', "sh",
                               "busybox", "udhcpc", "-i",
                               HOST_IFNAME, "-f", "-q", "-n", "-t", "5", "-T", "1", "-s",
                               script, "-O", "search", "-O", "mtu")
    finally:
        os.unlink(script)
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def test_pasta_hands_out_dns_only_when_asked(topo: Topology, pasta: str) -> None:
    """As the current pasta: no resolvers or search list by DHCP without
    --dhcp-dns and --dhcp-search."""
    lease = _lease(topo, pasta)
    assert lease["ip"] == HOST_ADDR4
    assert (lease["dns"], lease["search"]) == ("", "")
    asked = _lease(topo, pasta, "--dhcp-dns", "--dhcp-search")
    assert asked["dns"] != "" and asked["search"] == "example.test"


def test_mtu_zero_advertises_none(topo: Topology, pasta: str) -> None:
    assert _lease(topo, pasta, "-m", "0")["mtu"] == ""
    assert _lease(topo, pasta, "-m", "0x5dc")["mtu"] == "1500"


def test_freebind_binds_an_address_the_host_lacks(topo: Topology, pasta: str) -> None:
    spec = ("-t", "192.0.2.77/18180")
    result = topo.run_host(pasta, "-u", "none", "-T", "none", "-U", "none", *spec, "--",
                           "true")
    assert result.returncode == 1
    assert "192.0.2.77:18180 cannot be bound" in result.stderr
    result = topo.run_host(pasta, "-u", "none", "-T", "none", "-U", "none", *spec,
                           "--freebind", "--", "true")
    assert result.returncode == 0, result.stderr


def test_debug_prints_the_configuration(topo: Topology, pasta: str) -> None:
    """-d: the start-up block even in pasta's command mode, which is quiet
    otherwise."""
    result = topo.run_host(pasta, *QUIET, "-d", "--", "true")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert f"    assign: {HOST_ADDR4}" in lines and f"    router: {GW_ADDR4}" in lines
    assert "Forwarding:" not in lines              # every direction is "none"
    quiet = topo.run_host(pasta, *QUIET, "--", "true")
    assert (quiet.returncode, quiet.stderr) == (0, "")


def test_runas_oneself_as_non_root(topo: Topology, pasta: str) -> None:
    for runas in ("65534", "nobody", "65534:65534"):
        result = topo.run_host(pasta, *QUIET, "--runas", runas, "--", "true", rootless=True)
        assert result.returncode == 0, (runas, result.stderr)


def test_exclusion_only_spec_skips_privileged_ports(topo: Topology, pasta: str) -> None:
    """An exclusion-only spec as non-root (here every port below 1100 but
    22): the ports below 1024 cannot be bound and are skipped, as passt does;
    the others are bound (a whole ~22 would need 65534 descriptors)."""
    result = topo.run_host(pasta, "-4", "-u", "none", "-T", "none", "-U", "none",
                           "-t", "~22,~1100-65535", "--", "sh", "-c",
                           "echo started; cat /proc/net/tcp | wc -l", rootless=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "started"

