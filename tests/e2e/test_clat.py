"""--clat end to end: IPv4 for a namespace on an IPv6-only host, through a
real NAT64 (tayga) in front of an IPv4-only server.

::

    netns host (IPv6 only)          netns remote                    netns server (IPv4 only)
      eth0 2001:db8:1::2/64 <-> eth0 2001:db8:1::1/64
      resolver 2001:db8:2::1        lo 2001:db8:2::1: DNS64 (dns64.py)
                                    tayga: PREFIX <-> 198.51.100.0/24
                                    srv 203.0.113.1/24          <-> srv 203.0.113.10/24
                                                                    sink, source, udp-echo

pasta-sep runs in the host namespace; the namespace it makes runs an
IPv4-only program against 203.0.113.10, by address and by a name resolved
over IPv4 DNS through the guest's resolver address.  passt-sep runs there
too, for a guest namespace on its socket (``passtguest``).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import tempfile
import time

import pytest
from passtguest import Guest
from peers import PATH as PEERS
from peers import expected as digest

from topology import Topology, _run

HOST6, REMOTE6, RESOLVER6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:2::1"
SERVER4, SERVER_GW4 = "203.0.113.10", "203.0.113.1"
TAYGA4, TAYGA6, POOL4 = "198.51.100.1", "2001:db8:3::1", "198.51.100.0/24"
HOST_AS4 = "198.51.100.2"                   # the host, to the IPv4 side (tayga's static map)
SERVER_NAME = "server.example.test"
SINK, SOURCE, ECHO = 10100, 10101, 10102
CLAT_GUEST4, CLAT_GATEWAY4 = "192.0.0.2", "192.0.0.1"
DNS64 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dns64.py")
SIZE = 1 << 20


class Nat64Topology(Topology):
    """The three namespaces above, NAT64 prefix ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__("clat")
        self.prefix = prefix
        self.server = self.remote.replace("-r", "-s", 1)
        self.tayga_dir = tempfile.mkdtemp(prefix="passt-sep-tayga-")

    def _build(self) -> None:
        for ns in (self.host, self.remote, self.server):
            _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", "name", "eth0", "netns", self.host, "type", "veth",
              "peer", "name", "eth0", "netns", self.remote])
        _run(["ip", "link", "add", "name", "srv", "netns", self.remote, "type", "veth",
              "peer", "name", "srv", "netns", self.server])
        self._host_only_ipv6()
        self._nat64()
        self._ipv4_server()
        os.makedirs(self.etc_dir, exist_ok=True)
        with open(os.path.join(self.etc_dir, "resolv.conf"), "w", encoding="ascii") as handle:
            handle.write(f"nameserver {RESOLVER6}\n")
        self.spawn_remote(sys.executable, DNS64, RESOLVER6, self.prefix,
                          f"{SERVER_NAME}={SERVER4}")
        self.wait_listening(53, "udp")
        self._wait_reachable()

    def _wait_reachable(self) -> None:
        """Until the fresh links pass packets (neighbour discovery, link-local
        DAD), which would make the first second's queries time out."""
        deadline = time.monotonic() + 10
        while self.run_host("ping", "-c", "1", "-W", "1", RESOLVER6).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{RESOLVER6} unreachable from {self.host}")

    def _host_only_ipv6(self) -> None:
        h = self.in_host
        h("ip", "link", "set", "lo", "up")
        h("ip", "-6", "addr", "add", f"{HOST6}/64", "dev", "eth0", "nodad")
        h("ip", "link", "set", "eth0", "up")
        h("ip", "-6", "route", "add", "default", "via", REMOTE6)
        h("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")

    def _nat64(self) -> None:
        r = self.in_remote
        r("ip", "link", "set", "lo", "up")
        r("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        r("sysctl", "-qw", "net.ipv4.ip_forward=1")
        r("ip", "-6", "addr", "add", f"{REMOTE6}/64", "dev", "eth0", "nodad")
        r("ip", "-6", "addr", "add", f"{RESOLVER6}/128", "dev", "lo")
        r("ip", "link", "set", "eth0", "up")
        config = os.path.join(self.tayga_dir, "tayga.conf")
        with open(config, "w", encoding="ascii") as handle:
            handle.write(f"tun-device nat64\nipv4-addr {TAYGA4}\nipv6-addr {TAYGA6}\n"
                         f"prefix {self.prefix}\ndynamic-pool {POOL4}\n"
                         f"map {HOST_AS4} {HOST6}\n")
        r("tayga", "--mktun", "-c", config)
        r("ip", "link", "set", "nat64", "up")
        r("ip", "route", "add", POOL4, "dev", "nat64")
        r("ip", "-6", "route", "add", self.prefix, "dev", "nat64")
        self.spawn_remote("tayga", "-d", "-c", config, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)

    def _ipv4_server(self) -> None:
        self.in_remote("ip", "addr", "add", f"{SERVER_GW4}/24", "dev", "srv")
        self.in_remote("ip", "link", "set", "srv", "up")
        s = self.in_server
        s("ip", "link", "set", "lo", "up")
        s("ip", "addr", "add", f"{SERVER4}/24", "dev", "srv")
        s("ip", "link", "set", "srv", "up")
        s("ip", "route", "add", "default", "via", SERVER_GW4)
        for command, port in (("sink", SINK), ("source", SOURCE), ("udp-echo", ECHO)):
            self.spawn_in(self.server, sys.executable, PEERS, command, str(port), "0.0.0.0")
        for port, proto in ((SINK, "tcp"), (SOURCE, "tcp"), (ECHO, "udp")):
            self.wait_listening(port, proto, ns=self.server)

    def in_server(self, *args: str) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.server, *args])

    def close(self) -> None:
        super().close()
        self._kill_inside(self.server)
        _run(["ip", "netns", "del", self.server], check=False)
        _run(["rm", "-rf", self.tayga_dir], check=False)


# tayga refuses the well-known prefix 64:ff9b::/96 for the non-global IPv4
# addresses of the documentation ranges (RFC 6052 section 3.1): network-specific ones
@pytest.fixture(params=["2001:db8:64::/96", "2001:db8:64::/64"], ids=["nsp96", "nsp64"])
def nat64(request: pytest.FixtureRequest):
    with Nat64Topology(request.param) as topology:
        yield topology


# What the IPv4-only program in the namespace does, one line per step.
GUEST = f"""
import json, socket, subprocess, sys
sys.path.insert(0, {os.path.dirname(PEERS)!r})
import peers
addrs = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show", "eth0"],
                                  capture_output=True, text=True).stdout)
print(" ".join(f"{{a['local']}}/{{a['prefixlen']}}" for l in addrs for a in l["addr_info"]))
print(peers.send({SERVER4!r}, {SINK}, {SIZE}, 1))
print(peers.recv({SERVER4!r}, {SOURCE}, {SIZE}, 2))
print(peers.udp_send({SERVER4!r}, {ECHO}, 300000, 3, 1400))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dns:
    dns.settimeout(5)
    dns.connect(({CLAT_GATEWAY4!r}, 53))
    dns.send(peers.dns_query(0x4242, {SERVER_NAME!r}, 1))
    reply = dns.recv(512)
resolved = socket.inet_ntoa(reply[-4:])
print(resolved)
print(peers.send(resolved, {SINK}, {SIZE}, 4))
ping = subprocess.run(["ping", "-4", "-c", "2", "-W", "5", {SERVER4!r}], capture_output=True,
                      text=True)
print("ping", ping.returncode, "2 received" in ping.stdout)
"""


def _run_guest(topo: Nat64Topology, pasta: str, *options: str) -> tuple[list[str], str]:
    result = topo.run_host(pasta, "--config-net", *options, "--", sys.executable, "-c", GUEST,
                           timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines(), result.stderr


def _expected() -> list[str]:
    return [f"{CLAT_GUEST4}/29", digest(SIZE, 1), digest(SIZE, 2),
            digest(300000, 3), SERVER4, digest(SIZE, 4), "ping 0 True"]


def test_ipv4_through_nat64_with_the_prefix_given(nat64: Nat64Topology, pasta: str) -> None:
    lines, stderr = _run_guest(nat64, pasta, "--nat64-prefix", nat64.prefix)
    assert lines == _expected(), stderr


def test_ipv4_through_nat64_with_the_prefix_discovered(nat64: Nat64Topology,
                                                         pasta: str) -> None:
    lines, stderr = _run_guest(nat64, pasta, "--clat", "-d")
    assert lines == _expected(), stderr
    assert f"NAT64 prefix {ipaddress.IPv6Network(nat64.prefix)}, discovered" in stderr


def test_rootless(nat64: Nat64Topology, pasta: str) -> None:
    """As an unprivileged user: ping sockets, no raw ones, on the host."""
    result = nat64.run_host(pasta, "--config-net", "--clat", "--", "sh", "-c",
                            f"ping -4 -c 1 -W 5 {SERVER4} >/dev/null && echo ok",
                            rootless=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


# An IPv4-only service in the namespace: for each of N connections, the peer's
# address, then what a sink answers.
SERVICE = """
import hashlib, socket, sys
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(4)
open(sys.argv[2], "w").close()
for _ in range(int(sys.argv[3])):
    conn, peer = listener.accept()
    digest, total = hashlib.sha256(), 0
    while data := conn.recv(65536):
        digest.update(data)
        total += len(data)
    conn.sendall(f"{digest.hexdigest()} {total}\\n".encode())
    conn.close()
    print(peer[0], flush=True)
"""
INBOUND = 10200


def _spawn_service(topo: Nat64Topology, pasta: str, ready, script: str, port: int,
                   peers: int, *options: str) -> subprocess.Popen:
    """pasta-sep running ``script PORT READY PEERS`` in its namespace, once
    the script has made the file READY (it listens)."""
    service = topo.spawn_host(pasta, "--config-net", *options, "--", sys.executable, "-c",
                              script, str(port), str(ready), str(peers),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline and service.poll() is None, service.stderr.read()
        time.sleep(0.05)
    return service


@pytest.mark.parametrize("options", [(), ("-4",)], ids=["dual", "ipv4_only"])
def test_inbound_ipv6_reaches_an_ipv4_only_service(nat64: Nat64Topology, pasta: str,
                                                   shared_tmp, options: tuple[str, ...]) -> None:
    """-t: a connection from IPv6 outside the prefix arrives from the
    gateway; one from the IPv4 side, through the NAT64, from the IPv4
    address the peer's IPv6 one embeds.  A guest with IPv6 refuses them
    there first; one without (-4) gets them over IPv4 at once."""
    service = _spawn_service(nat64, pasta, shared_tmp / "ready", SERVICE, INBOUND, 2, *options,
                             "--nat64-prefix", nat64.prefix, "-t", str(INBOUND))
    from_ipv6 = nat64.run_remote(sys.executable, PEERS, "send", HOST6, str(INBOUND), str(SIZE),
                                 "5")
    assert from_ipv6.stdout.strip() == digest(SIZE, 5), from_ipv6.stderr
    from_ipv4 = subprocess.run(["ip", "netns", "exec", nat64.server, sys.executable, PEERS,
                                "send", HOST_AS4, str(INBOUND), str(SIZE), "6"],
                               capture_output=True, text=True, timeout=60)
    assert from_ipv4.stdout.strip() == digest(SIZE, 6), from_ipv4.stderr
    out, err = service.communicate(timeout=30)
    assert out.split() == [CLAT_GATEWAY4, SERVER4], err


# An IPv4-only UDP echo in the namespace: once it has answered N peers and
# then heard nothing for a while, it prints them, one a line, and ends.
UDP_SERVICE = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[1])))
open(sys.argv[2], "w").close()
peers = []
while True:
    sock.settimeout(2 if len(peers) >= int(sys.argv[3]) else None)
    try:
        data, peer = sock.recvfrom(65535)
    except TimeoutError:
        break
    sock.sendto(data, peer)
    if peer[0] not in peers:
        peers.append(peer[0])
print("\\n".join(peers), flush=True)
"""
UDP_INBOUND = 10300
UDP_SEND = f"""
import sys
sys.path.insert(0, {os.path.dirname(PEERS)!r})
import peers
print(peers.udp_send(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), 1200))
"""


def _udp_echo_from(ns: str, host: str, port: int, size: int, seed: int) -> None:
    sent = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", UDP_SEND, host,
                           str(port), str(size), str(seed)], capture_output=True, text=True,
                          timeout=90)
    assert sent.stdout.strip() == digest(size, seed), sent.stderr


def test_udp_forward_from_behind_the_nat64_reaches_an_ipv4_only_service(
        nat64: Nat64Topology, pasta: str, shared_tmp) -> None:
    """-u: an IPv4 host's datagrams, through the NAT64 to the host's IPv6
    address, reach the guest over IPv4 from the address the NAT64 prefix
    embeds, and its answers go back to the peer through the same port."""
    service = _spawn_service(nat64, pasta, shared_tmp / "ready", UDP_SERVICE, UDP_INBOUND, 1,
                             "--nat64-prefix", nat64.prefix, "-u", str(UDP_INBOUND))
    _udp_echo_from(nat64.server, HOST_AS4, UDP_INBOUND, 100000, 7)
    out, err = service.communicate(timeout=30)
    assert out.split() == [SERVER4], err


def test_udp_forward_to_a_guest_without_ipv6(nat64: Nat64Topology, pasta: str,
                                             shared_tmp) -> None:
    """-4 --clat -u: every IPv6 peer reaches the IPv4-only guest, one
    outside the prefix from the gateway's address."""
    service = _spawn_service(nat64, pasta, shared_tmp / "ready", UDP_SERVICE, UDP_INBOUND, 2,
                             "-4", "--nat64-prefix", nat64.prefix, "-u", str(UDP_INBOUND))
    _udp_echo_from(nat64.remote, HOST6, UDP_INBOUND, 100000, 8)
    _udp_echo_from(nat64.server, HOST_AS4, UDP_INBOUND, 100000, 9)
    out, err = service.communicate(timeout=30)
    assert out.split() == [CLAT_GATEWAY4, SERVER4], err


# What the passt mode guest does over IPv4, one line per step.
VM_GUEST = f"""
import sys
sys.path.insert(0, {os.path.dirname(PEERS)!r})
import peers
print(peers.recv({SERVER4!r}, {SOURCE}, {SIZE}, 10))
print(peers.udp_send({SERVER4!r}, {ECHO}, 300000, 11, 1400))
"""


def test_passt_mode_guest_reaches_ipv4_through_nat64(nat64: Nat64Topology, passt: str,
                                                     shared_tmp) -> None:
    """passt mode: the VM's DHCP lease is the CLAT address, and its IPv4
    TCP and UDP reach the IPv4-only server through the NAT64."""
    socket_path = str(shared_tmp / "passt.socket")
    daemon = nat64.spawn_host(passt, "-f", "-q", "-s", socket_path, "--nat64-prefix",
                              nat64.prefix, stderr=subprocess.PIPE, text=True)
    script = shared_tmp / "vm_guest.py"
    script.write_text(VM_GUEST)
    guest = Guest(nat64, socket_path, str(shared_tmp))
    try:
        guest.dhcp()
        lines = guest.run(f"ip -4 -o addr show dev eth0 | awk '{{print $4}}'\n"
                          f"ip -4 route show default | awk '{{print $3}}'\n"
                          f"{sys.executable} {script}")
    finally:
        guest.close()
        daemon.kill()
    assert lines == [f"{CLAT_GUEST4}/29", CLAT_GATEWAY4, digest(SIZE, 10),
                     digest(300000, 11)], daemon.stderr.read()
