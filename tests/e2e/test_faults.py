"""Faults and floods: the worker keeps serving, within its limits, and no
byte a peer's kernel acknowledged is lost."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest
from peers import PATH as PEERS
from peers import expected as digest

from topology import REMOTE_ADDR4, Topology

PY = sys.executable
MiB = 1 << 20


def _sinks(topo: Topology) -> None:
    topo.spawn_remote(PY, PEERS, "sink", "9000")
    topo.spawn_remote(PY, PEERS, "source", "9001")
    topo.wait_listening(9000)
    topo.wait_listening(9001)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_command_exiting_right_after_writing_loses_nothing(topo: Topology, pasta: str,
                                                           shared_tmp) -> None:
    """socat writes 20 MB and exits at once; pasta-sep drains the flow
    before it exits (pasta itself loses the tail of such a transfer)."""
    data = shared_tmp / "data"
    data.write_bytes(os.urandom(20 * MiB))
    received = shared_tmp / "received"
    server = topo.spawn_remote("socat", "-u", "TCP-LISTEN:9300,reuseaddr",
                               f"CREATE:{received}")
    topo.wait_listening(9300)
    result = topo.run_host(pasta, "--config-net", "--", "socat", "-u", f"OPEN:{data}",
                           f"TCP:{REMOTE_ADDR4}:9300", timeout=120)
    assert result.returncode == 0, result.stderr
    server.wait(timeout=30)
    assert hashlib.sha256(received.read_bytes()).digest() == \
        hashlib.sha256(data.read_bytes()).digest()


PACED_SEND = """
import socket, sys, time
sys.path.insert(0, sys.argv[1])
from peers import data_chunks
c = socket.create_connection((sys.argv[2], 9000), 10)
for chunk in data_chunks(int(sys.argv[3]), 31):
    c.sendall(chunk)
    time.sleep(0.1)
c.shutdown(socket.SHUT_WR)
print(c.recv(200).decode().strip())
"""


def test_remote_link_down_and_up_mid_transfer(topo: Topology, pasta: str) -> None:
    """The remote vanishes for two seconds in the middle of a paced
    transfer and comes back: the host's TCP recovers, the guest's transfer
    completes intact."""
    _sinks(topo)
    size = 40 * MiB
    proc = topo.spawn_host(pasta, "--config-net", "--", PY, "-c", PACED_SEND,
                           os.path.dirname(PEERS), REMOTE_ADDR4, str(size),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    topo.in_remote("ip", "link", "set", "eth0", "down")
    time.sleep(2)
    assert proc.poll() is None, "the transfer ended before the link came back"
    topo.in_remote("ip", "link", "set", "eth0", "up")
    out, err = proc.communicate(timeout=120)
    assert out.strip() == digest(size, 31), err


STALL = 60.0        # seconds the guest's application does not read (issue 9: a minute)


def _send_queue(topo: Topology, port: int) -> int:
    """Bytes the remote's kernel holds unsent on its connection from ``port``."""
    out = topo.in_remote("ss", "-Htn", "state", "established", f"sport = :{port}").stdout
    return sum(int(line.split()[1]) for line in out.splitlines())


@pytest.mark.slow
def test_guest_stops_reading_for_a_minute_then_resumes(topo: Topology, pasta: str) -> None:
    """The guest's application does not read for a minute: its window
    closes (we probe it), the stall reaches the remote, whose data waits
    unsent in its own kernel, and the flow outlives it; then the guest
    reads everything, intact."""
    _sinks(topo)
    size = 20 * MiB
    script = (f"{PY} -c \"import socket, time, hashlib\n"
              f"c = socket.create_connection(('{REMOTE_ADDR4}', 9001), 10)\n"
              f"c.sendall(b'{size} 32\\n'); time.sleep({STALL})\n"
              "h = hashlib.sha256(); total = 0\n"
              "while (d := c.recv(1 << 16)):\n"
              "    h.update(d); total += len(d)\n"
              "print(h.hexdigest(), total)\"")
    proc = topo.spawn_host(pasta, "--config-net", "--", "sh", "-c", script,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(STALL - 10)
    stalled = _send_queue(topo, 9001)
    assert proc.poll() is None, proc.communicate()
    out, err = proc.communicate(timeout=STALL + 60)
    assert proc.returncode == 0, err
    assert out.strip() == digest(size, 32)
    # the guest's closed window held the remote back: no buffering in between
    assert stalled > 0, "the remote had nothing left to send during the stall"


SYN_FLOOD = """
import random, socket, struct, sys
dst = socket.inet_aton(sys.argv[1]); count = int(sys.argv[2])
src = socket.inet_aton(sys.argv[3])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
rng = random.Random(7)

def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

for _ in range(count):
    sport = rng.randrange(1024, 65536)
    header = struct.pack("!HHIIHHHH", sport, 9000, rng.getrandbits(32), 0, 0x5002, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(header))
    header = header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]
    raw.sendto(header, (sys.argv[1], 0))
print("sent")
"""


HELD_THEN_FLOOD = """
import socket, subprocess, sys
sys.path.insert(0, sys.argv[1])
from peers import data_chunks
remote, flood = sys.argv[2], sys.argv[3]
held = socket.create_connection((remote, 9000), 10)
print(subprocess.run([sys.executable, "-c", flood, remote, "100000", sys.argv[4]],
                     capture_output=True, text=True, check=True).stdout.strip())
for chunk in data_chunks(int(sys.argv[5]), 33):
    held.sendall(chunk)
held.shutdown(socket.SHUT_WR)
print(held.recv(200).decode().strip())
"""


def test_syn_flood_from_guest_keeps_established_flows(topo: Topology, pasta: str,
                                                      shared_tmp) -> None:
    """100k SYNs from random ports (the guest's kernel resets what answers):
    the worker stays alive with its flows capped and its memory bounded,
    and a connection opened before the flood moves its data intact."""
    _sinks(topo)
    pidfile = shared_tmp / "pid"
    size = 4 * MiB
    script = (f"{PY} -c \"$0\" {os.path.dirname(PEERS)} {REMOTE_ADDR4} \"$1\" "
              "$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1) "
              f"{size}")
    proc = topo.spawn_host(pasta, "--config-net", "--max-flows", "1024", "-P", str(pidfile),
                           "--", "sh", "-ec", script, HELD_THEN_FLOOD, SYN_FLOOD,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, _rss_kib(int(pidfile.read_text())))
        except (OSError, AssertionError, ValueError):
            pass
        time.sleep(0.1)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["sent", digest(size, 33)]
    assert 0 < peak < 200 * 1024, f"worker RSS peaked at {peak} KiB"


def test_udp_flood_from_10k_ports_stays_within_the_cap(topo: Topology, pasta: str) -> None:
    """10k datagrams from 10k source ports: flows beyond the cap are
    dropped and counted, and UDP and TCP still work afterwards."""
    _sinks(topo)
    topo.spawn_remote(PY, PEERS, "udp-echo", "7000", REMOTE_ADDR4)
    topo.wait_listening(7000, "udp")
    script = (f"{PY} -c \"import socket\n"
              "for _ in range(10000):\n"
              "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"    s.sendto(b'x', ('{REMOTE_ADDR4}', 7001)); s.close()\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
              "for attempt in range(10):\n"
              f"    s.sendto(b'ping', ('{REMOTE_ADDR4}', 7000))\n"
              "    try:\n"
              "        print(s.recv(10).decode()); break\n"
              "    except TimeoutError:\n"
              "        continue\"\n"
              f"{PY} {PEERS} send {REMOTE_ADDR4} 9000 {MiB} 34")
    result = topo.run_host(pasta, "--config-net", "--max-flows", "2048", "--", "sh", "-ec",
                           script, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ping", digest(MiB, 34)]
