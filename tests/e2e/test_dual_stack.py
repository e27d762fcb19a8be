"""Forwarded ports of both families on one dual-stack socket each, as
passt's: one fd per port in the host, not two.  IPv4 and IPv6 clients both
reach the namespace's service, which sees each over its own family (an
IPv4 peer never as ::ffff:a.b.c.d), and UDP replies come back to both.
Where the dual-stack bind fails (one family's port taken), one socket per
family, with today's errors and skipping."""

from __future__ import annotations

import subprocess
import sys

import pytest

from topology import HOST_ADDR4, HOST_ADDR6, REMOTE_ADDR4, REMOTE_ADDR6, Topology

PY = sys.executable

# TCP and UDP on one port, each family its own IPv6-only or IPv4 socket: a
# datagram or connection arrives on the socket of the family it came over,
# and the service answers with the peer's address as it sees it
SERVICE = ("import socket, sys, threading\n"
           "port = int(sys.argv[1])\n"
           "def bound(family, kind):\n"
           "    s = socket.socket(family, kind)\n"
           "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
           "    if family == socket.AF_INET6:\n"
           "        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
           "    s.bind(('::' if family == socket.AF_INET6 else '0.0.0.0', port))\n"
           "    return s\n"
           "def tcp(family):\n"
           "    s = bound(family, socket.SOCK_STREAM); s.listen()\n"
           "    while True:\n"
           "        c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()\n"
           "def udp(family):\n"
           "    s = bound(family, socket.SOCK_DGRAM)\n"
           "    while True:\n"
           "        _, peer = s.recvfrom(100); s.sendto(peer[0].encode(), peer)\n"
           "threads = [threading.Thread(target=f, args=(family,)) for f in (tcp, udp)\n"
           "           for family in (socket.AF_INET, socket.AF_INET6)]\n"
           "for t in threads: t.start()\n"
           "for t in threads: t.join()\n")

# what the service answers, from SOURCE to HOST:PORT over PROTO, retried
# while the service starts (a refused connection, no answer yet)
ASK = ("import socket, sys, time\n"
       "proto, source, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])\n"
       "family = socket.AF_INET6 if ':' in host else socket.AF_INET\n"
       "kind = socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM\n"
       "end = time.monotonic() + 20\n"
       "while time.monotonic() < end:\n"
       "    s = socket.socket(family, kind); s.settimeout(0.5); s.bind((source, 0))\n"
       "    try:\n"
       "        if kind == socket.SOCK_STREAM:\n"
       "            s.connect((host, port))\n"
       "        else:\n"
       "            s.sendto(b'?', (host, port))\n"
       "        answer = s.recv(100).decode()\n"
       "        if answer:\n"
       "            print(answer); break\n"
       "    except OSError:\n"
       "        pass\n"
       "    finally:\n"
       "        s.close()\n"
       "    time.sleep(0.2)\n")


def _serve(topo: Topology, pasta: str, port: int, *options: str) -> subprocess.Popen:
    return topo.spawn_host(pasta, "--config-net", *options, "--", PY, "-c", SERVICE, str(port),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ask_from_remote(topo: Topology, proto: str, source: str, host: str, port: int) -> str:
    result = topo.run_remote(PY, "-c", ASK, proto, source, host, str(port), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _ask_from_host(topo: Topology, proto: str, source: str, host: str, port: int) -> str:
    result = topo.run_host(PY, "-c", ASK, proto, source, host, str(port), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _host_sockets(topo: Topology, proto: str, port: int) -> list[str]:
    """The local addresses of the host's listening (TCP) or bound (UDP)
    sockets on ``port``, as ``ss`` shows them: ``*:PORT`` is a dual-stack
    one, ``[::]:PORT`` IPv6 only, ``0.0.0.0:PORT`` IPv4."""
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    lines = topo.in_host("ss", flag, f"sport = :{port}").stdout.splitlines()
    return sorted(line.split()[3] for line in lines)


def _both_clients_reach_the_service(topo: Topology, proto: str, port: int) -> None:
    assert _ask_from_remote(topo, proto, REMOTE_ADDR4, HOST_ADDR4, port) == REMOTE_ADDR4
    assert _ask_from_remote(topo, proto, REMOTE_ADDR6, HOST_ADDR6, port) == REMOTE_ADDR6


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_forwarded_port_is_one_socket_for_both_families(topo: Topology, pasta: str,
                                                         proto: str) -> None:
    _serve(topo, pasta, 20040, "-t" if proto == "tcp" else "-u", "10040:20040")
    _both_clients_reach_the_service(topo, proto, 10040)
    assert _host_sockets(topo, proto, 10040) == ["*:10040"]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("source, seen", [("127.0.0.1", HOST_ADDR4), ("::1", HOST_ADDR6)])
def test_the_hosts_own_clients_of_both_families_are_spliced(topo: Topology, pasta: str,
                                                            proto: str, source: str,
                                                            seen: str) -> None:
    """From the host's loopback, through the one dual-stack socket: the
    namespace's side is of the client's family (its own address)."""
    _serve(topo, pasta, 20041, "-t" if proto == "tcp" else "-u", "10041:20041")
    assert _ask_from_host(topo, proto, source, source, 10041) == seen


def test_auto_forwarding_makes_one_socket_per_port(topo: Topology, pasta: str) -> None:
    """``auto`` (pasta's default): the port the namespace takes gets one
    dual-stack socket in the host per protocol."""
    _serve(topo, pasta, 20042)
    for proto in ("tcp", "udp"):
        topo.wait_listening(20042, proto, remote=False)
        _both_clients_reach_the_service(topo, proto, 20042)
        assert _host_sockets(topo, proto, 20042) == ["*:20042"]


@pytest.mark.parametrize("proto, held, where", [
    ("tcp", "0.0.0.0", "*"), ("tcp", "::", "[::]"), ("udp", "0.0.0.0", "*"),
    ("udp", "::", "[::]")])
def test_one_familys_port_taken_is_the_same_clear_error(topo: Topology, pasta: str, proto: str,
                                                        held: str, where: str) -> None:
    """The dual-stack bind fails; the socket of each family then says which
    one is taken, as it did before there was one socket."""
    holder = _hold(topo, proto, held, 10043)
    result = topo.run_host(pasta, "--config-net", "-t" if proto == "tcp" else "-u", "10043",
                           "--", "true")
    holder.kill()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"pasta-sep: {proto.upper()} port {where}:10043 is already in use: pick another port "
        "or stop what holds it"]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_port_taken_in_one_family_is_skipped_there_only(topo: Topology, pasta: str,
                                                          proto: str) -> None:
    """An exclusion-only spec skips what is taken, as ``all`` does: the
    port whose IPv4 side another process holds is forwarded over IPv6 on
    its own socket, the next one on one dual-stack socket."""
    holder = _hold(topo, proto, "0.0.0.0", 10044)
    option = "-t" if proto == "tcp" else "-u"
    others = ("-u" if proto == "tcp" else "-t", "none", "-T", "none", "-U", "none")
    _serve(topo, pasta, 10044, option, "~1-10043,~10046-65535", *others)
    assert _ask_from_remote(topo, proto, REMOTE_ADDR6, HOST_ADDR6, 10044) == REMOTE_ADDR6
    assert _host_sockets(topo, proto, 10044) == ["0.0.0.0:10044", "[::]:10044"]
    assert _host_sockets(topo, proto, 10045) == ["*:10045"]
    holder.kill()


def _hold(topo: Topology, proto: str, address: str, port: int) -> subprocess.Popen:
    """Another process on one family's wildcard ``port``."""
    family = "AF_INET6" if ":" in address else "AF_INET"
    kind = "SOCK_STREAM" if proto == "tcp" else "SOCK_DGRAM"
    holder = topo.spawn_host(PY, "-c", (
        "import socket, time\n"
        f"s = socket.socket(socket.{family}, socket.{kind})\n"
        + ("s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n" if ":" in address
           else "")
        + f"s.bind(('{address}', {port}))\n"
        + ("s.listen()\n" if proto == "tcp" else "")
        + "time.sleep(60)"))
    topo.wait_listening(port, proto, remote=False)
    return holder
