"""UDP, DNS forwarding and ICMP errors through pasta-sep, with real peers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from topology import HOST_ADDR4, HOST_ADDR6, REMOTE_ADDR4, REMOTE_ADDR6, Topology

PEERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers.py")
PY = sys.executable

ECHO_CLIENT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(3)
for size in (1, 1000, 8000, 60000):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for attempt in range(5):
        s.sendto(payload, (host, port))
        try:
            data, peer = s.recvfrom(65535)
            break
        except TimeoutError:
            continue
    print(size, data == payload, peer[0], peer[1])
"""


def run_in_pasta(topo: Topology, pasta: str, script: str, *options: str, timeout: float = 120):
    result = topo.run_host(pasta, "--config-net", *options, "--", "sh", "-ec", script,
                           timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("remote", [REMOTE_ADDR4, REMOTE_ADDR6])
def test_udp_echo_outbound(topo: Topology, pasta: str, remote: str) -> None:
    # bound to the address itself: a wildcard socket would answer from the
    # address of its outgoing interface instead
    topo.spawn_remote(PY, PEERS, "udp-echo", "7000", remote)
    topo.wait_listening(7000, "udp")
    lines = run_in_pasta(topo, pasta, f"{PY} -c \"{ECHO_CLIENT}\" {remote} 7000")
    assert lines == [f"{size} True {remote} 7000" for size in (1, 1000, 8000, 60000)]


def test_port_unreachable_reaches_the_guest_socket(topo: Topology, pasta: str) -> None:
    script = (f"{PY} -c \"import socket\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
              f"s.connect(('{REMOTE_ADDR4}', 7999)); s.send(b'x')\n"
              "try:\n    s.recv(10)\nexcept ConnectionRefusedError:\n    print('refused')\"")
    assert run_in_pasta(topo, pasta, script) == ["refused"]


def _echo_from_remote(topo: Topology, host: str, port: int, deadline: float = 20.0) -> list[str]:
    end = time.monotonic() + deadline
    while True:
        result = subprocess.run(topo.remote_cmd(PY, "-c", ECHO_CLIENT, host, str(port)),
                                capture_output=True, text=True)
        if result.returncode == 0 or time.monotonic() > end:
            return result.stdout.splitlines()
        time.sleep(0.3)


@pytest.mark.parametrize("host", [HOST_ADDR4, HOST_ADDR6])
def test_inbound_udp_forwarding_translated(topo: Topology, pasta: str, host: str) -> None:
    topo.spawn_host(pasta, "--config-net", "-u", "7100-7101:7200-7201", "--",
                    PY, PEERS, "udp-echo", "7200", stdout=subprocess.DEVNULL)
    topo.wait_listening(7100, "udp", remote=False)
    lines = _echo_from_remote(topo, host, 7100)
    assert lines == [f"{size} True {host} 7100" for size in (1, 1000, 8000, 60000)]


def test_udp_stream_loss_is_bounded_and_reported(topo: Topology, pasta: str) -> None:
    """50 MB of numbered datagrams at 20 MB/s: every one that arrives is
    intact, and loss is counted (passt-sep, like any UDP path, may drop
    under load; it must never corrupt)."""
    count = 50_000  # 50 MB of 1000-byte datagrams
    counter = topo.spawn_remote(PY, PEERS, "udp-count", "7300", "3", stdout=subprocess.PIPE,
                                text=True)
    topo.wait_listening(7300, "udp")
    lines = run_in_pasta(topo, pasta,
                         f"{PY} {PEERS} udp-stream {REMOTE_ADDR4} 7300 {count} 20000")
    assert lines == [f"sent {count}"]
    got, _, missing, _, corrupt = counter.communicate(timeout=60)[0].split()[1:6]
    assert int(corrupt) == 0
    assert int(got) + int(missing) <= count
    print(f"UDP stream: {got} of {count} datagrams arrived, {missing} missing")
    assert int(got) >= count * 9 // 10, f"lost more than 10%: got {got} of {count}"


# an empty datagram after equal ones would vanish if it joined their batch
BURST_SIZES = [1000] * 50 + [3000] * 20 + [1000, 600, 1000, 1400, 1400, 0, 20, 0, 9000] * 10

BURST_SENDER = """
import socket, sys, time
host, port, sizes = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3])
pace = int(sys.argv[4]) if len(sys.argv) > 4 else 0   # a pause after so many
family = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.sendto(b'warm-up', (host, port))  # neighbours resolved before the burst
time.sleep(0.5)
for number, size in enumerate(sizes):
    s.sendto(bytes([number % 256]) * size, (host, port))
    if pace and number % pace == pace - 1:
        time.sleep(0.005)
print('sent', len(sizes))
"""

BURST_RECEIVER = """
import socket, sys
family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(3)
got = []
try:
    while True:
        data = s.recv(65535)
        if data != b'warm-up':
            got.append((len(data), data[:1].hex()))
except TimeoutError:
    pass
print(got)
"""


@pytest.mark.parametrize("remote", [REMOTE_ADDR4, REMOTE_ADDR6])
def test_udp_burst_keeps_sizes_and_order(topo: Topology, pasta: str, remote: str) -> None:
    """Datagrams sent back to back leave together (UDP GSO), each with its
    own size and in order, including those over the path MTU (GSO refused:
    sent one by one) and empty ones."""
    receiver = topo.spawn_remote(PY, "-c", BURST_RECEIVER, remote, "7400",
                                 stdout=subprocess.PIPE, text=True)
    topo.wait_listening(7400, "udp")
    sizes = repr(BURST_SIZES).replace(" ", "")
    lines = run_in_pasta(topo, pasta, f"{PY} -c \"{BURST_SENDER}\" {remote} 7400 '{sizes}'")
    assert lines == [f"sent {len(BURST_SIZES)}"]
    got = eval(receiver.communicate(timeout=30)[0])
    expected = [(size, bytes([n % 256]).hex() if size else "") for n, size in
                enumerate(BURST_SIZES)]
    assert got == expected


@pytest.mark.parametrize("host", [HOST_ADDR4, HOST_ADDR6])
def test_udp_burst_to_the_guest_keeps_sizes_and_order(topo: Topology, pasta: str,
                                                      host: str) -> None:
    """Towards the guest, datagrams from one peer leave as one frame for
    the kernel to cut apart (USO): each arrives with its own size, in order.
    The peer pauses every 16 datagrams: a burst of all of them would
    overflow the forwarded socket's receive buffer on the host."""
    receiver = topo.spawn_host(pasta, "--config-net", "-u", "7410", "--", PY, "-c",
                               BURST_RECEIVER, "::", "7410", stdout=subprocess.PIPE,
                               text=True)
    topo.wait_listening(7410, "udp", remote=False)
    time.sleep(0.5)                                   # the receiver inside, bound
    sizes = repr(BURST_SIZES).replace(" ", "")
    sent = subprocess.run(topo.remote_cmd(PY, "-c", BURST_SENDER, host, "7410", sizes, "16"),
                          capture_output=True, text=True, timeout=30)
    assert sent.stdout.split() == ["sent", str(len(BURST_SIZES))], sent.stderr
    got = eval(receiver.communicate(timeout=30)[0])
    assert got == [(size, bytes([n % 256]).hex() if size else "")
                   for n, size in enumerate(BURST_SIZES)]


@pytest.fixture
def dns_remote(topo: Topology) -> None:
    """The resolvers of the host's resolv.conf, answering from their own
    addresses (a wildcard UDP socket would answer from its interface's)."""
    for address in (REMOTE_ADDR4, REMOTE_ADDR6):
        topo.spawn_remote(PY, PEERS, "dns", "53", address)
    topo.wait_listening(53, "udp")
    topo.wait_listening(53, "tcp")


@pytest.mark.parametrize("forward, qtype, answer", [
    ("169.254.1.1", "A", "203.0.113.53"),
    ("169.254.1.1", "AAAA", "2001:db8:2::53"),
    ("fd00:53::1", "A", "203.0.113.53"),
])
@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_dns_forward(topo: Topology, pasta: str, dns_remote, forward: str, qtype: str,
                     answer: str, transport: str) -> None:
    script = f"dig +short +time=2 +tries=3 {transport} @{forward} name.example.test {qtype}"
    lines = run_in_pasta(topo, pasta, script, "--dns-forward", forward)
    assert lines == [answer]


def test_dhcp_hands_out_dns_and_search_options(topo: Topology, pasta: str) -> None:
    script = ("busybox udhcpc -i eth0 -f -q -n -t 5 -T 1 -O search "
              "-s /bin/sh -- 2>/dev/null; true")
    helper = ('[ "$1" = bound ] && echo "dns=$dns" && echo "search=$search"; exit 0')
    path = "/tmp/passt-sep-udhcpc.sh"
    with open(path, "w", encoding="ascii") as handle:
        handle.write("#!/bin/sh\n" + helper + "\n")
    os.chmod(path, 0o755)
    try:
        lines = run_in_pasta(topo, pasta, script.replace("/bin/sh --", path),
                             "-D", "203.0.113.7", "-D", "203.0.113.8", "-S", "a.test b.test",
                             "--dhcp-dns", "--dhcp-search")
    finally:
        os.unlink(path)
    assert "dns=203.0.113.7 203.0.113.8" in lines
    assert "search=a.test b.test" in lines


UDP_PEER_REPORTER = ("import socket, sys\n"
                     "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
                     "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
                     "s.bind(('::', int(sys.argv[1])))\n"
                     "while True:\n"
                     "    data, peer = s.recvfrom(100)\n"
                     "    s.sendto(peer[0].removeprefix('::ffff:').encode() + b' ' + data, peer)\n")

ASK_WITH_RETRIES = ("import socket, sys, time\n"
                    "host, port = sys.argv[1], int(sys.argv[2])\n"
                    "family = socket.AF_INET6 if ':' in host else socket.AF_INET\n"
                    "s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(0.3)\n"
                    "end = time.monotonic() + 20\n"
                    "while time.monotonic() < end:\n"
                    "    try:\n"
                    "        s.sendto(b'hello', (host, port)); print(s.recv(100).decode()); break\n"
                    "    except OSError:\n"
                    "        time.sleep(0.2)\n")


def _ask_from_host(topo: Topology, host: str, port: int) -> str:
    result = topo.run_host(PY, "-c", ASK_WITH_RETRIES, host, str(port), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _served_in_namespace(topo: Topology, pasta: str, port: int, *options: str) -> None:
    topo.spawn_host(pasta, "--config-net", *options, "--", PY, "-c", UDP_PEER_REPORTER,
                    str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("host, seen", [("127.0.0.1", HOST_ADDR4), ("::1", HOST_ADDR6)])
def test_udp_from_host_loopback_is_spliced(topo: Topology, pasta: str, host: str,
                                           seen: str) -> None:
    """-u from the host's own loopback goes socket to socket: the namespace's
    server sees its own address (not the gateway, as over the tap), and the
    reply comes back."""
    _served_in_namespace(topo, pasta, 21000, "-u", "11000:21000")
    assert _ask_from_host(topo, host, 11000) == f"{seen} hello"


def test_udp_no_splice_comes_from_the_gateway(topo: Topology, pasta: str) -> None:
    _served_in_namespace(topo, pasta, 21001, "-u", "11001:21001", "--no-splice")
    assert _ask_from_host(topo, "127.0.0.1", 11001) == "198.51.100.1 hello"


def test_udp_namespace_port_forwarded_to_host(topo: Topology, pasta: str) -> None:
    """-U: the namespace's loopback port reaches the host's loopback port."""
    topo.spawn_host(PY, "-c", UDP_PEER_REPORTER, "21002")
    topo.wait_listening(21002, "udp", remote=False)
    result = topo.run_host(pasta, "--config-net", "-U", "11002:21002", "--",
                           PY, "-c", ASK_WITH_RETRIES, "127.0.0.1", "11002")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "127.0.0.1 hello"


def test_udp_auto_follows_both_sides(topo: Topology, pasta: str) -> None:
    """Default (auto): a UDP port the host binds appears on the namespace's
    loopback, and one the namespace binds appears on the host."""
    topo.spawn_host(PY, "-c", UDP_PEER_REPORTER, "21003")
    topo.wait_listening(21003, "udp", remote=False)
    inside = topo.spawn_host(pasta, "--config-net", "--", "sh", "-c",
                             f"{PY} -c \"$0\" 21004 & {PY} -c \"$1\" 127.0.0.1 21003; sleep 30",
                             UDP_PEER_REPORTER, ASK_WITH_RETRIES,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert _ask_from_host(topo, "127.0.0.1", 21004) == f"{HOST_ADDR4} hello"
    first = inside.stdout.readline().strip()
    assert first == "127.0.0.1 hello"
