"""Podman's flow without Podman: a network namespace bind-mounted on a file,
Podman's exact argv through a binary called `pasta`, then checks modelled
on Podman's own pasta system tests (test/system/505-networking-pasta.bats)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from peers import PATH as PEERS
from peers import expected

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

PY = sys.executable
PODMAN_ARGV = ["--config-net", "--dns-forward", "169.254.1.1", "-t", "none", "-u", "none",
               "-T", "none", "-U", "none", "--no-map-gw", "--quiet"]


@pytest.fixture
def pasta_link(pasta: str, shared_tmp) -> str:
    """Podman looks for a binary named exactly `pasta`."""
    link = shared_tmp / "pasta"
    os.symlink(pasta, link)
    return str(link)


@pytest.fixture
def container(topo: Topology):
    """What Podman makes: a network namespace bind-mounted on a file."""
    name = f"{topo.host}-c"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def start(topo: Topology, pasta_link: str, container: str, *extra: str) -> None:
    """Podman's argv; published ports replace its "-t none" or "-u none",
    as Podman does, whether they come as -t/-u or as --tcp-ports/--udp-ports."""
    argv = list(PODMAN_ARGV)
    for short, long in (("-t", "--tcp-ports"), ("-u", "--udp-ports")):
        if short in extra or long in extra:
            del argv[argv.index(short):argv.index(short) + 2]
    result = topo.run_host(pasta_link, *argv, *extra, "--netns", f"/run/netns/{container}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # --quiet, and the pipe is closed


def inside(container: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", container, *argv], capture_output=True,
                          text=True, timeout=60)


def global_addresses(container: str) -> set[tuple[str, int]]:
    """Every global address in the namespace, with its prefix length."""
    links = json.loads(inside(container, "ip", "-j", "addr").stdout)
    return {(a["local"], a["prefixlen"]) for link in links for a in link["addr_info"]
            if a.get("scope") == "global"}


def default_gateways(container: str) -> set[str]:
    """The gateways of the namespace's IPv4 and IPv6 default routes."""
    gateways = set()
    for family in ("-4", "-6"):
        routes = json.loads(inside(container, "ip", "-j", family, "route", "show",
                                   "default").stdout)
        gateways |= {route["gateway"] for route in routes}
    return gateways


def test_addresses_routes_mtu_and_loopback(topo: Topology, pasta_link: str,
                                           container: str) -> None:
    """The host's addresses and default routes, both families; MTU 65520; lo up."""
    start(topo, pasta_link, container)
    assert global_addresses(container) == {(HOST_ADDR4, 24), (HOST_ADDR6, 64)}
    assert default_gateways(container) == {GW_ADDR4, GW_ADDR6}
    links = json.loads(inside(container, "ip", "-j", "link").stdout)
    assert next(link for link in links if link["ifname"] == "eth0")["mtu"] == 65520
    assert "UP" in next(link for link in links if link["ifname"] == "lo")["flags"]


@pytest.mark.parametrize("options, addresses, gateways", [
    (["-4"], {(HOST_ADDR4, 24)}, {GW_ADDR4}),
    (["-6"], {(HOST_ADDR6, 64)}, {GW_ADDR6}),
    (["-a", "192.0.2.2", "-g", "192.0.2.1", "-a", "2001:db8::2", "-g", "2001:db8::1"],
     {("192.0.2.2", 24), ("2001:db8::2", 64)}, {"192.0.2.1", "2001:db8::1"}),
], ids=["ipv4-only", "ipv6-only", "address-and-gateway"])
def test_families_addresses_and_gateways(topo: Topology, pasta_link: str, container: str,
                                         options: list[str], addresses: set, gateways: set
                                         ) -> None:
    """Podman's "No IPv6", "No IPv4" and "default route assignment" checks
    (`--net=pasta:-4`, `:-6`, `:-a,192.0.2.2,-g,192.0.2.1`): the other
    family has neither an address nor a default route."""
    start(topo, pasta_link, container, *options)
    assert global_addresses(container) == addresses
    assert default_gateways(container) == gateways


def test_options_podman_appends(topo: Topology, pasta_link: str, container: str) -> None:
    start(topo, pasta_link, container, "-a", "198.51.100.99", "-m", "1280", "-4")
    out = inside(container, "ip", "-j", "addr", "show", "dev", "eth0").stdout
    eth = json.loads(out)[0]
    assert eth["mtu"] == 1280
    assert [a["local"] for a in eth["addr_info"] if a.get("scope") == "global"] == [
        "198.51.100.99"]


def test_dns_through_169_254_1_1(topo: Topology, pasta_link: str, container: str) -> None:
    for address in (REMOTE_ADDR4, REMOTE_ADDR6):
        topo.spawn_remote(PY, PEERS, "dns", "53", address)
    topo.wait_listening(53, "udp")
    start(topo, pasta_link, container)
    for transport in ("+notcp", "+tcp"):
        result = inside(container, "dig", "+short", "+time=2", transport, "@169.254.1.1",
                        "podman.test", "A")
        assert result.stdout.strip() == "203.0.113.53", result.stdout + result.stderr


SMALL, LARGE = 2 << 10, 10 << 20
SERVER = {"tcp": "sink", "udp": "udp-echo"}
CLIENT = {"tcp": "send", "udp": "udp-send"}


@dataclass(frozen=True)
class Published:
    """One of Podman's port publishing cases: the option and spec Podman
    passes, the host ports a client uses, the container ports served."""
    name: str
    option: str
    spec: str
    host_ports: range
    ns_ports: range


def podman_cases(proto: str, address: str, ifname: str, base: int) -> list[Published]:
    """pasta_test_do's cases over one host address, each on its own ten
    ports from base, so that a port translated wrongly finds no server.
    `-p PORT:PORT` and `-p [ADDR]:PORT:XPORT` become `-t PORT-PORT:XPORT-XPORT`
    or `-t ADDR/...` (`-u` for UDP); interface binding goes through
    `--net=pasta:--tcp-ports,ADDR%IF/PORT:XPORT`."""
    cases = []
    for index, (name, count, delta, bound) in enumerate([
            ("single", 1, 0, ""), ("range", 3, 0, "address"), ("translated", 1, 1, "address"),
            ("translated range", 3, 1, "address"), ("address-bound", 1, 0, "address"),
            ("interface-bound", 1, 0, "interface")]):
        first = base + 10 * index
        host, ns = range(first, first + count), range(first + delta, first + delta + count)
        option = "-t" if proto == "tcp" else "-u"
        spec = f"{host[0]}-{host[-1]}:{ns[0]}-{ns[-1]}"
        if bound == "address":
            spec = f"{address}/{spec}"
        elif bound == "interface":
            option = "--tcp-ports" if proto == "tcp" else "--udp-ports"
            spec = f"{address}%{ifname}/{host[0]}:{ns[0]}"
        cases.append(Published(name, option, spec, host, ns))
    return cases


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_port_publishing(topo: Topology, pasta_link: str, container: str, proto: str,
                         family: int) -> None:
    """Podman's port forwarding and transfer tests in one passt-sep:
    single, range of 3, translated, address- and interface-bound, over
    loopback and over the host's address (from the host itself, spliced
    as pasta does, and from the remote namespace, over the tap); 2 KB
    byte-exact through every published port, 10 MB through the single ones."""
    host_address = HOST_ADDR4 if family == 4 else HOST_ADDR6
    over = {"loopback": (topo.spawn_host, "127.0.0.1" if family == 4 else "::1", "lo"),
            "host": (topo.spawn_host, host_address, HOST_IFNAME),
            "remote": (topo.spawn_remote, host_address, HOST_IFNAME)}
    cases = [(where, case) for base, (where, (_, address, ifname)) in
             zip((10000, 20000, 30000), over.items(), strict=True)
             for case in podman_cases(proto, address, ifname, base)]
    ns_ports = [port for _, case in cases for port in case.ns_ports]
    topo.spawn_in(container, PY, PEERS, SERVER[proto], ",".join(map(str, ns_ports)))
    for port in ns_ports:
        topo.wait_listening(port, proto, ns=container)
    start(topo, pasta_link, container, *(arg for _, case in cases
                                         for arg in (case.option, case.spec)))
    transfers = {(where, case.name, port, size): (where, port, size)
                 for (where, case) in cases
                 for port in case.host_ports
                 for size in ((SMALL, LARGE) if case.name == "single" else (SMALL,))}
    clients = {}
    for key, (where, port, size) in transfers.items():
        spawn, address, _ = over[where]
        clients[key] = spawn(PY, PEERS, CLIENT[proto], address, str(port), str(size), str(port),
                             stdout=subprocess.PIPE, text=True)
    got = {key: client.communicate(timeout=120)[0].strip() for key, client in clients.items()}
    assert got == {key: expected(size, port) for key, (_, port, size) in transfers.items()}


def test_worker_exits_when_the_netns_file_is_removed(topo: Topology, pasta_link: str,
                                                     container: str) -> None:
    start(topo, pasta_link, container)
    def workers() -> list[str]:
        found = []
        for pid in topo.in_host("ip", "netns", "pids", topo.host).stdout.split():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if b"pasta" in handle.read():
                        found.append(pid)
            except FileNotFoundError:
                continue
        return found
    assert len(workers()) == 1
    subprocess.run(["ip", "netns", "del", container], check=True)
    deadline = time.monotonic() + 1.5
    while workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers() == []


def processes_serving(container: str) -> list[int]:
    """Every live process of this run, in any namespace: its command line
    names the container's netns file."""
    marker = f"/run/netns/{container}".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if marker in handle.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.parametrize("extra, count", [((), 1), (("-t", "8080"), 2)],
                         ids=["no-forwards", "published-port"])
def test_one_process_per_container_unless_a_port_is_published(
        topo: Topology, pasta_link: str, container: str, extra: tuple[str, ...],
        count: int) -> None:
    """Podman's every-forwarding-none argv leaves the worker alone: the ns
    socket source would serve nothing.  A published port brings it (the
    host's loopback is spliced to the container's)."""
    start(topo, pasta_link, container, *extra)
    assert len(processes_serving(container)) == count


ROOTLESS_FLOW = """set -e
netns="$1/netns-podman"; pasta="$2"; shift 2
touch "$netns"
unshare --net="$netns" true
"$pasta" "$@" --netns "$netns" > "$1/out" 2>&1
echo "status $?"
echo "output $(wc -c < "$1/out")"
for family in 4 6; do
    nsenter --net="$netns" ip -$family -o addr show scope global | awk '{print "addr " $4}'
    nsenter --net="$netns" ip -$family route show default | awk '{print "gateway " $3}'
done
umount "$netns"; rm "$netns"
sleep 1.5
pgrep -f "netns-podman" > /dev/null && echo "worker still running" || echo "worker gone"
"""


def test_rootless_podman_flow_in_its_own_user_namespace(topo: Topology, pasta_link: str,
                                                        shared_tmp) -> None:
    """As Podman does it, unprivileged: a user namespace where the caller is
    root (and nobody else is mapped), a network namespace bind-mounted on
    a file, Podman's argv through `pasta`; the worker leaves when the file
    goes."""
    script = shared_tmp / "flow.sh"
    script.write_text(ROOTLESS_FLOW.replace('"$1/out"', f'"{shared_tmp}/out"'))
    result = topo.run_host("unshare", "--user", "--map-root-user", "--mount",
                           "--propagation", "private", "sh", str(script), str(shared_tmp),
                           pasta_link, *PODMAN_ARGV, rootless=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "status 0", "output 0", f"addr {HOST_ADDR4}/24", f"gateway {GW_ADDR4}",
        f"addr {HOST_ADDR6}/64", f"gateway {GW_ADDR6}", "worker gone"]
