"""The ns socket source's checks, before any socket is made: the ports the
forwarding options allow each operation and the addresses it may reach
(``nspolicy``), the request schema (``nssource.decide``, on bytes), and
the frame reader on a real socket pair (malformed frames leave it in
step)."""

from __future__ import annotations

import itertools
import os
import socket
import struct
import threading

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt_sep import nspolicy
from passt_sep.config import parse_args
from passt_sep.netparams import IPv4Params, IPv6Params, Network
from passt_sep.nspolicy import EVERY_PORT, LOOPBACKS, NO_PORT, Policy, PortSet
from passt_sep.ports import parse_forward
from passt_sep.system import fdpass, nssource
from passt_sep.system.nssource import Request, RequestError, SourceClosed
from passt_sep.worker.splice_io import Landing

AF4, AF6 = int(socket.AF_INET), int(socket.AF_INET6)
OWN = {AF4: socket.inet_pton(socket.AF_INET, "192.0.2.2"),
       AF6: socket.inet_pton(socket.AF_INET6, "2001:db8::2")}
LO = {AF4: socket.inet_pton(socket.AF_INET, "127.0.0.1"),
      AF6: socket.inet_pton(socket.AF_INET6, "::1")}
NET = Network(ipv4=IPv4Params(OWN[AF4], 24, socket.inet_pton(socket.AF_INET, "192.0.2.1")),
              ipv6=IPv6Params(OWN[AF6], 64, socket.inet_pton(socket.AF_INET6, "2001:db8::1")))


def policy(*argv: str, net: Network = NET) -> Policy:
    return nspolicy.for_config(parse_args(["--config-net", *argv], "pasta-sep"), net)


def body(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def default_address(op: str, family: object) -> bytes:
    """Where the worker asks each operation for: connecting, the
    namespace's own address; listening, its loopback."""
    table = OWN if op in ("connect", "udp_connect") else LO
    return table[family if family in (AF4, AF6) else AF4]  # type: ignore[index]


def request(op: object = "connect", family: object = AF4, port: object = 20080,
            **extra: object) -> bytes:
    """What the worker sends, with ``extra`` fields added or replaced."""
    return body(**{"op": op, "family": family, "address": default_address(op, family),
                   "port": port, "nfds": 0, **extra})


FIXED = policy("-t", "10080:20080,30000-30010:40000-40010", "-u", "53:5353", "-T", "8080",
               "-U", "none")


# -- the allowed ports ------------------------------------------------------------------

def test_connect_allows_the_translated_target_not_the_host_port() -> None:
    assert 20080 in FIXED.connect and 10080 not in FIXED.connect
    assert 5353 in FIXED.udp_connect and 53 not in FIXED.udp_connect


def test_ranges_map_by_offset() -> None:
    assert [p in FIXED.connect for p in (39999, 40000, 40005, 40010, 40011, 30005)] == [
        False, True, True, True, False, False]


def test_fixed_namespace_forwards_are_never_asked_of_the_source() -> None:
    """-T/-U ports are bound by the broker: listen/udp_bind get nothing."""
    assert FIXED.listen == NO_PORT and FIXED.udp_bind == NO_PORT


def test_default_is_auto_everywhere() -> None:
    everything = policy()
    assert everything == Policy(EVERY_PORT, EVERY_PORT, EVERY_PORT, EVERY_PORT,
                                frozenset(OWN.values()))
    assert 1 in everything.listen and 65535 in everything.udp_connect


def test_exclusions_only_allow_every_other_port() -> None:
    allowed = policy("-t", "~22,~1000-2000").connect
    assert [p in allowed for p in (1, 21, 22, 23, 999, 1000, 1500, 2000, 2001, 65535)] == [
        True, True, False, True, True, False, False, False, True, True]


def test_namespace_auto_alone() -> None:
    allowed = policy("-t", "none", "-u", "none", "-T", "auto", "-U", "auto")
    assert allowed.connect == NO_PORT and allowed.udp_connect == NO_PORT
    assert allowed.listen == EVERY_PORT and allowed.udp_bind == EVERY_PORT


def test_no_tcp_no_udp_allow_nothing() -> None:
    assert policy("--no-tcp").connect == NO_PORT and policy("--no-tcp").listen == NO_PORT
    assert policy("--no-tcp").udp_connect == EVERY_PORT
    assert policy("--no-udp").udp_connect == NO_PORT and policy("--no-udp").udp_bind == NO_PORT


def test_port_set_merges_and_takes_only_ints() -> None:
    ports = PortSet.of([(10, 20), (5, 9), (15, 30), (40, 40)])
    assert ports.ranges == ((5, 30), (40, 40))
    assert [p in ports for p in (4, 5, 30, 31, 39, 40, 41)] == [
        False, True, True, False, False, True, False]
    assert all(p not in EVERY_PORT for p in (0, 65536, True, "80", 80.0, None, [80]))


ranges = st.tuples(st.integers(1, 400), st.integers(0, 20), st.integers(1, 400)).map(
    lambda r: f"{r[0]}-{r[0] + r[1]}:{r[2]}-{r[2] + r[1]}")


@given(st.lists(st.one_of(ranges, st.integers(1, 420).map(lambda p: f"~{p}")),
                min_size=1, max_size=6))
def test_targets_are_exactly_the_forwarded_targets(specs: list[str]) -> None:
    spec = ",".join(specs)
    forwarding = parse_forward([spec], "pasta", "-t")
    expected = {target for _port, target, _rule in forwarding.ports()}
    allowed = nspolicy.targets(forwarding)
    assert {p for first, last in allowed.ranges for p in range(first, last + 1)} == expected
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(allowed.ranges))
    assert {p for p in range(1, 1000) if p in allowed} == {p for p in expected if p < 1000}


def test_the_worker_lands_the_host_on_the_namespace_address() -> None:
    """What the worker asks for (``Landing``): the namespace's own address,
    whatever the host side came from; the loopback only for the host's
    loopback under --host-lo-to-ns-lo; nothing for a family the namespace
    has no address of (never its loopback instead)."""
    default, old = Landing(dict(OWN)), Landing(dict(OWN), host_lo_to_ns_lo=True)
    for family in (AF4, AF6):
        assert default.address(family, True) == default.address(family, False) == OWN[family]
        assert old.address(family, True) == LO[family] and old.address(family, False) == OWN[family]
        assert FIXED.addresses("connect") >= {default.address(family, True)}
        assert policy("--host-lo-to-ns-lo").addresses("connect") >= {old.address(family, True)}
    only4 = Landing({AF4: OWN[AF4]}, host_lo_to_ns_lo=False)
    assert only4.address(AF6, True) is None and only4.address(AF6, False) is None


# -- the request --------------------------------------------------------------------------

@pytest.mark.parametrize("op, port, allowed", [
    ("connect", 20080, FIXED), ("connect", 40010, FIXED), ("udp_connect", 5353, FIXED),
    ("listen", 631, policy("-T", "auto")), ("udp_bind", 53, policy("-U", "auto"))])
@pytest.mark.parametrize("family", [AF4, AF6])
def test_allowed_requests(op: str, port: int, allowed: Policy, family: int) -> None:
    assert nssource.decide(request(op, family, port), allowed) == Request(
        op, family, default_address(op, family), port)


# -- the allowed addresses ---------------------------------------------------------------

def test_connecting_reaches_the_namespace_address_not_its_loopback() -> None:
    """The default, as pasta: a service bound to the namespace's loopback
    is out of the host's reach; --host-lo-to-ns-lo adds the loopback."""
    assert FIXED.addresses("connect") == FIXED.addresses("udp_connect") == set(OWN.values())
    assert policy("--host-lo-to-ns-lo").addresses("connect") == set(OWN.values()) | LOOPBACKS


def test_listening_is_on_the_loopback_only() -> None:
    for allowed in (policy(), policy("--host-lo-to-ns-lo")):
        assert allowed.addresses("listen") == allowed.addresses("udp_bind") == LOOPBACKS


def test_a_family_without_an_address_reaches_nothing_of_it() -> None:
    only4 = Network(ipv4=NET.ipv4)
    assert policy("-4", net=only4).addresses("connect") == {OWN[AF4]}
    with pytest.raises(RequestError, match="connect at 2001:db8::2: not an address"):
        nssource.decide(request("connect", AF6), policy("-4", net=only4))


@pytest.mark.parametrize("op, family, address", [
    ("connect", AF4, "127.0.0.1"), ("connect", AF6, "::1"), ("udp_connect", AF4, "127.0.0.1"),
    ("udp_connect", AF6, "::1"), ("connect", AF4, "127.0.0.2"), ("connect", AF4, "0.0.0.0"),
    ("connect", AF6, "::"), ("connect", AF4, "192.0.2.1"), ("connect", AF4, "203.0.113.1"),
    ("connect", AF4, "255.255.255.255"), ("udp_connect", AF4, "224.0.0.1"),
    ("connect", AF6, "::ffff:127.0.0.1"), ("connect", AF6, "::ffff:192.0.2.2"),
    ("connect", AF6, "fe80::1"), ("connect", AF6, "2001:db8::1"),
    ("listen", AF4, "192.0.2.2"), ("listen", AF6, "2001:db8::2"), ("listen", AF4, "0.0.0.0"),
    ("udp_bind", AF6, "::"), ("udp_bind", AF4, "127.0.0.2")])
def test_addresses_outside_the_namespace_are_refused(op: str, family: int,
                                                     address: str) -> None:
    allowed = policy("-T", "auto", "-U", "auto")
    with pytest.raises(RequestError, match=f"{op} at {address}: not an address"):
        nssource.decide(request(op, family, address=socket.inet_pton(family, address)),
                        allowed)


@pytest.mark.parametrize("op, family", [("connect", AF4), ("udp_connect", AF6)])
def test_host_lo_to_ns_lo_lets_connecting_reach_the_loopback(op: str, family: int) -> None:
    allowed = policy("--host-lo-to-ns-lo")
    assert nssource.decide(request(op, family, address=LO[family]), allowed) == Request(
        op, family, LO[family], 20080)


@pytest.mark.parametrize("op, port", [
    ("connect", 10080), ("connect", 22), ("connect", 30005), ("udp_connect", 53),
    ("listen", 20080), ("listen", 8080), ("udp_bind", 5353)])
def test_ports_outside_the_forwards_are_refused(op: str, port: int) -> None:
    with pytest.raises(RequestError, match=f"{op} on port {port}: not a forwarded port"):
        nssource.decide(request(op, AF4, port), FIXED)


@pytest.mark.parametrize("data, words", [
    (b"", "not msgpack"), (b"\xc1", "not msgpack"), (b"\x91", "not msgpack"),
    (request() + b"\x00", "not msgpack"),
    (b"\x81\x91\x01\x01", "not msgpack"),                        # a list as a map key
    (b"\x81\xa2op\xc7\x01\xff\x00", "not msgpack"),               # a bad timestamp
    (b"\xa2\xff\xfe", "not msgpack"),                             # not UTF-8
    (b"\x91" * 2000 + b"\xc0", "not msgpack"),                    # deeper than it unpacks
    (msgpack.packb([1, 2]), "not a map"), (msgpack.packb(None), "not a map"),
    (msgpack.packb("connect"), "not a map"), (b"\xd6\xff\x00\x00\x00\x00", "not a map"),
    (body(op="connect", family=AF4, address=OWN[AF4], port=20080), "exactly the keys"),
    (body(op="connect", family=AF4, port=20080, nfds=0), "exactly the keys"),
    (request(extra=1), "exactly the keys"),
    (msgpack.packb({b"op": "connect", b"family": AF4, b"address": OWN[AF4], b"port": 20080,
                    b"nfds": 0}), "exactly the keys"),
    (request(op=["connect"]), "op must be"), (request(op={"a": 1}), "op must be"),
    (request(op=b"connect"), "op must be"), (request(op="bind"), "op must be"),
    (request(op=None), "op must be"),
    (request(family="2"), "family must be"), (request(family=[2]), "family must be"),
    (request(family=1), "family must be"), (request(family=2.0), "family must be"),
    (request(address="192.0.2.2"), "address must be"),
    (request(address=OWN[AF4].decode("latin-1")), "address must be"),
    (request(address=list(OWN[AF4])), "address must be"),
    (request(address=None), "address must be"), (request(address=b""), "address must be"),
    (request(address=OWN[AF6]), "address must be"),
    (request(family=AF6, address=OWN[AF4]), "address must be"),
    (request(address=OWN[AF4] + b"\x00"), "address must be"),
    (request(port=0), "port must be"), (request(port=65536), "port must be"),
    (request(port=-1), "port must be"), (request(port=True), "port must be"),
    (request(port="20080"), "port must be"), (request(port=20080.0), "port must be"),
    (request(port=[20080]), "port must be"), (request(port=2 ** 64 - 1), "port must be"),
    (request(nfds=1), "takes no fds"), (request(nfds=False), "takes no fds"),
])
def test_malformed_requests_are_refused_in_words(data: bytes, words: str) -> None:
    with pytest.raises(RequestError, match=words):
        nssource.decide(data, FIXED)


# -- the frame ----------------------------------------------------------------------------

@pytest.fixture
def pair():
    worker, source = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    source.settimeout(5)
    yield worker, source
    worker.close()
    source.close()


def frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_frames_are_read_one_by_one(pair) -> None:
    worker, source = pair
    worker.sendall(frame(request()) + frame(b"") + frame(request(port=5)))
    assert nssource.read_request(source) == request()
    assert nssource.read_request(source) == b""
    assert nssource.read_request(source) == request(port=5)


def test_a_long_frame_is_dropped_and_the_next_read_in_step(pair) -> None:
    worker, source = pair
    junk = frame(request()) * 30_000                  # frames inside the junk are not frames
    writer = threading.Thread(target=worker.sendall, args=(
        struct.pack("!I", 300_000) + junk[:300_000] + frame(request(port=7)),))
    writer.start()
    try:
        with pytest.raises(RequestError, match="request of 300000 bytes"):
            nssource.read_request(source)
        assert nssource.read_request(source) == request(port=7)
    finally:
        writer.join()


def test_fds_sent_along_are_closed(pair) -> None:
    worker, source = pair
    before = open_fds()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        fdpass.send(worker, {"op": "connect", "family": AF4, "address": OWN[AF4],
                             "port": 20080}, [null] * 200)
    finally:
        os.close(null)
    received = nssource.read_request(source)
    assert open_fds() == before
    with pytest.raises(RequestError, match="takes no fds"):
        nssource.decide(received, FIXED)


@pytest.mark.parametrize("sent", [b"", b"\x00\x00", frame(request())[:-3]])
def test_the_end_of_the_stream_ends_the_source(pair, sent: bytes) -> None:
    worker, source = pair
    worker.sendall(sent)
    worker.shutdown(socket.SHUT_WR)
    with pytest.raises(SourceClosed):
        nssource.read_request(source)


def test_what_the_worker_sends_is_accepted(pair) -> None:
    """``NsSource.ask``'s frame through ``fdpass.send`` passes the schema."""
    worker, source = pair
    fdpass.send(worker, {"op": "udp_connect", "family": AF6, "address": OWN[AF6],
                         "port": 5353}, [])
    assert nssource.decide(nssource.read_request(source), FIXED) == Request(
        "udp_connect", AF6, OWN[AF6], 5353)
