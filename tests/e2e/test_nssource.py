"""The ns socket source against a worker that may be the attacker's.

A real source, spawned by the broker's own code (``Broker._ns_source``:
in the topology's host namespace, jailed as nobody, under its seccomp
allowlist) for ``pasta-sep -t 10080:20080 -u 5353 -T none -U auto``, with
the host namespace's addresses as the namespace's own; the test speaks
the worker's end of its socket.  Malformed frames and requests, ports
outside the forwards and addresses other than the namespace's own (its
loopback too, without ``--host-lo-to-ns-lo``) get an error answer and no
socket; the source stays alive, keeps its fd table clean and still serves
a good request; only closing the socket ends it.  That the real daemon
still splices is tests/e2e/test_splice.py's and test_host_loopback.py's."""

from __future__ import annotations

import os
import socket
import struct
import sys

import msgpack
import pytest

from passt_sep.broker import jail, namespaces
from passt_sep.broker.main import Broker
from passt_sep.config import parse_args
from passt_sep.netparams import IPv4Params, IPv6Params, Network
from passt_sep.nspolicy import LOOPBACK
from passt_sep.system import fdpass, sandbox
from passt_sep.system.nssource import NsSource, NsSourceError

from topology import GW_ADDR4, GW_ADDR6, HOST_ADDR4, HOST_ADDR6, Topology

AF4, AF6 = int(socket.AF_INET), int(socket.AF_INET6)
OWN = {AF4: socket.inet_pton(socket.AF_INET, HOST_ADDR4),
       AF6: socket.inet_pton(socket.AF_INET6, HOST_ADDR6)}
NET = Network(ipv4=IPv4Params(OWN[AF4], 24, socket.inet_pton(socket.AF_INET, GW_ADDR4)),
              ipv6=IPv6Params(OWN[AF6], 64, socket.inet_pton(socket.AF_INET6, GW_ADDR6)))
OPTIONS = ["-t", "10080:20080", "-u", "5353", "-T", "none", "-U", "auto"]
GREETER = ("import socket, sys\n"
           "s = socket.create_server((sys.argv[1], int(sys.argv[2])))\n"
           "while True:\n"
           "    c, _ = s.accept(); c.sendall(b'hello'); c.close()\n")


def _children() -> set[int]:
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.add(int(entry))
    return found


class Source:
    """The worker's end of a running ns socket source, and its pid."""

    def __init__(self, topo: Topology, *options: str) -> None:
        config = parse_args(["--config-net", *OPTIONS, *options, "--netns", topo.host],
                            "pasta-sep")
        broker = Broker(config, None)  # type: ignore[arg-type]  # no netlink helper needed
        broker.target = namespaces.open_existing(config.netns, None, None)
        broker.source_filter = sandbox.prepare("nssource")
        before = _children()
        try:
            broker._ns_source(jail.resolve_runas(None, True), NET)
        finally:
            os.close(broker.target.netns_fd)
        (self.pid,) = _children() - before
        (entry,) = broker.entries
        self.sock = socket.socket(fileno=entry.fd)
        self.sock.settimeout(10)
        self.client = NsSource(os.dup(entry.fd))    # what the worker asks with
        self.status: int | None = None

    def raw(self, data: bytes, fds: list[int] = ()) -> tuple[dict, list[int]]:
        """Send ``data`` as it is (with ``fds``); the answer."""
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                      struct.pack(f"{len(fds)}i", *fds))] if fds else []
        sent = self.sock.sendmsg([data], ancillary)
        self.sock.sendall(data[sent:])
        return fdpass.receive(self.sock)

    def alive(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def fd_kinds(self) -> list[str]:
        fd_dir = f"/proc/{self.pid}/fd"
        return sorted(os.readlink(f"{fd_dir}/{fd}").partition(":")[0] for fd in os.listdir(fd_dir))

    def close(self) -> int:
        """Close the worker's end; the source's exit status."""
        self.sock.close()
        self.client.sock.close()
        self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.status


@pytest.fixture
def source(topo: Topology):
    made = Source(topo)
    yield made
    if made.status is None:
        made.close()


def frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def request(**fields: object) -> bytes:
    return frame(msgpack.packb({"op": "connect", "family": AF4, "address": OWN[AF4],
                                "port": 20080, "nfds": 0, **fields}, use_bin_type=True))


def _greeter(topo: Topology, address: str = HOST_ADDR4) -> None:
    topo.spawn_host(sys.executable, "-c", GREETER, address, "20080")
    topo.wait_listening(20080, remote=False)


def _greeting(topo: Topology, source: Source) -> bytes:
    """A good request still answered: a socket connecting to the namespace's
    own address port 20080, where the greeter says hello."""
    sock = socket.socket(fileno=source.client.connect(socket.AF_INET, OWN[AF4], 20080))
    with sock:
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        sock.setblocking(True)
        sock.settimeout(10)
        return sock.recv(100)


MALFORMED = [
    frame(b"\xc1"), frame(b""), frame(b"\x91" * 200 + b"\xc0"), frame(msgpack.packb([1, 2])),
    frame(b"\x81\x91\x01\x01"),
    request(op=["connect"]), request(op={"connect": 1}), request(op="bind"),
    request(family=[2]), request(family=1), request(port=0), request(port=65536),
    request(port=[20080]), request(port="20080"), request(extra=True),
    frame(msgpack.packb({"op": "connect", "family": AF4, "port": 20080})),
    request(nfds=3), request(address=HOST_ADDR4), request(address=OWN[AF6]),
    request(address=None),
]
REFUSED = [("connect", 10080), ("connect", 22), ("connect", 20081), ("listen", 20080),
           ("listen", 10080), ("udp_connect", 53), ("udp_connect", 20080)]


def test_malformed_requests_are_answered_and_the_source_lives_on(topo: Topology,
                                                                 source: Source) -> None:
    _greeter(topo)
    for data in MALFORMED:
        answer, fds = source.raw(data)
        assert "error" in answer and isinstance(answer["error"], str) and fds == [], data
        assert source.alive()
    assert _greeting(topo, source) == b"hello"


@pytest.mark.parametrize("op, port", REFUSED)
def test_ports_outside_the_forwards_are_refused(topo: Topology, source: Source, op: str,
                                                port: int) -> None:
    address = OWN[AF4] if op in ("connect", "udp_connect") else LOOPBACK[socket.AF_INET]
    with pytest.raises(NsSourceError, match=f"{op} on port {port}: not a forwarded port"):
        source.client.ask(op, socket.AF_INET, address, port)
    assert source.alive()
    listening = topo.run_host("ss", "-H", "-tuln", f"sport = :{port}").stdout
    assert listening.strip() == ""


def test_allowed_ports_are_served(source: Source) -> None:
    """-u 5353 allows connecting to it at the namespace's own address (the
    kernel binds that address as the source); -U auto, binding any port
    on the loopback."""
    for op, family, address, port, kind in (
            ("udp_connect", socket.AF_INET6, HOST_ADDR6, 5353, "getpeername"),
            ("udp_connect", socket.AF_INET, HOST_ADDR4, 5353, "getpeername"),
            ("udp_bind", socket.AF_INET, "127.0.0.1", 5354, "getsockname"),
            ("udp_bind", socket.AF_INET6, "::1", 5355, "getsockname")):
        raw = socket.inet_pton(family, address)
        with socket.socket(fileno=source.client.ask(op, family, raw, port)) as sock:
            assert sock.type == socket.SOCK_DGRAM
            assert getattr(sock, kind)()[:2] == (address, port)
            if op == "udp_connect":
                assert sock.getsockname()[0] == address


@pytest.mark.parametrize("op, family, address", [
    ("connect", AF4, "127.0.0.1"), ("connect", AF6, "::1"), ("udp_connect", AF4, "127.0.0.1"),
    ("connect", AF4, GW_ADDR4), ("connect", AF6, GW_ADDR6), ("connect", AF4, "0.0.0.0"),
    ("udp_bind", AF4, HOST_ADDR4), ("udp_bind", AF6, "::")])
def test_addresses_other_than_the_namespace_own_are_refused(topo: Topology, source: Source,
                                                            op: str, family: int,
                                                            address: str) -> None:
    """Not even the namespace's loopback, where a greeter listens, by default."""
    _greeter(topo, "127.0.0.1")
    port = 20080 if op == "connect" else 5353 if op == "udp_connect" else 5356
    with pytest.raises(NsSourceError, match=f"{op} at {address}: not an address"):
        source.client.ask(op, family, socket.inet_pton(family, address), port)
    assert source.alive()


def test_host_lo_to_ns_lo_lets_the_source_reach_the_loopback(topo: Topology) -> None:
    _greeter(topo, "127.0.0.1")
    made = Source(topo, "--host-lo-to-ns-lo")
    try:
        fd = made.client.connect(socket.AF_INET, LOOPBACK[socket.AF_INET], 20080)
        with socket.socket(fileno=fd) as sock:
            sock.setblocking(True)
            sock.settimeout(10)
            assert sock.recv(100) == b"hello"
            assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        assert made.close() == 0


def test_a_long_frame_is_dropped_in_step(topo: Topology, source: Source) -> None:
    _greeter(topo)
    junk = (request() * ((1 << 20) // len(request()) + 1))[:1 << 20]   # no frames in there
    answer, fds = source.raw(struct.pack("!I", len(junk)) + junk)
    assert answer["error"] == "request of 1048576 bytes, more than 256" and fds == []
    assert _greeting(topo, source) == b"hello"


def test_the_source_under_test_is_jailed_and_filtered(source: Source) -> None:
    """Checked once it has answered: it serves only after jail and filter."""
    answer, fds = source.raw(request(port=0))
    assert "error" in answer and fds == []
    with open(f"/proc/{source.pid}/status", encoding="ascii") as handle:
        status = dict(line.split(":", 1) for line in handle)
    assert status["Seccomp"].strip() == "2" and int(status["CapEff"], 16) == 0
    assert status["Uid"].split()[0] == "65534"
    assert os.listdir(f"/proc/{source.pid}/root") == []


def test_fds_sent_to_the_source_are_closed(source: Source) -> None:
    """Its fd table read once it has answered: until then it may still
    hold what it inherited from its parent."""
    assert "error" in source.raw(request(port=0))[0]
    before = source.fd_kinds()
    assert before == ["/dev/null"] * 3 + ["socket"]
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        answer, fds = source.raw(request(nfds=200), [null] * 200)
    finally:
        os.close(null)
    assert answer["error"] == "the source takes no fds: nfds must be 0" and fds == []
    assert source.fd_kinds() == before
    assert source.alive()


def test_only_closing_its_socket_ends_the_source(source: Source) -> None:
    source.raw(frame(b"\x00\x00"))                  # anything at all first
    assert source.alive()
    assert source.close() == 0
