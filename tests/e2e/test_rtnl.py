"""netconf's rtnetlink socket against the kernel, in a namespace the test
makes: a batch runs in order and ends with the link's state, the first
refused request is named in words, a route already there is no failure,
and the host is read in three dumps."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from topology import GW_ADDR4, HOST_ADDR4, HOST_IFNAME, Topology

# Runs inside the namespace: the requests named on the command line in one
# batch on one end of a veth pair, then the interface's addresses and routes.
BATCH = """
import json, socket, sys
from passt_sep.broker.netlink import _without_package_init
_without_package_init("pyroute2")
from passt_sep.broker import netconf
from passt_sep.broker.hostinfo import Route
index = socket.if_nametoindex("d0")
made = {
    "up": netconf._link_request("cannot bring d0 up", index, up=True),
    "mtu": netconf._link_request("cannot set the MTU", index, attrs=[("IFLA_MTU", 1400)]),
    "addr": netconf._address_request(index, "d0", socket.AF_INET, "192.0.2.2", 24),
    "prefix_route": netconf._route_request(index, "d0", socket.AF_INET,
                                           Route("192.0.2.0", 24, None, None, 253, 2)),
    "default": netconf._route_request(index, "d0", socket.AF_INET,
                                      Route("0.0.0.0", 0, "192.0.2.1", None)),
    "unreachable": netconf._route_request(index, "d0", socket.AF_INET,
                                          Route("0.0.0.0", 0, "203.0.113.9", 7)),
}
try:
    with netconf.Rtnl() as rtnl:
        link = rtnl.apply([made[name] for name in sys.argv[1:]], index)
    error = None
    assert link["index"] == index and link.get("ifname") == "d0"
except netconf.NetconfError as exc:
    error = str(exc)
print(json.dumps({"error": error}))
"""


def run_batch(ns: str, *names: str) -> str | None:
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", BATCH, *names],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["error"]


def inside(ns: str, *argv: str):
    return json.loads(subprocess.run(["ip", "netns", "exec", ns, "ip", "-j", *argv],
                                     capture_output=True, text=True, check=True).stdout)


@pytest.fixture
def dummy_ns(topo: Topology):
    name = f"{topo.host}-d"
    subprocess.run(["ip", "netns", "add", name], check=True)
    for argv in (["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                 ["link", "set", "d1", "up"]):
        subprocess.run(["ip", "netns", "exec", name, "ip", *argv], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_one_batch_configures_in_order(dummy_ns: str) -> None:
    """MTU, link up, address, the prefix route the address made already
    (EEXIST: fine), a default route through it: all in one datagram."""
    assert run_batch(dummy_ns, "mtu", "up", "addr", "prefix_route", "default") is None
    link = inside(dummy_ns, "link", "show", "d0")[0]
    assert link["mtu"] == 1400 and "UP" in link["flags"]
    assert [(a["local"], a["prefixlen"]) for a in inside(dummy_ns, "-4", "addr", "show", "d0")
            [0]["addr_info"]] == [("192.0.2.2", 24)]
    assert [r.get("gateway") for r in inside(dummy_ns, "route", "show", "default")] == [
        "192.0.2.1"]


def test_the_first_refused_request_is_named(dummy_ns: str) -> None:
    """A gateway nothing reaches is refused in words; the requests before
    it in the batch took effect (the kernel runs each one)."""
    error = run_batch(dummy_ns, "up", "addr", "unreachable")
    assert error == "cannot add the default route via 203.0.113.9 on d0: Network is unreachable"
    assert inside(dummy_ns, "-4", "addr", "show", "d0")[0]["addr_info"][0]["local"] == \
        "192.0.2.2"
    assert run_batch(dummy_ns, "addr") == \
        "cannot add the address 192.0.2.2/24 to d0: File exists"


READ = """
import json
from passt_sep.broker.netlink import _without_package_init
_without_package_init("pyroute2")
from passt_sep.broker import netconf
from passt_sep.config import parse_args
host = netconf.read_host(parse_args([], "pasta-sep"))
print(json.dumps(host.to_map()))
"""


def test_read_host_finds_the_template_interface(topo: Topology) -> None:
    result = topo.run_host(sys.executable, "-c", READ)
    assert result.returncode == 0, result.stderr
    host = json.loads(result.stdout)
    assert (host["v4"]["ifname"], host["v4"]["addr"], host["v4"]["gateway"]) == (
        HOST_IFNAME, HOST_ADDR4, GW_ADDR4)
    assert host["v6"]["link_local"].startswith("fe80::")
    assert host["mtu"] == 1500


LISTENERS = """
import json, socket
from passt_sep import procnet
from passt_sep.broker.netlink import _without_package_init
_without_package_init("pyroute2")
from passt_sep.broker import netconf
held = []
for family, address, port, listen in ((socket.AF_INET, "127.0.0.1", 8101, True),
                                      (socket.AF_INET6, "::1", 8102, True),
                                      (socket.AF_INET6, "::", 8103, True),
                                      (socket.AF_INET, "127.0.0.1", 8104, False)):
    sock = socket.socket(family)
    sock.bind((address, port))
    if listen:
        sock.listen()
    held.append(sock)
held.append(socket.create_connection(("127.0.0.1", 8101)))
tables = set()
for name in ("tcp", "tcp6"):
    with open(f"/proc/net/{name}", "rb") as handle:
        tables |= procnet.listening_ports(handle.read())
print(json.dumps({"diag": netconf.listening_tcp_ports(), "tables": sorted(tables)}))
"""


def test_sock_diag_finds_what_the_tables_list(dummy_ns: str) -> None:
    """The helper's read of the host's TCP listeners (both families, bound
    but not listening left out, connections too) is what the worker's
    tables would have said."""
    subprocess.run(["ip", "netns", "exec", dummy_ns, "ip", "link", "set", "lo", "up"],
                   check=True)
    result = subprocess.run(["ip", "netns", "exec", dummy_ns, sys.executable, "-c", LISTENERS],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["diag"] == found["tables"] == [8101, 8102, 8103]
