"""pasta mode end to end: the namespace gets the host's configuration (by
--config-net, DHCP, SLAAC and DHCPv6) and reaches the remote by ping."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
import time

import pytest

from topology import (
    GW_ADDR4,
    GW_ADDR6,
    HOST_ADDR4,
    HOST_ADDR6,
    HOST_IFNAME,
    REMOTE_ADDR4,
    REMOTE_ADDR6,
    Topology,
)


def run_pasta(topo: Topology, pasta: str, *args: str, rootless: bool = False,
              timeout: float = 60):
    result = topo.run_host(pasta, *args, rootless=rootless, timeout=timeout)
    return result


# Without --config-net the tap is down, as pasta leaves it: DHCP and SLAAC
# clients run after bringing it up, as on any host.
UP = ("sh", "-c", f'ip link set dev {HOST_IFNAME} up && exec "$@"', "sh")


def ns_json(topo: Topology, pasta: str, *command: str, options: tuple[str, ...] = ("--config-net",),
            rootless: bool = False):
    result = run_pasta(topo, pasta, *options, "--", *command, rootless=rootless)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _addresses(entries: list[dict], ifname: str) -> list[tuple[str, str, int]]:
    found = []
    for link in entries:
        if link["ifname"] != ifname:
            continue
        for info in link.get("addr_info", []):
            if info.get("scope") == "global":
                found.append((info["family"], info["local"], info["prefixlen"]))
    return sorted(found)


def _routes(entries: list[dict]) -> list[tuple[str, str | None]]:
    return sorted((r["dst"], r.get("gateway")) for r in entries if r.get("protocol") != "ra")


def test_config_net_copies_host_addresses_routes_and_mtu(topo: Topology, pasta: str) -> None:
    host_addrs = json.loads(topo.in_host("ip", "-j", "addr", "show").stdout)
    host_routes4 = json.loads(topo.in_host("ip", "-j", "-4", "route").stdout)
    host_routes6 = json.loads(topo.in_host("ip", "-j", "-6", "route").stdout)
    ns_addrs = ns_json(topo, pasta, "ip", "-j", "addr", "show")
    ns_routes4 = ns_json(topo, pasta, "ip", "-j", "-4", "route")
    ns_routes6 = ns_json(topo, pasta, "ip", "-j", "-6", "route")

    assert _addresses(ns_addrs, HOST_IFNAME) == _addresses(host_addrs, HOST_IFNAME) == [
        ("inet", HOST_ADDR4, 24), ("inet6", HOST_ADDR6, 64)]
    assert _routes(ns_routes4) == _routes(host_routes4)
    assert _routes(ns_routes6) == _routes(host_routes6)
    tap = next(link for link in ns_addrs if link["ifname"] == HOST_IFNAME)
    assert tap["mtu"] == 65520
    lo = next(link for link in ns_addrs if link["ifname"] == "lo")
    assert "UP" in lo["flags"]


@pytest.mark.parametrize("target", [REMOTE_ADDR4, GW_ADDR4])
def test_ping_ipv4(topo: Topology, pasta: str, target: str) -> None:
    result = run_pasta(topo, pasta, "--config-net", "--", "ping", "-c", "2", "-W", "3", target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 received" in result.stdout


@pytest.mark.parametrize("target", [REMOTE_ADDR6, GW_ADDR6])
def test_ping_ipv6(topo: Topology, pasta: str, target: str) -> None:
    result = run_pasta(topo, pasta, "--config-net", "--", "ping", "-6", "-c", "2", "-W", "3",
                       target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 received" in result.stdout


def test_options_override_address_gateway_mtu(topo: Topology, pasta: str) -> None:
    addrs = ns_json(topo, pasta, "ip", "-j", "addr", "show",
                    options=("--config-net", "-4", "-a", "198.51.100.77", "-n", "25",
                             "-g", "198.51.100.66", "-m", "1400"))
    routes = ns_json(topo, pasta, "ip", "-j", "route",
                     options=("--config-net", "-4", "-a", "198.51.100.77", "-n", "25",
                              "-g", "198.51.100.66", "-m", "1400"))
    assert _addresses(addrs, HOST_IFNAME) == [("inet", "198.51.100.77", 25)]
    tap = next(link for link in addrs if link["ifname"] == HOST_IFNAME)
    assert tap["mtu"] == 1400
    assert ("default", "198.51.100.66") in _routes(routes)


def test_ipv6_only(topo: Topology, pasta: str) -> None:
    addrs = ns_json(topo, pasta, "ip", "-j", "addr", "show", options=("--config-net", "-6"))
    assert _addresses(addrs, HOST_IFNAME) == [("inet6", HOST_ADDR6, 64)]


def _script(body: str) -> str:
    handle = tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False, dir="/tmp")
    with handle:
        handle.write("#!/bin/sh\n" + body)
    os.chmod(handle.name, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return handle.name


def _env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_busybox_udhcpc_gets_the_host_lease(topo: Topology, pasta: str) -> None:
    script = _script('[ "$1" = bound ] && '
                     'env | grep -E "^(ip|subnet|router|dns|mtu|search|domain|serverid)="\n'
                     'exit 0\n')
    try:
        result = run_pasta(topo, pasta, "--dhcp-dns", "--dhcp-search", "--", *UP, "busybox",
                           "udhcpc", "-i", HOST_IFNAME, "-f", "-q", "-n", "-t", "5", "-T", "1",
                           "-s", script, "-O", "search", "-O", "mtu")
    finally:
        os.unlink(script)
    assert result.returncode == 0, result.stderr
    lease = _env_lines(result.stdout)
    assert lease["ip"] == HOST_ADDR4
    assert lease["subnet"] == "255.255.255.0"
    assert lease["router"] == GW_ADDR4
    assert lease["dns"].split() == [REMOTE_ADDR4]
    assert lease["mtu"] == "65520"
    assert lease["search"].split() == ["example.test"]
    assert lease["serverid"] == GW_ADDR4


def test_isc_dhclient_gets_the_host_lease(topo: Topology, pasta: str, tmp_path) -> None:
    script = _script('case "$reason" in BOUND|REBOOT) env | grep "^new_"; kill $PPID ;; esac\n'
                     'exit 0\n')
    os.chmod(tmp_path, 0o777)
    try:
        result = run_pasta(topo, pasta, "--dhcp-dns", "--", *UP, "dhclient", "-1", "-d", "-sf",
                           script, "-lf", str(tmp_path / "leases"), "-pf", str(tmp_path / "pid"),
                           HOST_IFNAME, timeout=90)
    finally:
        os.unlink(script)
    lease = _env_lines(result.stdout)
    assert lease.get("new_ip_address") == HOST_ADDR4, result.stdout + result.stderr
    assert lease["new_routers"] == GW_ADDR4
    assert lease["new_subnet_mask"] == "255.255.255.0"
    assert lease["new_domain_name_servers"] == REMOTE_ADDR4


def test_slaac_gives_the_host_prefix(topo: Topology, pasta: str) -> None:
    probe = (f"ip link set dev {HOST_IFNAME} up; for i in $(seq 50); do "
             f"ip -6 -j addr show dev {HOST_IFNAME} scope global | grep -q 2001:db8:1: && break; "
             "sleep 0.2; done; ip -6 -j addr show scope global; ip -6 -j route")
    result = run_pasta(topo, pasta, "--", "sh", "-c", probe)
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    addrs, end = decoder.raw_decode(result.stdout)
    routes, _ = decoder.raw_decode(result.stdout[end:].lstrip())
    global_addrs = [(a["local"], a["prefixlen"]) for link in addrs for a in link["addr_info"]
                    if "local" in a]
    assert len(global_addrs) == 1
    address, prefix = global_addrs[0]
    assert address.startswith("2001:db8:1:") and prefix == 64
    default = [r for r in routes if r["dst"] == "default"]
    assert default and default[0]["gateway"].startswith("fe80::")


def test_dhcpv6_gives_the_host_address(topo: Topology, pasta: str, tmp_path) -> None:
    script = _script('case "$reason" in BOUND6|REBOOT6) env | grep "^new_"; kill $PPID ;; esac\n'
                     'exit 0\n')
    os.chmod(tmp_path, 0o777)
    # dhclient binds the link-local address: wait for it, and for DAD (up to 2 s)
    settled = (f"ip -6 addr show dev {HOST_IFNAME} scope link | grep -q inet6 && "
               f"! ip -6 addr show dev {HOST_IFNAME} | grep -q tentative")
    command = (f"ip link set dev {HOST_IFNAME} up; until {settled}; do sleep 0.1; done; "
               f"dhclient -6 -1 -d -sf {script} -lf {tmp_path}/leases6 "
               f"-pf {tmp_path}/pid6 {HOST_IFNAME}")
    try:
        result = run_pasta(topo, pasta, "--dhcp-dns", "--dhcp-search", "--", "sh", "-c", command,
                           timeout=90)
    finally:
        os.unlink(script)
    lease = _env_lines(result.stdout)
    assert lease.get("new_ip6_address") == HOST_ADDR6, result.stdout + result.stderr
    assert lease["new_dhcp6_name_servers"].split() == [REMOTE_ADDR6]
    assert lease["new_dhcp6_domain_search"].split() == ["example.test."]


def test_rootless_config_net_and_ping(topo: Topology, pasta: str) -> None:
    result = run_pasta(topo, pasta, "--config-net", "--", "sh", "-c",
                       f"id -u; ip -j -4 addr show dev {HOST_IFNAME}; "
                       f"ping -c 1 -W 3 {REMOTE_ADDR4} >/dev/null && echo PING-OK",
                       rootless=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "0"  # root inside its own user namespace
    addrs = json.loads(lines[1])
    assert addrs[0]["addr_info"][0]["local"] == HOST_ADDR4
    assert lines[-1] == "PING-OK"


def test_command_exit_status_is_returned(topo: Topology, pasta: str) -> None:
    result = run_pasta(topo, pasta, "--config-net", "--", "sh", "-c", "exit 7")
    assert result.returncode == 7


def _passt_sep_processes(topo: Topology) -> list[int]:
    found = []
    for pid in topo.in_host("ip", "netns", "pids", topo.host).stdout.split():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"pasta-sep" in handle.read():
                    found.append(int(pid))
        except FileNotFoundError:
            continue
    return found


def test_broker_and_worker_are_separate_processes(topo: Topology, pasta: str, tmp_path) -> None:
    """Daemon mode: the caller's process exits 0 once the worker serves, the
    pid file names the worker, and no broker process stays behind."""
    # made from the initial mount namespace, so that the bind mount is seen
    # inside "ip netns exec" too
    subprocess.run(["ip", "netns", "add", f"{topo.host}-t"], check=True)
    netns = f"/run/netns/{topo.host}-t"
    pidfile = tmp_path / "pid"
    try:
        start = time.monotonic()
        result = run_pasta(topo, pasta, "--config-net", "--netns", netns, "-P", str(pidfile),
                           "-q")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and result.stderr == ""
        worker = int(pidfile.read_text())
        assert os.path.exists(f"/proc/{worker}")
        assert _passt_sep_processes(topo) == [worker]
        ping = topo.run_host("ip", "netns", "exec", f"{topo.host}-t", "ping", "-c", "1", "-W",
                             "3", REMOTE_ADDR4)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert time.monotonic() - start < 30
    finally:
        subprocess.run(["ip", "netns", "del", f"{topo.host}-t"], check=False)


def _tap_persists(link_json: str) -> bool:
    return json.loads(link_json)[0]["linkinfo"]["info_data"]["persist"]


def test_tap_persists_only_in_the_namespace_of_the_command(topo: Topology, pasta: str) -> None:
    """In a namespace made for the command the tap is persistent: the
    kernel removes it with the namespace, in the background, not in the
    worker's exit that the caller waits for.  In a namespace that outlives
    us (``--netns``) it is not: it goes with the worker."""
    result = run_pasta(topo, pasta, "--config-net", "--", "ip", "-d", "-j", "link", "show",
                       HOST_IFNAME, rootless=True)
    assert result.returncode == 0, result.stderr
    assert _tap_persists(result.stdout) is True
    name = f"{topo.host}-p"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        started = run_pasta(topo, pasta, "--config-net", "-q", "--netns", f"/run/netns/{name}")
        assert started.returncode == 0, started.stderr
        shown = subprocess.run(["ip", "netns", "exec", name, "ip", "-d", "-j", "link", "show",
                                HOST_IFNAME], capture_output=True, text=True, check=True)
        assert _tap_persists(shown.stdout) is False
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
