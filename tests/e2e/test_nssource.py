"""The ns socket source against a worker that may be the attacker's.

A real source, spawned by the broker's own code (``Broker._ns_source``:
in the topology's host namespace, jailed as nobody, under its seccomp
allowlist) for ``pasta-sep -t 10080:20080 -u 5353 -T none -U auto``; the
test speaks the worker's end of its socket.  Malformed frames and
requests, and ports outside the forwards, get an error answer and no
socket; the source stays alive, keeps its fd table clean and still serves
a good request; only closing the socket ends it.  That the real daemon
still splices is tests/e2e/test_splice.py's."""

from __future__ import annotations

import os
import socket
import struct
import sys

import msgpack
import pytest

from passt_sep import fdpass, sandbox
from passt_sep.broker import jail, namespaces
from passt_sep.broker.main import Broker
from passt_sep.config import parse_args
from passt_sep.nssource import NsSource, NsSourceError

from topology import Topology

AF4, AF6 = int(socket.AF_INET), int(socket.AF_INET6)
OPTIONS = ["-t", "10080:20080", "-u", "5353", "-T", "none", "-U", "auto"]
GREETER = ("import socket, sys\n"
           "s = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
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

    def __init__(self, topo: Topology) -> None:
        config = parse_args(["--config-net", *OPTIONS, "--netns", topo.host], "pasta-sep")
        broker = Broker(config, None)  # type: ignore[arg-type]  # no netlink helper needed
        broker.target = namespaces.open_existing(config.netns, None, None)
        broker.source_filter = sandbox.prepare("nssource")
        before = _children()
        try:
            broker._ns_source(jail.resolve_runas(None, True))
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
    return frame(msgpack.packb({"op": "connect", "family": AF4, "port": 20080, "nfds": 0,
                                **fields}, use_bin_type=True))


def _greeting(topo: Topology, source: Source) -> bytes:
    """A good request still answered: a socket connecting to the namespace's
    20080, where the greeter says hello."""
    sock = socket.socket(fileno=source.client.connect(socket.AF_INET, 20080))
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
    request(nfds=3),
]
REFUSED = [("connect", 10080), ("connect", 22), ("connect", 20081), ("listen", 20080),
           ("listen", 10080), ("udp_connect", 53), ("udp_connect", 20080)]


def test_malformed_requests_are_answered_and_the_source_lives_on(topo: Topology,
                                                                 source: Source) -> None:
    topo.spawn_host(sys.executable, "-c", GREETER, "20080")
    topo.wait_listening(20080, remote=False)
    for data in MALFORMED:
        answer, fds = source.raw(data)
        assert "error" in answer and isinstance(answer["error"], str) and fds == [], data
        assert source.alive()
    assert _greeting(topo, source) == b"hello"


@pytest.mark.parametrize("op, port", REFUSED)
def test_ports_outside_the_forwards_are_refused(topo: Topology, source: Source, op: str,
                                                port: int) -> None:
    with pytest.raises(NsSourceError, match=f"{op} on port {port}: not a forwarded port"):
        source.client.ask(op, socket.AF_INET, port)
    assert source.alive()
    listening = topo.run_host("ss", "-H", "-tuln", f"sport = :{port}").stdout
    assert listening.strip() == ""


def test_allowed_ports_are_served(source: Source) -> None:
    """-u 5353 allows connecting to it; -U auto, binding any port."""
    for op, family, port, kind in (("udp_connect", socket.AF_INET6, 5353, "getpeername"),
                                   ("udp_bind", socket.AF_INET, 5354, "getsockname")):
        with socket.socket(fileno=source.client.ask(op, family, port)) as sock:
            assert sock.type == socket.SOCK_DGRAM
            assert getattr(sock, kind)()[:2] == (
                "::1" if family == socket.AF_INET6 else "127.0.0.1", port)


def test_a_long_frame_is_dropped_in_step(topo: Topology, source: Source) -> None:
    topo.spawn_host(sys.executable, "-c", GREETER, "20080")
    topo.wait_listening(20080, remote=False)
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
