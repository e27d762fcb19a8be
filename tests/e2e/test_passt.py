"""passt mode: a guest on passt-sep's UNIX socket.

The guest is a network namespace whose tap device is bridged to the socket
by tests/tapbridge.py (what QEMU's -netdev stream does for a VM): its
kernel runs DHCP, SLAAC, TCP and UDP against passt-sep for real.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from passtguest import Guest

from topology import HOST_ADDR4, REMOTE_ADDR4, REMOTE_ADDR6, Topology

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(TESTS, "peers.py")
PY = sys.executable
MiB = 1 << 20
@pytest.fixture
def passt_socket(shared_tmp) -> str:
    return str(shared_tmp / "passt.socket")


@pytest.fixture
def guest(topo: Topology, passt: str, passt_socket: str, shared_tmp):
    daemon = topo.spawn_host(passt, "-f", "-q", "-s", passt_socket, "-t", "10080:20080",
                             stderr=subprocess.PIPE, text=True)
    g = Guest(topo, passt_socket, str(shared_tmp))
    yield g
    g.close()
    daemon.kill()


def test_dhcp_gives_the_host_address_and_gateway(topo: Topology, guest: Guest) -> None:
    lines = guest.run("busybox udhcpc -i eth0 -f -q -n -t 5 -T 1 -s /bin/true -O mtu 2>&1 | "
                      "grep -o 'lease of [0-9.]* obtained' ; true")
    assert lines == [f"lease of {HOST_ADDR4} obtained"]


def test_tcp_both_ways_udp_and_ping(topo: Topology, guest: Guest) -> None:
    guest.dhcp()
    for kind, port in (("sink", 9000), ("source", 9001)):
        topo.spawn_remote(PY, PEERS, kind, str(port))
        topo.wait_listening(port)
    topo.spawn_remote(PY, PEERS, "udp-echo", "7000", REMOTE_ADDR4)
    size = 20 * MiB
    lines = guest.run(f"{PY} {PEERS} send {REMOTE_ADDR4} 9000 {size} 1\n"
                      f"{PY} {PEERS} recv {REMOTE_ADDR4} 9001 {size} 2\n"
                      f"ping -c 2 -W 3 {REMOTE_ADDR4} >/dev/null && echo ping-ok\n"
                      f"{PY} -c \"import socket; s = socket.socket(socket.AF_INET, "
                      "socket.SOCK_DGRAM); s.settimeout(5); "
                      f"s.sendto(b'udp-ok', ('{REMOTE_ADDR4}', 7000)); "
                      "print(s.recv(100).decode())\"")
    digests = [subprocess.run([PY, PEERS, "digest", str(size), str(seed)], capture_output=True,
                              text=True).stdout.strip() for seed in (1, 2)]
    assert lines == digests + ["ping-ok", "udp-ok"]


def test_requests_answered_and_a_lone_write_acknowledged_soon(topo: Topology,
                                                              guest: Guest) -> None:
    """As tests/e2e/test_tcp.py's, over the stream socket: the owed ACK
    goes out without an answer to carry it, the guest retransmits nothing."""
    guest.dhcp()
    topo.spawn_remote(PY, PEERS, "tcp-echo", "9000")
    topo.wait_listening(9000)
    [line] = guest.run(f"{PY} {PEERS} ack-check {REMOTE_ADDR4} 9000 200")
    words = line.split()
    assert words[:6] == ["echoed", "200", "retrans", "0", "unacked", "0"], line
    assert int(words[7]) < 150, line


def test_ipv6_slaac_and_tcp(topo: Topology, guest: Guest) -> None:
    topo.spawn_remote(PY, PEERS, "source", "9001")
    topo.wait_listening(9001)
    lines = guest.run(
        "for i in $(seq 100); do ip -6 addr show dev eth0 scope global -tentative | "
        "grep -q 2001:db8:1: "
        "&& break; sleep 0.1; done; ip -6 -br addr show dev eth0 scope global\n"
        f"{PY} {PEERS} recv {REMOTE_ADDR6} 9001 {MiB} 3")
    assert "2001:db8:1:" in lines[0]
    expected = subprocess.run([PY, PEERS, "digest", str(MiB), "3"], capture_output=True,
                              text=True).stdout.strip()
    assert lines[1] == expected


def test_forwarded_port_reaches_the_guest(topo: Topology, guest: Guest) -> None:
    guest.dhcp()
    server = subprocess.Popen(guest.cmd(PY, PEERS, "sink", "20080"))
    try:
        deadline = time.monotonic() + 20
        while True:
            result = subprocess.run(topo.remote_cmd(PY, PEERS, "send", HOST_ADDR4, "10080",
                                                    str(MiB), "4"), capture_output=True, text=True)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        expected = subprocess.run([PY, PEERS, "digest", str(MiB), "4"], capture_output=True,
                                  text=True).stdout.strip()
        assert result.stdout.strip() == expected, result.stderr
    finally:
        server.kill()


def test_second_client_is_refused_and_one_off_exits(topo: Topology, passt: str,
                                                     passt_socket: str, shared_tmp) -> None:
    daemon = topo.spawn_host(passt, "-f", "-1", "-s", passt_socket, stderr=subprocess.PIPE,
                             text=True)
    first = Guest(topo, passt_socket, str(shared_tmp))
    try:
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        second.connect(passt_socket)
        second.settimeout(5)
        assert second.recv(10) == b""  # accepted and closed
        second.close()
    finally:
        first.close()
    assert daemon.wait(timeout=20) == 0
    assert "already connected" in daemon.stderr.read()


def test_host_addresses_are_the_guests(topo: Topology, guest: Guest) -> None:
    """No NAT: the remote sees the connection from the host's own address."""
    guest.dhcp()
    topo.spawn_remote(PY, "-c", (
        "import socket\ns = socket.create_server(('::', 9200), family=socket.AF_INET6,"
        " dualstack_ipv6=True)\n"
        "while True:\n    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()\n"))
    topo.wait_listening(9200)
    lines = guest.run(f"{PY} -c \"import socket; c = socket.create_connection(('{REMOTE_ADDR4}',"
                      " 9200), 10); print(c.recv(100).decode())\"")
    assert lines == [f"::ffff:{HOST_ADDR4}"]


def _status_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        return dict(line.split(":\t", 1) for line in handle.read().splitlines() if ":\t" in line)


def _wait_exit(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.05)
    return False


def test_libvirt_command_line(topo: Topology, passt: str, shared_tmp) -> None:
    """libvirt's argv: daemonizes, writes the pid file, binds the ports of
    an address%interface spec with an exclusion and a translated range,
    serves one guest and exits when it leaves (--one-off)."""
    socket_path, pidfile = shared_tmp / "libvirt.socket", shared_tmp / "libvirt.pid"
    log = shared_tmp / "libvirt.log"
    log.write_text("")                     # libvirt creates the log file itself
    result = topo.run_host(
        passt, "--one-off", "--socket", str(socket_path), "--pid", str(pidfile),
        "--mtu", "1500", "--interface", "eth0", "--log-file", str(log),
        "--address", HOST_ADDR4, "--netmask", "24", "--mac-addr", "52:54:00:12:34:56",
        "--tcp-ports", f"{HOST_ADDR4}%eth0/~10081,10080-10082:20080-20082",
        "--udp-ports", "10090")
    assert result.returncode == 0, result.stderr
    worker = int(pidfile.read_text())
    listening = topo.in_host("ss", "-Htln").stdout
    assert f"{HOST_ADDR4}%eth0:10080" in listening and f"{HOST_ADDR4}%eth0:10082" in listening
    assert ":10081" not in listening
    guest = Guest(topo, str(socket_path), str(shared_tmp))
    try:
        lines = guest.run("busybox udhcpc -i eth0 -f -q -n -t 5 -T 1 -s /bin/true 2>&1 | "
                          "grep -o 'lease of [0-9.]* obtained' ; ip -br link show eth0")
        assert lines[0] == f"lease of {HOST_ADDR4} obtained"
    finally:
        guest.close()
    assert _wait_exit(worker), "--one-off: the worker did not exit after the guest left"


def test_qemu_netdev_passt_fd_command_line(topo: Topology, passt: str, shared_tmp) -> None:
    """QEMU's -netdev passt: `passt --quiet --pid FILE --fd 3`, fd 3 one end
    of a connection whose other end is the guest."""
    socket_path, pidfile = shared_tmp / "qemu.socket", shared_tmp / "qemu.pid"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(1)
    os.chmod(socket_path, 0o777)
    accepted: list[socket.socket] = []
    waiter = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
    waiter.start()
    guest = Guest(topo, str(socket_path), str(shared_tmp))
    try:
        waiter.join(timeout=20)
        conn = accepted[0]
        result = topo.run_host(passt, "--quiet", "--pid", str(pidfile), "--fd", "3",
                               pass_fds=(3,), preexec_fn=lambda: os.dup2(conn.fileno(), 3))
        assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
        worker = int(pidfile.read_text())
        conn.close()
        guest.dhcp()
        topo.spawn_remote(PY, PEERS, "source", "9001")
        topo.wait_listening(9001)
        lines = guest.run(f"{PY} {PEERS} recv {REMOTE_ADDR4} 9001 {MiB} 5")
        expected = subprocess.run([PY, PEERS, "digest", str(MiB), "5"], capture_output=True,
                                  text=True).stdout.strip()
        assert lines == [expected]
    finally:
        guest.close()
        listener.close()
    # -F implies --one-off, as passt: the guest gone, the worker exits by itself
    assert _wait_exit(worker)
    # The pid file is left at exit, as passt leaves it (the worker holds no
    # directory fd to unlink it with): QEMU removes it after the kill.
    assert pidfile.read_text() == f"{worker}\n"


def test_kubevirt_command_line(topo: Topology, passt: str, shared_tmp) -> None:
    """KubeVirt adds --runas 107 and port forwarding: the worker runs as 107."""
    socket_path, pidfile = shared_tmp / "kv.socket", shared_tmp / "kv.pid"
    result = topo.run_host(passt, "--runas", "107", "-t", "10080", "-u", "10090",
                           "--socket", str(socket_path), "--pid", str(pidfile), "--quiet")
    assert result.returncode == 0, result.stderr
    worker = int(pidfile.read_text())
    try:
        status = _status_of(worker)
        assert {int(x) for x in status["Uid"].split()} == {107}
        assert int(status["CapEff"], 16) == 0
    finally:
        os.kill(worker, 15)
    assert _wait_exit(worker)


def test_pcap_records_both_ways_readable_by_tshark(topo: Topology, passt: str,
                                                  passt_socket: str, shared_tmp) -> None:
    """-p: every frame both ways, in libpcap format that tshark reads back:
    the DHCP exchange and a TCP handshake are in it."""
    capture = shared_tmp / "guest.pcap"
    topo.spawn_host(passt, "-f", "-q", "-s", passt_socket, "-p", str(capture))
    topo.spawn_remote(PY, PEERS, "source", "9001")
    topo.wait_listening(9001)
    guest = Guest(topo, passt_socket, str(shared_tmp))
    try:
        guest.dhcp()
        guest.run(f"{PY} {PEERS} recv {REMOTE_ADDR4} 9001 1000 6")
    finally:
        guest.close()

    def count(display_filter: str) -> int:
        result = subprocess.run(["tshark", "-r", str(capture), "-Y", display_filter],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return len(result.stdout.splitlines())

    assert count("dhcp.option.dhcp == 1") >= 1          # DISCOVER, from the guest
    assert count("dhcp.option.dhcp == 2") >= 1          # OFFER, from passt-sep
    assert count("dhcp.option.dhcp == 5") >= 1          # ACK
    assert count(f"tcp.flags.syn == 1 && tcp.flags.ack == 0 && ip.dst == {REMOTE_ADDR4}") >= 1
    assert count(f"tcp.flags.syn == 1 && tcp.flags.ack == 1 && ip.src == {REMOTE_ADDR4}") >= 1
