"""Where pasta refuses to start, passt-sep starts anyway: a host with no
default route (offline, VPN, early boot) and a host without IPv6.  One
warning line; the namespace still reaches the host."""

from __future__ import annotations

import sys

from topology import REMOTE_ADDR4, Topology

PY = sys.executable

HOST_LOOPBACK_SERVER = ("import socket\n"
                        "s = socket.create_server(('127.0.0.1', 9200))\n"
                        "while True:\n"
                        "    c, _ = s.accept(); c.sendall(b'host'); c.close()\n")


def _ask(address: str, port: int) -> str:
    return (f"{PY} -c \"import socket\n"
            f"c = socket.create_connection(('{address}', {port}), 10)\n"
            "print(c.recv(10).decode())\"")


def _host_loopback_server(topo: Topology) -> None:
    topo.spawn_host(PY, "-c", HOST_LOOPBACK_SERVER)
    topo.wait_listening(9200, remote=False)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line]


def test_no_default_route_gives_local_only_ipv4(topo: Topology, pasta: str) -> None:
    topo.in_host("ip", "route", "del", "default")
    topo.in_host("ip", "-6", "route", "del", "default")
    _host_loopback_server(topo)
    script = ("ip -4 -o addr show scope global | awk '{print $4}'\n"
              "ip -4 route show default | awk '{print $3}'\n"
              "ip -6 -o addr show scope global | wc -l\n" + _ask("169.254.2.2", 9200))
    result = topo.run_host(pasta, "--config-net", "--", "sh", "-ec", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["169.254.2.1/16", "169.254.2.2", "0", "host"]
    [warning] = _warnings(result.stderr)
    assert "no usable default route" in warning and "local-only" in warning


def test_host_without_ipv6_serves_ipv4_alone(topo: Topology, pasta: str) -> None:
    topo.in_host("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    topo.spawn_remote(PY, "-c", HOST_LOOPBACK_SERVER.replace("127.0.0.1", "0.0.0.0"))
    topo.wait_listening(9200)
    script = ("ip -6 -o addr show scope global | wc -l\n" + _ask(REMOTE_ADDR4, 9200))
    result = topo.run_host(pasta, "--config-net", "--", "sh", "-ec", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0", "host"]
    [warning] = _warnings(result.stderr)
    assert "no IPv6" in warning


def test_map_host_loopback_reaches_the_host_without_routes(topo: Topology, pasta: str) -> None:
    topo.in_host("ip", "route", "del", "default")
    _host_loopback_server(topo)
    result = topo.run_host(pasta, "--config-net", "--no-map-gw", "--map-host-loopback",
                           "169.254.2.9", "--", "sh", "-ec", _ask("169.254.2.9", 9200))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "host"
