"""``--max-flows`` is one cap for every kind of flow: tap TCP, spliced TCP,
UDP and ICMP echo fill one table, and once it is full each of them is
refused cleanly (a reset, or the datagram dropped) and counted, while the
flows it holds keep working."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from peers import PATH as PEERS
from procstat import logged_counters, socket_count

from topology import REMOTE_ADDR4, Topology

PY = sys.executable
CAP = 40
SINK_PORT, ECHO_PORT, SPLICE_PORT = 9000, 9100, 20000
FILL = {"tcp": 10, "udp": 10, "ping": 5, "spliced": 15}        # 40 flows in all
EXCESS = 5                                                     # more of each kind

# In the namespace: a listener the spliced connections land on (each gets a
# byte once joined, and is held); on "fill N N N" / "excess N N N" from the
# test, N TCP connections to the remote's sink, N datagrams to its echo from
# N ports of their own, N pings with identifiers of their own; each line
# says how many were answered.
GUEST = r"""
import select, socket, struct, sys, threading
remote, sink, echo, listen_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
held = []
server = socket.create_server(("0.0.0.0", listen_port), backlog=64)

def serve():
    while True:
        conn, _ = server.accept()
        conn.sendall(b"x")
        held.append(conn)

def tcp(count):
    opened = refused = 0
    for _ in range(count):
        try:
            held.append(socket.create_connection((remote, sink), 5))
            opened += 1
        except ConnectionRefusedError:
            refused += 1
    return opened, refused

def answered(socks, send, read, tries, wait):
    # sockets whose request was answered, each sent again up to ``tries`` times
    done = set()
    for _ in range(tries):
        for key, sock in socks.items():
            if key not in done:
                send(key, sock)
        end = wait
        while len(done) < len(socks):
            ready, _, _ = select.select(list(socks.values()), [], [], end)
            if not ready:
                break
            for sock in ready:
                key = read(sock)
                if key is not None:
                    done.add(key)
        if len(done) == len(socks):
            break
    return len(done)

def udp(count, tries):
    socks = {}
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        socks[s.getsockname()[1]] = s
    held.extend(socks.values())
    def send(port, sock):
        sock.sendto(b"hello %d" % port, (remote, echo))
    def read(sock):
        data = sock.recv(100)
        return int(data.split()[1])
    return answered(socks, send, read, tries, 1.5)

def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

next_ident = [0x4000]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)

def ping(count, tries):
    idents = {}
    for _ in range(count):
        idents[next_ident[0]] = raw
        next_ident[0] += 1
    def send(ident, sock):
        header = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"flowcap!"
        message = header[:2] + struct.pack("!H", checksum(header)) + header[4:]
        sock.sendto(message, (remote, 0))
    def read(sock):
        packet = sock.recv(200)
        kind, _code, _sum, ident = struct.unpack_from("!BBHH", packet, (packet[0] & 15) * 4)
        return ident if kind == 0 and ident in idents else None
    return answered(idents, send, read, tries, 1.5)      # one raw socket for all

threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    if words[0] == "done":
        break
    tries = 3 if words[0] == "fill" else 1
    opened, refused = tcp(int(words[1]))
    print(opened, refused, udp(int(words[2]), tries), ping(int(words[3]), tries), flush=True)
"""

# On the host: HOLD connections to the forwarded port from loopback, each
# waiting for the namespace's byte (joined); on a line from the test, EXTRA
# more, counting those reset or closed without a byte.
HOST = r"""
import socket, sys
port, hold, extra = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
held = []
for _ in range(hold):
    c = socket.create_connection(("127.0.0.1", port), 5)
    c.settimeout(5)
    if c.recv(1) == b"x":
        held.append(c)
print("held", len(held), flush=True)
sys.stdin.readline()
refused = 0
for _ in range(extra):
    try:
        c = socket.create_connection(("127.0.0.1", port), 5)
        c.settimeout(5)
        refused += c.recv(1) == b""
    except (ConnectionResetError, ConnectionRefusedError):
        refused += 1
print("refused", refused, flush=True)
sys.stdin.readline()
"""


def _ask(proc: subprocess.Popen, line: str) -> str:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_one_cap_holds_every_kind_of_flow(topo: Topology, pasta: str, shared_tmp) -> None:
    """40 flows of four kinds fill the table (each kind below the cap on
    its own); then five more of each kind: TCP gets a reset (refused),
    spliced TCP a reset, datagrams and pings go unanswered, each counted,
    and the worker's sockets stay where the 40 flows put them."""
    topo.spawn_remote(PY, PEERS, "sink", str(SINK_PORT))
    # bound to the address the guest sends to, which its replies then come
    # from: a flow's socket is connected to that address
    topo.spawn_remote(PY, PEERS, "udp-echo", str(ECHO_PORT), REMOTE_ADDR4)
    topo.wait_listening(SINK_PORT)
    topo.wait_listening(ECHO_PORT, "udp")
    pidfile = shared_tmp / "pid"
    guest = topo.spawn_host(pasta, "--config-net", "-4", "--max-flows", str(CAP),
                            # no auto forwarding: the sockets counted are flows'
                            "-t", str(SPLICE_PORT), "-u", "none", "-T", "none", "-U", "none",
                            "-P", str(pidfile), "--",
                            PY, "-c", GUEST, REMOTE_ADDR4, str(SINK_PORT), str(ECHO_PORT),
                            str(SPLICE_PORT), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    host = None
    try:
        assert guest.stdout.readline().strip() == "ready"
        worker = int(pidfile.read_text())
        baseline = socket_count(worker)

        filled = _ask(guest, f"fill {FILL['tcp']} {FILL['udp']} {FILL['ping']}")
        assert filled.split() == [str(FILL["tcp"]), "0", str(FILL["udp"]), str(FILL["ping"])]
        host = topo.spawn_host(PY, "-c", HOST, str(SPLICE_PORT), str(FILL["spliced"]),
                               str(EXCESS), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        assert host.stdout.readline().strip() == f"held {FILL['spliced']}"
        # one socket per flow, two per spliced one: the table is full
        at_cap = socket_count(worker)
        assert at_cap - baseline == CAP + FILL["spliced"], (baseline, at_cap)

        assert _ask(host, "") == f"refused {EXCESS}"
        excess = _ask(guest, f"excess {EXCESS} {EXCESS} {EXCESS}")
        assert excess.split() == ["0", str(EXCESS), "0", "0"]       # none got through
        assert socket_count(worker) == at_cap                       # held at the cap

        os.kill(worker, signal.SIGUSR1)
        time.sleep(0.5)
    finally:
        if host is not None:
            host.communicate("\n", timeout=30)
        _, log = guest.communicate("done\n", timeout=60)
    counters = logged_counters(log)
    assert counters.get("flows") == CAP, counters
    assert counters.get("tcp_flows_full") == EXCESS, counters
    assert counters.get("splice_flows_full") == EXCESS, counters
    assert counters.get("drop_udp_flows_full") == EXCESS, counters
    assert counters.get("icmp_flows_full") == EXCESS, counters
    assert "internal_error" not in counters, log
    assert guest.returncode == 0, log
