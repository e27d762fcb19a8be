"""What pasta-sep sets in the namespace, as pasta does: with --config-net the
template interface's addresses and routes (prefix routes first, so that an
address outside the host's subnets still reaches the gateway), without it a
tap left down; and the host's own link-local address as the IPv6 router."""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import pytest
from peers import expected as digest

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
SIZE = 3 << 20

# The remote: one TCP connection, whose peer address it sends back, then the
# sha256 of what it read, as the guest reads "<peer> <sha256> <bytes>".
WHO_AND_SINK = """
import hashlib, socket, sys
server = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6,
                              dualstack_ipv6=True)
conn, peer = server.accept()
digest, size = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk)
    size += len(chunk)
conn.sendall(f"{peer[0].removeprefix('::ffff:')} {digest.hexdigest()} {size}\\n".encode())
conn.close()
"""

# The guest: send SIZE bytes of seed 7, half-close, print the remote's answer.
SEND = """
import socket, sys
sys.path.insert(0, sys.argv[3])
from peers import data_chunks
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10)
for chunk in data_chunks(int(sys.argv[4]), 7):
    conn.sendall(chunk)
conn.shutdown(socket.SHUT_WR)
print(conn.makefile().readline().strip())
"""


def pasta_json(topo: Topology, pasta: str, *options: str, command: str,
               rootless: bool = False) -> list:
    """Each line the command prints inside the namespace, as JSON."""
    result = topo.run_host(pasta, "-q", *options, "--", "sh", "-ec", command,
                           rootless=rootless)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def host_json(topo: Topology, *args: str):
    return json.loads(topo.in_host("ip", "-j", *args).stdout)


def global_addresses(links: list, ifname: str = HOST_IFNAME) -> list[tuple[str, int]]:
    return sorted((a["local"], a["prefixlen"]) for link in links if link["ifname"] == ifname
                  for a in link.get("addr_info", []) if a.get("scope") == "global")


def routes(entries: list) -> list[tuple[str, str | None, int | None, bool]]:
    """Destination, gateway, metric and onlink flag, the source address aside."""
    return sorted((r["dst"], r.get("gateway"), r.get("metric"), "onlink" in r.get("flags", []))
                  for r in entries if r.get("protocol") != "ra")


def peers_for_everyone(shared_tmp: pathlib.Path) -> str:
    """A directory holding a copy of tests/peers.py that the rootless
    command can import: the checkout may sit where uid 65534 cannot reach
    (a clone in a private temporary directory)."""
    import peers
    shutil.copy(peers.PATH, shared_tmp / "peers.py")
    return str(shared_tmp)


@pytest.mark.parametrize(("address", "remote", "seen_as"), [
    ("192.0.2.7", REMOTE_ADDR4, HOST_ADDR4), ("2001:db8:ff::7", REMOTE_ADDR6, HOST_ADDR6)])
def test_address_outside_the_host_subnet_reaches_the_remote(
        topo: Topology, pasta: str, shared_tmp: pathlib.Path, address: str, remote: str,
        seen_as: str) -> None:
    """Podman's --net=pasta:-a,ADDR, rootless: the namespace's default route
    goes via the host's gateway, reachable through the copied prefix route;
    the remote, which has no route back to ADDR, answers the host's address
    and pasta-sep translates."""
    family = "-6" if ":" in address else "-4"
    back = topo.run_remote("ip", family, "route", "get", address)
    assert back.returncode != 0, back.stdout   # only the translation brings replies back
    topo.spawn_remote(PY, "-c", WHO_AND_SINK, "9400")
    topo.wait_listening(9400)
    peers_dir = peers_for_everyone(shared_tmp)
    script = (f"ip -j {family} addr show dev {HOST_IFNAME} scope global\n"
              f"ping -c 2 -W 3 {remote} >/dev/null && echo '\"ping ok\"'\n"
              f"{PY} -c '{SEND}' {remote} 9400 {peers_dir} {SIZE} | sed 's/.*/\"&\"/'")
    addrs, ping, answer = pasta_json(topo, pasta, "--config-net", "-a", address,
                                     command=script, rootless=True)
    assert global_addresses(addrs) == [(address, 64 if ":" in address else 24)]
    assert ping == "ping ok"
    assert answer == f"{seen_as} {digest(SIZE, 7)}"


def test_every_host_address_is_copied(topo: Topology, pasta: str) -> None:
    topo.in_host("ip", "addr", "add", "198.51.100.3/24", "dev", HOST_IFNAME)
    topo.in_host("ip", "addr", "add", "192.0.2.10/28", "dev", HOST_IFNAME)
    topo.in_host("ip", "-6", "addr", "add", "2001:db8:3::2/64", "dev", HOST_IFNAME, "nodad")
    command = "ip -j addr show"
    host = global_addresses(host_json(topo, "addr", "show"))
    assert len(host) == 5
    [ns] = pasta_json(topo, pasta, "--config-net", command=command)
    assert global_addresses(ns) == host
    link_local = [a for link in ns for a in link.get("addr_info", [])
                  if a.get("scope") == "link" and a["family"] == "inet6"]
    assert len(link_local) == 1                 # the tap's own, none copied
    # -a: that IP version gets the one address, the other still all of them
    [ns] = pasta_json(topo, pasta, "--config-net", "-a", "198.51.100.9", command=command)
    assert global_addresses(ns) == [("198.51.100.9", 24), ("2001:db8:1::2", 64),
                                    ("2001:db8:3::2", 64)]


def test_every_host_route_is_copied_unless_a_gateway_is_given(topo: Topology,
                                                              pasta: str) -> None:
    topo.in_host("ip", "route", "add", "203.0.113.128/25", "via", GW_ADDR4, "metric", "50")
    topo.in_host("ip", "route", "add", "192.0.2.0/24", "dev", HOST_IFNAME)
    topo.in_host("ip", "-6", "route", "add", "2001:db8:5::/48", "via", GW_ADDR6)
    command = "ip -j -4 route; ip -j -6 route"
    host4, host6 = host_json(topo, "-4", "route"), host_json(topo, "-6", "route")
    assert ("203.0.113.128/25", GW_ADDR4, 50, False) in routes(host4)
    ns4, ns6 = pasta_json(topo, pasta, "--config-net", command=command)
    assert routes(ns4) == routes(host4)
    assert routes(ns6) == routes(host6)
    # -g for IPv4: no IPv4 route copied (the kernel's prefix route and the
    # default one only); IPv6 ones still are
    ns4, ns6 = pasta_json(topo, pasta, "--config-net", "-g", GW_ADDR4, command=command)
    assert routes(ns4) == [("198.51.100.0/24", None, None, False), ("default", GW_ADDR4, None,
                                                                    False)]
    assert routes(ns6) == routes(host6)


def test_gateway_outside_every_prefix_is_on_link(topo: Topology, pasta: str) -> None:
    """-a and -g both outside the host's subnets, the gateway not in the
    address's prefix either: the default route is declared on-link (pasta
    refuses to start here) and the remote is reached."""
    script = ("ip -j -4 route; ip -j -6 route\n"
              f"ping -c 1 -W 3 {REMOTE_ADDR4} >/dev/null && ping -c 1 -W 3 {REMOTE_ADDR6} "
              ">/dev/null && echo '\"ping ok\"'")
    ns4, ns6, ping = pasta_json(topo, pasta, "--config-net", "-a", "192.0.2.7", "-n", "24",
                                "-g", "203.0.113.5", "-a", "2001:db8:ff::7",
                                "-g", "2001:db8:fe::1", command=script)
    assert ("default", "203.0.113.5", None, True) in routes(ns4)
    assert ("default", "2001:db8:fe::1", 1024, True) in routes(ns6)
    assert ping == "ping ok"


def test_tap_is_left_down_without_config_net(topo: Topology, pasta: str) -> None:
    """As pasta: loopback up, the tap down and without addresses, for the
    namespace's own DHCP, SLAAC or manual setup."""
    [links] = pasta_json(topo, pasta, command="ip -j addr show")
    by_name = {link["ifname"]: link for link in links}
    assert "UP" in by_name["lo"]["flags"]
    assert "UP" not in by_name[HOST_IFNAME]["flags"]
    assert by_name[HOST_IFNAME]["addr_info"] == []


def host_link_local(topo: Topology) -> str:
    [link] = host_json(topo, "-6", "addr", "show", "dev", HOST_IFNAME)
    [local] = [a["local"] for a in link["addr_info"] if a.get("scope") == "link"]
    return local


RA_ROUTE = (f"ip link set dev {HOST_IFNAME} up\n"
            "for i in $(seq 100); do ip -6 route show default | grep -q . && break; "
            "sleep 0.1; done\nip -j -6 route show default")


def test_ipv6_router_is_the_hosts_link_local_address(topo: Topology, pasta: str) -> None:
    """Router advertisements come from the host's own link-local address
    when its gateway is global; with --config-net the default route is the
    host's, via that gateway."""
    [[default]] = pasta_json(topo, pasta, command=RA_ROUTE)
    assert default["gateway"] == host_link_local(topo)
    assert default["protocol"] == "ra"
    [[default]] = pasta_json(topo, pasta, "--config-net", command="ip -j -6 route show default")
    assert default["gateway"] == GW_ADDR6


def test_link_local_gateway_is_the_ipv6_router(topo: Topology, pasta: str) -> None:
    """A host whose gateway is link-local (learned from RAs, typically):
    that address is the guest's router, with or without --config-net."""
    topo.in_remote("ip", "-6", "addr", "add", "fe80::1/64", "dev", HOST_IFNAME, "nodad")
    topo.in_host("ip", "-6", "route", "replace", "default", "via", "fe80::1", "dev",
                 HOST_IFNAME)
    [[default]] = pasta_json(topo, pasta, command=RA_ROUTE)
    assert default["gateway"] == "fe80::1"
    script = ("ip -j -6 route show default\n"
              f"ping -c 1 -W 3 {REMOTE_ADDR6} >/dev/null && echo '\"ping ok\"'")
    [default], ping = pasta_json(topo, pasta, "--config-net", command=script)
    assert default["gateway"] == "fe80::1" and ping == "ping ok"


@pytest.mark.parametrize(("options", "message"), [
    (("-g", HOST_ADDR6), f"cannot add the default route via {HOST_ADDR6} on {HOST_IFNAME}: "
                         "Invalid argument"),
    (("-m", "65535"), f"cannot set the MTU of {HOST_IFNAME} to 65535: Invalid argument")])
def test_netlink_failure_is_said_in_words(topo: Topology, pasta: str,
                                          options: tuple[str, ...], message: str) -> None:
    result = topo.run_host(pasta, "--config-net", *options, "--", "true")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"pasta-sep: {message}"]
