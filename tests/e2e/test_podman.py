"""Podman's flow without Podman: a network namespace bind-mounted on a file,
Podman's exact argv through a binary called `pasta`, then checks modelled
on Podman's own pasta system tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from topology import GW_ADDR4, HOST_ADDR4, HOST_ADDR6, REMOTE_ADDR4, REMOTE_ADDR6, Topology

PEERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers.py")
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
    """Podman's argv; published ports replace its "-t none", as Podman does."""
    argv = list(PODMAN_ARGV)
    if "-t" in extra:
        del argv[argv.index("-t"):argv.index("-t") + 2]
    result = topo.run_host(pasta_link, *argv, *extra, "--netns", f"/run/netns/{container}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # --quiet, and the pipe is closed


def inside(container: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", container, *argv], capture_output=True,
                          text=True, timeout=60)


def test_addresses_routes_mtu_and_loopback(topo: Topology, pasta_link: str,
                                           container: str) -> None:
    start(topo, pasta_link, container)
    links = json.loads(inside(container, "ip", "-j", "addr").stdout)
    eth = next(link for link in links if link["ifname"] == "eth0")
    addrs = {(a["local"], a["prefixlen"]) for a in eth["addr_info"] if a.get("scope") == "global"}
    assert addrs == {(HOST_ADDR4, 24), (HOST_ADDR6, 64)}
    assert eth["mtu"] == 65520
    lo = next(link for link in links if link["ifname"] == "lo")
    assert "UP" in lo["flags"]
    routes = inside(container, "ip", "route").stdout
    assert f"default via {GW_ADDR4}" in routes


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


@pytest.mark.parametrize("spec, connect_port, inner_port", [
    ("8080-8080:80-80", 8080, 80),
    ("127.0.0.1/8081-8081:81-81", 8081, 81),
])
def test_tcp_port_publishing(topo: Topology, pasta_link: str, container: str, spec: str,
                             connect_port: int, inner_port: int) -> None:
    start(topo, pasta_link, container, "-t", spec)
    server = subprocess.Popen(["ip", "netns", "exec", container, PY, PEERS, "sink",
                               str(inner_port)])
    try:
        target = "127.0.0.1" if spec.startswith("127.") else HOST_ADDR4
        size = 10 << 20
        expected = subprocess.run([PY, PEERS, "digest", str(size), "9"], capture_output=True,
                                  text=True).stdout.strip()
        deadline = time.monotonic() + 20
        while True:
            result = topo.run_host(PY, PEERS, "send", target, str(connect_port), str(size), "9")
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert result.stdout.strip() == expected, result.stderr
    finally:
        server.kill()


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


ROOTLESS_FLOW = """set -e
netns="$1/netns-podman"; pasta="$2"; shift 2
touch "$netns"
unshare --net="$netns" true
"$pasta" "$@" --netns "$netns" > "$1/out" 2>&1
echo "status $?"
echo "output $(wc -c < "$1/out")"
nsenter --net="$netns" ip -4 -o addr show scope global | awk '{print "addr " $4}'
nsenter --net="$netns" ip -4 route show default | awk '{print "gateway " $3}'
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
        "status 0", "output 0", f"addr {HOST_ADDR4}/24", f"gateway {GW_ADDR4}", "worker gone"]
