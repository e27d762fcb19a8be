"""pasta's loopback fast path: a forwarded port reached from the host's own
loopback is joined socket-to-socket (splice) to a connection inside the
namespace, never becoming frames.  The kernel's TCP on both ends; the
namespace side sees the connection come from its own address (never from
the gateway, as over the tap), which is how these tests tell the splice
path from the tap path.  That it lands on the namespace's address, not its
loopback, unless --host-lo-to-ns-lo, is test_host_loopback.py's."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from peers import PATH as PEERS
from peers import expected as digest

from topology import GW_ADDR4, HOST_ADDR4, HOST_ADDR6, Topology

PY = sys.executable
MiB = 1 << 20
PEER_REPORTER = ("import socket, sys\n"
                 "s = socket.create_server(('::', int(sys.argv[1])), family=socket.AF_INET6,"
                 " dualstack_ipv6=True)\n"
                 "while True:\n"
                 "    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()\n")


def _in_namespace(topo: Topology, pasta: str, forward: str, *command: str,
                  options: tuple[str, ...] = ()) -> subprocess.Popen:
    return topo.spawn_host(pasta, "--config-net", "-t", forward, *options, "--", *command,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _host(topo: Topology, *args: str, deadline: float = 20.0,
          timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a client in the host namespace, retrying while the namespace's
    server starts (until then the spliced connection is refused or reset)."""
    end = time.monotonic() + deadline
    while True:
        result = topo.run_host(*args, timeout=timeout)
        if (result.returncode == 0 and result.stdout.strip()) or time.monotonic() > end:
            return result
        time.sleep(0.2)


def _peer_seen(topo: Topology, host: str, port: int) -> str:
    result = _host(topo, PY, "-c", (
        "import socket\n"
        f"c = socket.create_connection(('{host}', {port}), 5)\n"
        "print(c.recv(100).decode())"))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().removeprefix("::ffff:")


@pytest.mark.parametrize("host, seen", [("127.0.0.1", HOST_ADDR4), ("::1", HOST_ADDR6)])
def test_loopback_peer_is_spliced_to_namespace_address(topo: Topology, pasta: str,
                                                       host: str, seen: str) -> None:
    _in_namespace(topo, pasta, "10020:20020", PY, "-c", PEER_REPORTER, "20020")
    assert _peer_seen(topo, host, 10020) == seen


def test_no_splice_takes_the_tap_path(topo: Topology, pasta: str) -> None:
    """--no-splice: the same connection becomes frames, from the gateway."""
    _in_namespace(topo, pasta, "10021:20021", PY, "-c", PEER_REPORTER, "20021",
                  options=("--no-splice",))
    assert _peer_seen(topo, "127.0.0.1", 10021) == GW_ADDR4


@pytest.mark.parametrize("host, size", [("127.0.0.1", 1024 * MiB), ("::1", 100 * MiB)])
def test_bulk_transfer_to_namespace_intact(topo: Topology, pasta: str, host: str,
                                           size: int) -> None:
    """The sink answers the digest after the client's half-close."""
    _in_namespace(topo, pasta, "10022:20022", PY, PEERS, "sink", "20022")
    _host(topo, PY, PEERS, "send", host, "10022", "1", "0")        # the sink is up
    result = _host(topo, PY, PEERS, "send", host, "10022", str(size), "11", timeout=300)
    assert result.stdout.strip() == digest(size, 11), result.stderr


def test_bulk_transfer_from_namespace_ends_with_eof(topo: Topology, pasta: str) -> None:
    """The namespace's source closes after its data: the host reads EOF."""
    size = 100 * MiB
    _in_namespace(topo, pasta, "10023:20023", PY, PEERS, "source", "20023")
    result = _host(topo, PY, PEERS, "recv", "127.0.0.1", "10023", str(size), "12",
                   timeout=300)
    assert result.stdout.strip() == digest(size, 12), result.stderr


def test_reset_in_namespace_reaches_host(topo: Topology, pasta: str) -> None:
    _in_namespace(topo, pasta, "10024:20024", PY, "-c", (
        "import socket, struct\n"
        "s = socket.create_server(('0.0.0.0', 20024))\n"
        "while True:\n"
        "    c, _ = s.accept(); c.recv(10)\n"
        "    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
        "    c.close()\n"))
    result = _host(topo, PY, "-c", (
        "import socket, time\n"
        "c = socket.create_connection(('127.0.0.1', 10024), 5)\n"
        "time.sleep(0.3); c.sendall(b'hi')\n"
        "try:\n    print('eof' if not c.recv(10) else 'data')\n"
        "except ConnectionResetError:\n    print('reset')"))
    assert result.stdout.strip() == "reset", result.stderr


def test_nothing_listening_inside_closes_host_connection(topo: Topology, pasta: str) -> None:
    """The namespace refuses: the host's accepted connection is reset, and
    pasta-sep keeps serving (its command still runs and answers)."""
    _in_namespace(topo, pasta, "10025-10026:20025-20026", PY, "-c", PEER_REPORTER, "20026")
    assert _peer_seen(topo, "127.0.0.1", 10026) == HOST_ADDR4
    # the reset may come before connect() returns: the listener completed
    # the handshake, so it is the same answer
    result = topo.run_host(PY, "-c", (
        "import socket\n"
        "try:\n"
        "    c = socket.create_connection(('127.0.0.1', 10025), 5)\n"
        "    print('eof' if not c.recv(10) else 'data')\n"
        "except ConnectionResetError:\n    print('reset')"))
    assert result.stdout.strip() == "reset", result.stderr
    assert _peer_seen(topo, "127.0.0.1", 10026) == HOST_ADDR4


def _host_server(topo: Topology, port: int) -> None:
    topo.spawn_host(PY, "-c", PEER_REPORTER, str(port), stdout=subprocess.DEVNULL)
    topo.wait_listening(port, remote=False)


CLIENT_WITH_RETRIES = ("import socket, sys, time\n"
                       "end = time.monotonic() + 20\n"
                       "while True:\n"
                       "    try:\n"
                       "        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)\n"
                       "        answer = c.recv(100).decode()\n"
                       "        if answer:\n"
                       "            print(answer); break\n"
                       "    except OSError:\n"
                       "        pass\n"
                       "    assert time.monotonic() < end, 'never reached'\n"
                       "    time.sleep(0.2)\n")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_namespace_port_forwarded_to_host_loopback(topo: Topology, pasta: str,
                                                   host: str) -> None:
    """-T: the namespace's loopback port 10030 reaches the host's 20030;
    the host's server sees its own loopback as the peer."""
    _host_server(topo, 20030)
    result = topo.run_host(pasta, "--config-net", "-T", "10030:20030", "--",
                           PY, "-c", CLIENT_WITH_RETRIES, host, "10030")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().removeprefix("::ffff:") == host


def test_auto_follows_what_each_side_listens_on(topo: Topology, pasta: str) -> None:
    """Default (auto both ways): a port the host listens on appears on the
    namespace's loopback, and a port the namespace starts listening on
    appears on the host, both within the one-second rescan."""
    _host_server(topo, 20031)
    inside = topo.spawn_host(pasta, "--config-net", "--", "sh", "-c",
                             f"{PY} -c \"$0\" 20032 & {PY} -c \"$1\" 127.0.0.1 20031; wait",
                             PEER_REPORTER.replace("while True:", "for _ in range(1):"),
                             CLIENT_WITH_RETRIES,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _peer_seen(topo, "127.0.0.1", 20032) == HOST_ADDR4
    out, err = inside.communicate(timeout=30)
    assert [line.removeprefix("::ffff:") for line in out.splitlines()] == ["127.0.0.1"], err
