"""Where a forward from the host itself lands in the namespace, as the
current pasta does it: a ``-t``/``-u`` connection (datagram) from the
host's loopback or the host's own address arrives on the namespace's own
address, from that address, so a service bound to the namespace's
loopback (which trusts only the namespace) is out of the host's reach and
a service on the wildcard address sees the namespace's address as its
client.  ``--host-lo-to-ns-lo`` brings back the loopback for what comes
from the host's loopback, and only for that.  Peers elsewhere come over
the tap as before, from the gateway.  TCP and UDP, IPv4 and IPv6."""

from __future__ import annotations

import subprocess
import sys

import pytest

from topology import GW_ADDR4, GW_ADDR6, HOST_ADDR4, HOST_ADDR6, Topology

PY = sys.executable
LO_PORT, ANY_PORT = 20080, 20081          # in the namespace
HOST_LO_PORT, HOST_ANY_PORT = 10080, 10081
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
HOST = {4: HOST_ADDR4, 6: HOST_ADDR6}
GATEWAY = {4: GW_ADDR4, 6: GW_ADDR6}

# one family and protocol; a server on the loopback and one on the wildcard
# address, both bound before either serves.  TCP answers "<peer> <local>",
# UDP "<peer>".
SERVERS = ("import socket, sys, threading\n"
           "family = socket.AF_INET6 if sys.argv[1] == '6' else socket.AF_INET\n"
           "tcp = sys.argv[2] == 'tcp'\n"
           "kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM\n"
           "loopback, wildcard = ('::1', '::') if sys.argv[1] == '6' else "
           "('127.0.0.1', '0.0.0.0')\n"
           "socks = []\n"
           f"for address, port in ((loopback, {LO_PORT}), (wildcard, {ANY_PORT})):\n"
           "    s = socket.socket(family, kind)\n"
           "    if family == socket.AF_INET6:\n"
           "        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
           "    s.bind((address, port))\n"
           "    if tcp:\n"
           "        s.listen()\n"
           "    socks.append(s)\n"
           "def serve(s):\n"
           "    while True:\n"
           "        if tcp:\n"
           "            c, peer = s.accept()\n"
           "            c.sendall(f'{peer[0]} {c.getsockname()[0]}'.encode()); c.close()\n"
           "        else:\n"
           "            data, peer = s.recvfrom(100); s.sendto(peer[0].encode(), peer)\n"
           "for s in socks:\n"
           "    threading.Thread(target=serve, args=(s,)).start()\n")

# ask <host> <proto> <port>...: one line per port, "closed" (TCP: reset or
# EOF without a word) or "silent" (UDP: no answer); the first port is
# asked again until it answers, while the namespace's servers start.
ASK = ("import socket, sys, time\n"
       "host, proto = sys.argv[1], sys.argv[2]\n"
       "family = socket.AF_INET6 if ':' in host else socket.AF_INET\n"
       "def ask(port):\n"
       "    try:\n"
       "        if proto == 'tcp':\n"
       "            with socket.create_connection((host, port), 5) as c:\n"
       "                return c.recv(100).decode() or 'closed'\n"
       "        with socket.socket(family, socket.SOCK_DGRAM) as s:\n"
       "            s.settimeout(1.5); s.sendto(b'?', (host, port))\n"
       "            return s.recv(100).decode()\n"
       "    except (ConnectionResetError, ConnectionRefusedError):\n"
       "        return 'closed'\n"
       "    except TimeoutError:\n"
       "        return 'silent'\n"
       "ports = [int(p) for p in sys.argv[3:]]\n"
       "end = time.monotonic() + 20\n"
       "first = ask(ports[0])\n"
       "while first in ('closed', 'silent') and time.monotonic() < end:\n"
       "    time.sleep(0.2); first = ask(ports[0])\n"
       "print(first)\n"
       "for port in ports[1:]:\n"
       "    print(ask(port))\n")

PARAMS = [(proto, family) for proto in ("tcp", "udp") for family in (4, 6)]


def _served(topo: Topology, pasta: str, proto: str, family: int, *options: str) -> None:
    forward = f"{HOST_LO_PORT}-{HOST_ANY_PORT}:{LO_PORT}-{ANY_PORT}"
    topo.spawn_host(pasta, "--config-net", "-t", forward, "-u", forward, *options, "--",
                    PY, "-c", SERVERS, str(family), proto,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ask(run, address: str, proto: str) -> tuple[str, str]:
    """What the wildcard server, then the loopback one, answer ``address``."""
    result = run(PY, "-c", ASK, address, proto, str(HOST_ANY_PORT), str(HOST_LO_PORT),
                 timeout=90)
    assert result.returncode == 0, result.stderr
    wildcard, loopback = result.stdout.split("\n")[:2]
    return wildcard, loopback


def _seen(proto: str, peer: str) -> str:
    """The answer of a server whose client is ``peer`` on ``peer``'s own
    address (TCP) or just from ``peer`` (UDP)."""
    return f"{peer} {peer}" if proto == "tcp" else peer


def _unreachable(proto: str) -> str:
    return "closed" if proto == "tcp" else "silent"


@pytest.mark.parametrize("proto, family", PARAMS)
def test_host_itself_lands_on_the_namespace_address(topo: Topology, pasta: str, proto: str,
                                                    family: int) -> None:
    """By default, from the host's loopback and from its own address alike:
    the loopback-bound service is not reachable, the wildcard one sees the
    namespace's address, on that address."""
    _served(topo, pasta, proto, family)
    for via in (LOOPBACK[family], HOST[family]):
        assert _ask(topo.run_host, via, proto) == (_seen(proto, HOST[family]),
                                                   _unreachable(proto)), via


@pytest.mark.parametrize("proto, family", PARAMS)
def test_remote_peers_come_over_the_tap(topo: Topology, pasta: str, proto: str,
                                        family: int) -> None:
    """Not the host itself: frames from the gateway, as before, and the
    namespace's loopback is out of reach too."""
    _served(topo, pasta, proto, family)
    wildcard, loopback = _ask(topo.run_remote, HOST[family], proto)
    assert wildcard.split()[0] == GATEWAY[family]
    assert loopback == _unreachable(proto)


@pytest.mark.parametrize("proto, family", PARAMS)
def test_host_lo_to_ns_lo_lands_host_loopback_on_namespace_loopback(
        topo: Topology, pasta: str, proto: str, family: int) -> None:
    """The old way, asked for: from the host's loopback, both services are
    reached from the namespace's loopback.  From the host's own address
    and from the remote end, nothing changes."""
    _served(topo, pasta, proto, family, "--host-lo-to-ns-lo")
    loopback = LOOPBACK[family]
    assert _ask(topo.run_host, loopback, proto) == (_seen(proto, loopback),) * 2
    assert _ask(topo.run_host, HOST[family], proto) == (_seen(proto, HOST[family]),
                                                        _unreachable(proto))
    wildcard, inner = _ask(topo.run_remote, HOST[family], proto)
    assert wildcard.split()[0] == GATEWAY[family] and inner == _unreachable(proto)
