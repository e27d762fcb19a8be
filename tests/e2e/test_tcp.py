"""TCP through pasta-sep with the kernel's own TCP on both ends: integrity
both ways, concurrency, half-close, resets, forwarding and loss."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from peers import PATH as PEERS
from peers import expected as digest

from topology import HOST_ADDR4, HOST_ADDR6, REMOTE_ADDR4, REMOTE_ADDR6, Topology

PY = sys.executable
MiB = 1 << 20


def start_servers(topo: Topology, *ports_and_kinds: tuple[str, int]) -> None:
    for kind, port in ports_and_kinds:
        topo.spawn_remote(PY, PEERS, kind, str(port))
        topo.wait_listening(port)


def in_pasta(topo: Topology, pasta: str, script: str, *options: str, timeout: float = 240):
    result = topo.run_host(pasta, "--config-net", *options, "--", "sh", "-ec", script,
                           timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("remote", [REMOTE_ADDR4, REMOTE_ADDR6])
def test_100_mib_each_way_outbound(topo: Topology, pasta: str, remote: str) -> None:
    start_servers(topo, ("sink", 9000), ("source", 9001))
    size = 100 * MiB
    lines = in_pasta(topo, pasta, f"{PY} {PEERS} send {remote} 9000 {size} 1\n"
                                  f"{PY} {PEERS} recv {remote} 9001 {size} 2")
    assert lines == [digest(size, 1), digest(size, 2)]


@pytest.mark.parametrize("remote", [REMOTE_ADDR4, REMOTE_ADDR6])
def test_requests_answered_and_a_lone_write_acknowledged_soon(topo: Topology, pasta: str,
                                                              remote: str) -> None:
    """A short write's ACK is owed to the answer (one frame to the guest per
    exchange); a write nobody answers gets its ACK after the delay, long
    before the guest's minimum retransmission timeout (200 ms): its kernel
    counts no retransmission."""
    start_servers(topo, ("tcp-echo", 9000))
    [line] = in_pasta(topo, pasta, f"{PY} {PEERS} ack-check {remote} 9000 200")
    words = line.split()
    assert words[:6] == ["echoed", "200", "retrans", "0", "unacked", "0"], line
    assert int(words[7]) < 150, line


@pytest.mark.parametrize("busy_poll", [0, 10_000])
def test_busy_poll_spins_after_traffic_for_as_long_as_asked(topo: Topology, pasta: str,
                                                            tmp_path, busy_poll: int) -> None:
    """Exchanges 5 ms apart: with --busy-poll 10000 (10 ms) the worker
    never sleeps between them, its CPU time about the wall time; with 0
    it sleeps through each gap and uses a sliver of it."""
    start_servers(topo, ("tcp-echo", 9000))
    pidfile = tmp_path / "pid"
    [line] = in_pasta(topo, pasta, f"{PY} {PEERS} paced {REMOTE_ADDR4} 9000 100 0.005 {pidfile}",
                      "-P", str(pidfile), "--busy-poll", str(busy_poll))
    words = line.split()
    assert words[:2] == ["echoed", "100"], line
    share = float(words[3]) / float(words[5])
    assert (share > 0.4) if busy_poll else (share < 0.15), line


def test_a_window_too_small_for_a_segment_is_offered_as_none(topo: Topology, pasta: str,
                                                             shared_tmp) -> None:
    """The namespace's kernel cannot cut a segment it built to fit a window
    (at MTU 65520 up to 64 KiB each): a smaller window left it waiting for
    its probe timer, 200 ms each time (a QEMU guest's uploads ran at a
    third of passt's).  With the worker's send buffer held at 128 KiB
    (the host namespace's tcp_wmem), the room dips below a segment after
    nearly every write: the window then offered is none, and reopens when
    the socket drains; never more than nothing and less than a segment."""
    topo.in_host("sysctl", "-qw", "net.ipv4.tcp_wmem=4096 131072 131072")
    start_servers(topo, ("sink", 9000))
    capture, size = shared_tmp / "tap.pcap", 8 * MiB
    lines = in_pasta(topo, pasta, f"{PY} {PEERS} send {REMOTE_ADDR4} 9000 {size} 3",
                     "-p", str(capture))
    assert lines == [digest(size, 3)]
    result = subprocess.run(["tshark", "-r", str(capture), "-T", "fields", "-e", "tcp.window_size",
                             "-Y", f"ip.src == {REMOTE_ADDR4} && tcp.srcport == 9000 "
                                   "&& tcp.flags.syn == 0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    windows = [int(field) for field in result.stdout.split()]
    segment = 65520 - 40
    assert 0 in windows and max(windows) >= segment
    assert [window for window in windows if 0 < window < segment] == []


def test_200_concurrent_connections(topo: Topology, pasta: str) -> None:
    start_servers(topo, ("sink", 9000))
    lines = in_pasta(topo, pasta, f"{PY} {PEERS} many {REMOTE_ADDR4} 9000 200 {MiB}")
    assert lines == ["ok 200"]


def test_half_close_both_ways(topo: Topology, pasta: str) -> None:
    """send: the guest shuts its write side and still reads the answer;
    recv: the remote closes after its data and the guest sees EOF."""
    start_servers(topo, ("sink", 9000), ("source", 9001))
    lines = in_pasta(topo, pasta, f"{PY} {PEERS} send {REMOTE_ADDR4} 9000 12345 3\n"
                                  f"{PY} {PEERS} recv {REMOTE_ADDR4} 9001 54321 4")
    assert lines == [digest(12345, 3), digest(54321, 4)]


def test_closed_port_is_refused_fast(topo: Topology, pasta: str) -> None:
    script = ("start=$(date +%s%N); "
              f"{PY} -c \"import socket; socket.create_connection(('{REMOTE_ADDR4}', 9999), 10)\""
              " 2>&1 | tail -1; echo $(( ($(date +%s%N) - start) / 1000000 ))")
    result = topo.run_host(pasta, "--config-net", "--", "sh", "-c", script)
    lines = result.stdout.splitlines()
    assert "ConnectionRefusedError" in lines[0]
    assert int(lines[1]) < 3000


def test_reset_from_remote_reaches_guest(topo: Topology, pasta: str) -> None:
    """The remote accepts, then closes with SO_LINGER 0 (RST)."""
    topo.spawn_remote(PY, "-c", (
        "import socket, struct\n"
        "s = socket.create_server(('0.0.0.0', 9100))\n"
        "while True:\n"
        "    c, _ = s.accept(); c.recv(10)\n"
        "    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
        "    c.close()\n"))
    topo.wait_listening(9100)
    script = (f"{PY} -c \"import socket\n"
              f"c = socket.create_connection(('{REMOTE_ADDR4}', 9100), 10); c.sendall(b'hi')\n"
              "try:\n    print(len(c.recv(10)))\nexcept ConnectionResetError:\n"
              "    print('reset')\"")
    assert in_pasta(topo, pasta, script) == ["reset"]


def test_reset_from_guest_reaches_remote(topo: Topology, pasta: str) -> None:
    out = topo.spawn_remote(PY, "-c", (
        "import socket\n"
        "s = socket.create_server(('0.0.0.0', 9101))\n"
        "c, _ = s.accept()\n"
        "try:\n    data = c.recv(10); data = c.recv(10); print('eof' if not data else data)\n"
        "except ConnectionResetError:\n    print('reset')\n"), stdout=subprocess.PIPE, text=True)
    topo.wait_listening(9101)
    script = (f"{PY} -c \"import socket, struct, time\n"
              f"c = socket.create_connection(('{REMOTE_ADDR4}', 9101), 10); c.sendall(b'x')\n"
              "time.sleep(0.5)\n"
              "c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
              "c.close(); time.sleep(0.5)\"")
    in_pasta(topo, pasta, script)
    assert out.communicate(timeout=20)[0].strip() == "reset"


def _serve_in_namespace(topo: Topology, pasta: str, *options: str, port: int = 20000):
    """pasta-sep running a sink inside its namespace, with forwarding options."""
    proc = topo.spawn_host(pasta, "--config-net", *options, "--", PY, PEERS, "sink", str(port),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc


def _remote_send(topo: Topology, host: str, port: int, size: int, seed: int,
                 deadline: float = 20.0) -> str:
    """Send from the remote namespace, retrying while the guest's server starts."""
    end = time.monotonic() + deadline
    while True:
        result = subprocess.run(topo.remote_cmd(PY, PEERS, "send", host, str(port), str(size),
                                                str(seed)), capture_output=True, text=True)
        if result.returncode == 0 or time.monotonic() > end:
            return result.stdout.strip() or result.stderr.strip()
        time.sleep(0.2)


@pytest.mark.parametrize("host", [HOST_ADDR4, HOST_ADDR6])
def test_100_mib_each_way_inbound_forwarded(topo: Topology, pasta: str, host: str) -> None:
    """The remote connects to forwarded ports on the host's address: 100 MiB
    to a sink in the namespace, 100 MiB from a source there."""
    topo.spawn_host(pasta, "--config-net", "-t", "10030:20030", "-t", "10031:20031", "--",
                    "sh", "-c", f"{PY} {PEERS} sink 20030 & exec {PY} {PEERS} source 20031",
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    size = 100 * MiB
    assert _remote_send(topo, host, 10030, size, 7) == digest(size, 7)
    received = subprocess.run(topo.remote_cmd(PY, PEERS, "recv", host, "10031", str(size), "8"),
                              capture_output=True, text=True, timeout=120)
    assert received.stdout.strip() == digest(size, 8), received.stderr


@pytest.mark.parametrize("host", [HOST_ADDR4, HOST_ADDR6])
def test_inbound_forwarding_with_translated_range(topo: Topology, pasta: str, host: str) -> None:
    _serve_in_namespace(topo, pasta, "-t", "10000-10002:20000-20002")
    size = 10 * MiB
    assert _remote_send(topo, host, 10000, size, 5) == digest(size, 5)
    # the other ports of the range are forwarded too, to their own targets:
    # nothing listens on 20001 inside, so the guest's refusal resets the
    # connection the host had accepted
    refused = subprocess.run(topo.remote_cmd(PY, "-c", (
        "import socket\n"
        f"try:\n    c = socket.create_connection(('{host}', 10001), 20)\n"
        "    print('eof' if not c.recv(10) else 'data')\n"
        "except ConnectionResetError:\n    print('reset')")), capture_output=True, text=True)
    assert refused.stdout.strip() == "reset", refused.stderr


def test_address_bound_forwarding(topo: Topology, pasta: str) -> None:
    _serve_in_namespace(topo, pasta, "-t", f"{HOST_ADDR4}/10010:20000")
    assert _remote_send(topo, HOST_ADDR4, 10010, MiB, 6) == digest(MiB, 6)
    listening = topo.in_host("ss", "-Htln", "sport = :10010").stdout
    assert f"{HOST_ADDR4}:10010" in listening and "*:10010" not in listening


def test_interface_bound_forwarding(topo: Topology, pasta: str) -> None:
    _serve_in_namespace(topo, pasta, "-t", "%eth0/10020:20000")
    assert _remote_send(topo, HOST_ADDR4, 10020, MiB, 7) == digest(MiB, 7)
    listening = topo.in_host("ss", "-Htln", "sport = :10020").stdout
    assert "%eth0:10020" in listening


def test_port_already_bound_is_a_clear_error(topo: Topology, pasta: str) -> None:
    holder = topo.spawn_host(PY, "-c", "import socket,time\ns=socket.create_server(('0.0.0.0',"
                             " 10030))\ntime.sleep(60)")
    topo.wait_listening(10030, remote=False)
    result = topo.run_host(pasta, "--config-net", "-t", "10030", "--", "true")
    holder.kill()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "pasta-sep: TCP port *:10030 is already in use: pick another port or stop what holds it"]


def test_lossy_tap_still_transfers_intact(topo: Topology, pasta: str) -> None:
    """nftables drops 1% of packets on the namespace's tap both ways: the
    translator's own retransmission must recover."""
    start_servers(topo, ("sink", 9000), ("source", 9001))
    size = 20 * MiB
    rules = ("nft add table inet lossy; "
             "nft add chain inet lossy in '{ type filter hook input priority 0; }'; "
             "nft add chain inet lossy out '{ type filter hook output priority 0; }'; "
             "nft add rule inet lossy in iifname eth0 numgen random mod 100 0 drop; "
             "nft add rule inet lossy out oifname eth0 numgen random mod 100 0 drop")
    lines = in_pasta(topo, pasta, f"{rules}\n"
                                  f"{PY} {PEERS} send {REMOTE_ADDR4} 9000 {size} 8\n"
                                  f"{PY} {PEERS} recv {REMOTE_ADDR4} 9001 {size} 9\n"
                                  "nft list ruleset | grep -c drop", timeout=300)
    assert lines == [digest(size, 8), digest(size, 9), "2"]


def test_flow_cap_refuses_new_connections(topo: Topology, pasta: str) -> None:
    start_servers(topo, ("sink", 9000))
    script = (f"{PY} -c \"import socket\n"
              f"held = [socket.create_connection(('{REMOTE_ADDR4}', 9000), 5) for _ in range(4)]\n"
              "try:\n"
              f"    socket.create_connection(('{REMOTE_ADDR4}', 9000), 5)\n"
              "    print('accepted')\n"
              "except ConnectionRefusedError:\n"
              "    print('refused')\"")
    assert in_pasta(topo, pasta, script, "--max-flows", "4") == ["refused"]



def test_out_of_fds_refuses_new_flows_and_keeps_serving(topo: Topology, pasta: str) -> None:
    """With 40 fds (hard limit), the worker runs out of sockets long
    before the flow cap: new connections are refused (RST), the ones it
    holds keep moving data intact."""
    start_servers(topo, ("sink", 9000))
    script = (f"{PY} -c \"import socket, sys\n"
              "sys.path.insert(0, sys.argv[1])\n"
              "from peers import data_chunks\n"
              "held, refused = [], 0\n"
              "for _ in range(30):\n"
              "    try:\n"
              f"        held.append(socket.create_connection(('{REMOTE_ADDR4}', 9000), 10))\n"
              "    except ConnectionRefusedError:\n"
              "        refused += 1\n"
              "print('refused' if refused else 'none refused')\n"
              "c = held[0]\n"
              "for chunk in data_chunks(1 << 20, 21):\n"
              "    c.sendall(chunk)\n"
              "c.shutdown(socket.SHUT_WR); print(c.recv(200).decode().strip())\" "
              f"{os.path.dirname(PEERS)}")
    result = topo.run_host("prlimit", "--nofile=40:40", pasta, "--config-net", "--", "sh",
                           "-ec", script, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["refused", digest(MiB, 21)]


PEER_ECHO = ("import socket, threading\n"
             "def tcp():\n"
             "    s = socket.create_server(('0.0.0.0', 9102))\n"
             "    while True:\n"
             "        c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()\n"
             "threading.Thread(target=tcp, daemon=True).start()\n"
             # bound to the address asked, so that replies come from it: a
             # flow's socket is connected to that address and takes no other
             "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             f"u.bind(('{REMOTE_ADDR4}', 9102))\n"
             "while True:\n"
             "    _, peer = u.recvfrom(100); u.sendto(peer[0].encode(), peer)\n")

ASK_BOTH = (f"{PY} -c \"import socket\n"
            f"c = socket.create_connection(('{REMOTE_ADDR4}', 9102), 10)\n"
            "print(c.recv(100).decode())\n"
            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)\n"
            f"u.sendto(b'?', ('{REMOTE_ADDR4}', 9102)); print(u.recv(100).decode())\"")


@pytest.mark.parametrize("options, source", [
    (("-o", "198.51.100.3"), "198.51.100.3"),
    (("--outbound-if4", "eth0"), HOST_ADDR4),
])
def test_outbound_binding(topo: Topology, pasta: str, options: tuple[str, ...],
                          source: str) -> None:
    """-o: the host sockets carrying the guest's TCP and UDP leave from that
    address (a second one of the host's); --outbound-if4: from that
    interface."""
    topo.in_host("ip", "addr", "add", "198.51.100.3/24", "dev", "eth0")
    topo.spawn_remote(PY, "-c", PEER_ECHO)
    topo.wait_listening(9102)
    assert in_pasta(topo, pasta, ASK_BOTH, *options) == [source, source]
