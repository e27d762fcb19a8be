"""A guest's UDP flow hears from its peer alone: the host socket behind it
is connected, one per (guest port, peer), through pasta-sep with real peers.

``-u none``: with pasta's default (``-u auto``) a port the namespace binds
is forwarded from the host by the user's choice, open to everyone; these
tests are about the flows the guest's own datagrams open.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from topology import HOST_ADDR4, HOST_ADDR6, REMOTE_ADDR4, REMOTE_ADDR6, Topology

PY = sys.executable
STRANGER4, STRANGER6 = "203.0.113.7", "2001:db8:2::7"
GUEST_PORT, PEER_PORT = 7500, 7000

# The remote end: echoes "reply <source as seen> <port>".  Before its first
# reply to a source, "intruders" send to that source's port from a third
# address and from another port of the peer's own address; each reports
# whether the host refused it (port unreachable: no socket of the host
# takes it), stayed silent or answered.
REMOTE_PEER = """
import socket, sys
addr, port, stranger = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ':' in addr else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((addr, port))
seen = set()
def intrude(source, peer):
    t = socket.socket(family, socket.SOCK_DGRAM)
    t.bind((source, 0))
    t.settimeout(1)
    t.connect(peer)
    t.send(b'intruder from ' + source.encode())
    try:
        t.recv(100)
        return 'answered'
    except ConnectionRefusedError:
        return 'refused'
    except TimeoutError:
        return 'silent'
while True:
    data, peer = s.recvfrom(1000)
    notes = ''
    if stranger != '-' and peer not in seen:
        seen.add(peer)
        notes = ' ' + intrude(stranger, peer[:2]) + ' ' + intrude(addr, peer[:2])
    s.sendto(b'reply %s %d%s' % (peer[0].encode(), peer[1], notes.encode()), peer)
"""

# Inside the namespace: from one port, "hello" to each peer until it
# replies; every datagram that arrives is printed, then "done".
GUEST = """
import socket, sys, time
port, peer_port, peers = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
family = socket.AF_INET6 if ':' in peers[0] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind(('', port))
s.settimeout(0.2)
pending, end = set(peers), time.monotonic() + 20
quiet_until = 0.0
while time.monotonic() < end and (pending or time.monotonic() < quiet_until):
    for peer in pending:
        s.sendto(b'hello', (peer, peer_port))
    retry = time.monotonic() + 3
    while time.monotonic() < retry:
        try:
            data, source = s.recvfrom(1000)
        except TimeoutError:
            if not pending and time.monotonic() >= quiet_until:
                break
            continue
        print(source[0], source[1], data.decode(), flush=True)
        if data.startswith(b'reply'):
            pending.discard(source[0])
            quiet_until = time.monotonic() + 1   # late intruders would show
        if not pending and time.monotonic() >= quiet_until:
            break
print('done', flush=True)
time.sleep(60)
"""

BIND = """
import socket, sys
family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
socket.socket(family, socket.SOCK_DGRAM).bind((sys.argv[1], int(sys.argv[2])))
print('bound')
"""


@pytest.fixture
def strangers(topo: Topology) -> None:
    """A third address on the remote side, routed like the peer's."""
    topo.in_remote("ip", "addr", "add", f"{STRANGER4}/32", "dev", "lo")
    topo.in_remote("ip", "-6", "addr", "add", f"{STRANGER6}/128", "dev", "lo", "nodad")


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _guest_talks_to(topo: Topology, pasta: str, peers: list[str], peer_port: int = PEER_PORT,
                    options: tuple[str, ...] = ()) -> list[str]:
    """Run GUEST in pasta-sep; its lines up to "done" (the flow stays alive)."""
    proc = topo.spawn_host(pasta, "--config-net", "-u", "none", *options, "--", PY, "-c", GUEST,
                           str(GUEST_PORT), str(peer_port), *peers,
                           stdout=subprocess.PIPE, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "done":
            return lines
        lines.append(line.strip())
    raise AssertionError(f"the guest ended early: {lines}")


def _host_udp_sockets(topo: Topology) -> set[tuple[str, str]]:
    """(local, peer) of every UDP socket in the host namespace (where
    pasta-sep's worker is the only one to have any)."""
    out = topo.in_host("ss", "-Huan").stdout
    return {(fields[3], fields[4]) for fields in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("remote, stranger, host", [
    (REMOTE_ADDR4, STRANGER4, HOST_ADDR4), (REMOTE_ADDR6, STRANGER6, HOST_ADDR6)])
def test_only_the_peer_reaches_a_guest_flow(topo: Topology, pasta: str, strangers,
                                            remote: str, stranger: str, host: str) -> None:
    """The peer's reply arrives; a third address and another port of the
    peer's own address, sending to the flow's host port, are refused by
    the host's kernel and nothing of theirs reaches the guest.  The peer
    sees the guest's own port, and the host socket is connected to it,
    holding the port on its own address only."""
    topo.spawn_remote(PY, "-c", REMOTE_PEER, remote, str(PEER_PORT), stranger)
    topo.wait_listening(PEER_PORT, "udp")
    lines = _guest_talks_to(topo, pasta, [remote])
    assert lines == [f"{remote} {PEER_PORT} reply {host} {GUEST_PORT} refused refused"]
    assert _host_udp_sockets(topo) == {
        (_endpoint(host, GUEST_PORT), _endpoint(remote, PEER_PORT))}
    # the port is held on the flow's own address alone: the host's
    # loopback still has it free for a host application
    loopback = "::1" if ":" in host else "127.0.0.1"
    bound = topo.run_host(PY, "-c", BIND, loopback, str(GUEST_PORT))
    assert bound.stdout.strip() == "bound", bound.stderr


@pytest.mark.parametrize("remote, stranger, host", [
    (REMOTE_ADDR4, STRANGER4, HOST_ADDR4), (REMOTE_ADDR6, STRANGER6, HOST_ADDR6)])
def test_one_guest_port_to_two_peers_is_two_connected_flows(
        topo: Topology, pasta: str, strangers, remote: str, stranger: str, host: str) -> None:
    """Each (guest port, peer) pair is a flow with its own connected socket;
    both keep the guest's port on the host and each hears its own peer."""
    for address in (remote, stranger):
        topo.spawn_remote(PY, "-c", REMOTE_PEER, address, str(PEER_PORT), "-")
    topo.wait_listening(PEER_PORT, "udp")
    lines = _guest_talks_to(topo, pasta, [remote, stranger])
    assert sorted(lines) == sorted(f"{address} {PEER_PORT} reply {host} {GUEST_PORT}"
                                   for address in (remote, stranger))
    assert _host_udp_sockets(topo) == {
        (_endpoint(host, GUEST_PORT), _endpoint(address, PEER_PORT))
        for address in (remote, stranger)}


@pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"])
def test_loopback_relay_socket_is_connected(topo: Topology, pasta: str, loopback: str) -> None:
    """-U: the namespace's loopback datagrams leave the host's side from a
    socket connected to the host's loopback port, and the answer returns."""
    topo.spawn_host(PY, "-c", REMOTE_PEER, loopback, "21002", "-")
    topo.wait_listening(21002, "udp", remote=False)
    lines = _guest_talks_to(topo, pasta, [loopback], 11002, ("-U", "11002:21002"))
    assert len(lines) == 1 and lines[0].startswith(f"{loopback} 11002 reply {loopback} ")
    relay_port = int(lines[0].split()[-1])
    sockets = {s for s in _host_udp_sockets(topo) if s[0] != _endpoint(loopback, 21002)}
    assert sockets == {(_endpoint(loopback, relay_port), _endpoint(loopback, 21002))}
