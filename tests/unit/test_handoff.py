"""The broker -> worker handoff over a socketpair: the worker's configuration,
the network and the fd manifest (roles and their typed metadata) arrive
intact with their fds; anything malformed, or of the wrong type, is a
HandoffError and leaves no received fd open.  Also the fdpass framing."""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passt_sep import handoff
from passt_sep.config import Config, Mode, parse_args
from passt_sep.handoff import (
    ROLES,
    FdEntry,
    Handoff,
    HandoffError,
    ListenerMeta,
    LogMeta,
    NetnsWatchMeta,
    ProcNetMeta,
    Role,
    WorkerConfig,
)
from passt_sep.netparams import IPv4Params, IPv6Params, Network
from passt_sep.system import fdpass, handoff_io


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


CONFIG = WorkerConfig.from_config(parse_args(
    ["-t", "22-80:1022-1080,~50", "-u", "53", "-D", "192.0.2.53", "-S", "example.test", "-m",
     "9000", "--log-size", "2m", "-a", "192.0.2.9", "-p", "/tmp/x.pcap", "-o", "192.0.2.7",
     "--outbound-if6", "eth1", "--dns-forward", "192.0.2.253", "--clat"], "passt-sep"))
PASTA_CONFIG = WorkerConfig.from_config(
    parse_args(["--config-net", "-T", "8080", "-m", "0", "sh", "-c", "exit 0"], "pasta-sep"))
NETWORK = Network(our_mac=bytes.fromhex("9a559a559a55"), guest_mac=bytes.fromhex("525400123456"),
                  mtu=9000,
                  ipv4=IPv4Params(ip("192.0.2.9"), 24, ip("192.0.2.1"),
                                  dns=(ip("192.0.2.53"), ip("198.51.100.53"))),
                  ipv6=IPv6Params(ip("2001:db8::9"), 64, ip("2001:db8::1"),
                                  dns=(ip("2001:db8::53"),),
                                  host_link_local=ip("fe80::40ad:72ff:fed5:da74")),
                  search=("example.test", "lab.example.test"),
                  host_resolvers=("192.0.2.53", "2001:db8::53"))


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@contextmanager
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@contextmanager
def pipes(count: int) -> Iterator[list[tuple[int, int]]]:
    made = [os.pipe() for _ in range(count)]
    try:
        yield made
    finally:
        for r, w in made:
            os.close(r)
            os.close(w)


def same_file(fd_a: int, fd_b: int) -> bool:
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def close_all(received: Handoff) -> None:
    for entry in received.fds:
        os.close(entry.fd)


# -- round trips -----------------------------------------------------------------------

@pytest.mark.parametrize("config", [CONFIG, PASTA_CONFIG, WorkerConfig(mode=Mode.PASST)])
def test_round_trip_through_a_socketpair(config: WorkerConfig) -> None:
    with pair() as (broker, worker), pipes(3) as made:
        entries = [FdEntry(Role.UNIX_LISTENER, made[0][0]),
                   FdEntry(Role.TCP_LISTENER, made[1][0], ListenerMeta(10, 22, 1022, True)),
                   FdEntry(Role.TCP_LISTENER, made[1][1], ListenerMeta(2, 23, 1023)),
                   FdEntry(Role.LOG, made[2][1], LogMeta(1234.5))]
        handoff_io.send(broker, config, NETWORK, entries)
        received = handoff_io.receive(worker)
        try:
            assert received.config == config
            assert received.network == NETWORK
            assert [(e.role, e.meta) for e in received.fds] == [(e.role, e.meta)
                                                                 for e in entries]
            for sent, got in zip(entries, received.fds, strict=True):
                assert got.fd != sent.fd and same_file(got.fd, sent.fd)
            # the received write end really is the pipe's
            os.write(received.fds[3].fd, b"through the handoff")
            assert os.read(made[2][0], 100) == b"through the handoff"
            assert received.one(Role.LOG) is received.fds[3]
            assert received.fd(Role.LOG) == received.fds[3].fd
            assert received.one(Role.TAP) is None and received.fd(Role.TAP) is None
            assert [e.meta.port for e in received.by_role(Role.TCP_LISTENER)] == [22, 23]
            assert all(type(e.role) is Role for e in received.fds)
        finally:
            close_all(received)


def test_round_trip_without_fds() -> None:
    with pair() as (broker, worker):
        handoff_io.send(broker, CONFIG, Network(), [])
        received = handoff_io.receive(worker)
    assert (received.config, received.network, received.fds) == (CONFIG, Network(), [])


def test_more_fds_than_one_message_carries() -> None:
    """-t all hands over thousands of listeners: chunks of FDS_PER_MSG."""
    count = fdpass.FDS_PER_MSG * 2 + 7
    with pair() as (broker, worker), pipes(1) as made:
        dups = [os.dup(made[0][0]) for _ in range(count)]
        try:
            entries = [FdEntry(Role.TCP_LISTENER, fd, ListenerMeta(2, i + 1, i + 1))
                       for i, fd in enumerate(dups)]
            gc.collect()            # an earlier test's socket, closed by the collector
            gc.disable()            # meanwhile, would spoil the count
            try:
                before = len(open_fds())
                handoff_io.send(broker, CONFIG, NETWORK, entries)
                received = handoff_io.receive(worker)
                assert len(open_fds()) == before + count
            finally:
                gc.enable()
        finally:
            for fd in dups:
                os.close(fd)
        try:
            assert len(received.fds) == count
            assert [e.meta.port for e in received.fds] == list(range(1, count + 1))
            assert all(same_file(e.fd, made[0][0]) for e in received.fds)
            assert len({e.fd for e in received.fds}) == count
        finally:
            close_all(received)


def test_encode_flattens_the_manifest() -> None:
    """The n-th entry describes the n-th fd: no index of its own."""
    entries = [FdEntry(Role.TAP, 7), FdEntry(Role.PROC_NET, 9, ProcNetMeta("host", "tcp6"))]
    message = handoff.encode(CONFIG, NETWORK, entries)
    assert message["v"] == handoff.VERSION == 3
    assert message["fds"] == [{"role": "tap"},
                              {"role": "proc_net", "side": "host", "table": "tcp6"}]
    assert message["config"] == handoff.config_to_dict(CONFIG)
    decoded = handoff.decode(message, [70, 90])
    assert decoded.fds == [FdEntry(Role.TAP, 70),
                           FdEntry(Role.PROC_NET, 90, ProcNetMeta("host", "tcp6"))]
    assert decoded.config == CONFIG and decoded.network == NETWORK


def test_the_worker_config_holds_what_the_worker_reads() -> None:
    """Derived from the command line: no paths, command, user or namespace."""
    config = parse_args(["-P", "/run/p\udcff.pid", "-p", "/tmp/x.pcap", "-l", "/tmp/log",
                         "--runas", "1000", "--netns", "/run/netns/n\udcff", "-t", "auto",
                         "-T", "none", "--trace", "-m", "0", "--clat"], "pasta-sep")
    worker = WorkerConfig.from_config(config)
    text = repr(handoff.config_to_dict(worker))
    assert "/run" not in text and "/tmp" not in text and "1000" not in text
    assert worker.mode is Mode.PASTA and worker.log_level == 8
    assert (worker.tcp_auto, worker.tcp_ns_auto, worker.udp_auto) == (True, False, True)
    assert not worker.advertise_mtu and not worker.verify_checksums
    assert worker.nat64_prefix == "64:ff9b::/96" and worker.nat64 is not None
    assert WorkerConfig.from_config(parse_args(["-e"], "passt-sep")).stderr
    assert WorkerConfig.from_config(parse_args(["-f"], "passt-sep")).stderr
    broker_only = {"pid_file", "pcap", "log_file", "runas", "socket_path", "netns", "userns",
                   "command", "target_pid", "fd", "interface", "ns_ifname"}
    assert broker_only <= {f.name for f in dataclasses.fields(Config)}
    assert broker_only.isdisjoint(f.name for f in dataclasses.fields(WorkerConfig))


macs = st.binary(min_size=6, max_size=6)
networks = st.builds(
    Network, our_mac=macs, guest_mac=st.none() | macs, mtu=st.integers(68, 65520),
    ipv4=st.none() | st.builds(IPv4Params, st.binary(min_size=4, max_size=4),
                               st.integers(0, 32), st.binary(min_size=4, max_size=4),
                               st.lists(st.binary(min_size=4, max_size=4),
                                        max_size=3).map(tuple)),
    ipv6=st.none() | st.builds(IPv6Params, st.binary(min_size=16, max_size=16),
                               st.integers(0, 128), st.binary(min_size=16, max_size=16),
                               st.lists(st.binary(min_size=16, max_size=16),
                                        max_size=3).map(tuple),
                               st.none() | st.binary(min_size=16, max_size=16)),
    search=st.lists(st.text(max_size=20), max_size=3).map(tuple),
    host_resolvers=st.lists(st.text(max_size=20), max_size=3).map(tuple))


@given(networks)
def test_network_survives_msgpack(net: Network) -> None:
    wire = msgpack.packb(handoff.network_to_dict(net), use_bin_type=True)
    assert handoff.network_from_dict(msgpack.unpackb(wire, raw=False)) == net


ipv4_text = st.ip_addresses(v=4).map(str)
ipv6_text = st.ip_addresses(v=6).map(str)
ifnames = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/"),
                  min_size=1, max_size=15)
FLAGS = [f.name for f in dataclasses.fields(WorkerConfig) if f.type == "bool"]
worker_configs = st.builds(
    WorkerConfig, mode=st.sampled_from(Mode), log_level=st.sampled_from([3, 4, 6, 7, 8]),
    log_size=st.none() | st.integers(40960, 1 << 40), max_flows=st.integers(1, 1 << 20),
    busy_poll=st.integers(0, 10_000),
    outbound4=st.none() | ipv4_text, outbound6=st.none() | ipv6_text,
    outbound_if4=st.none() | ifnames, outbound_if6=st.none() | ifnames,
    map_host_loopback=st.none() | ipv4_text | ipv6_text,
    map_guest_addr=st.none() | ipv4_text | ipv6_text,
    dns_forward=st.lists(ipv4_text | ipv6_text, max_size=3).map(tuple),
    nat64_prefix=st.sampled_from([None, "64:ff9b::/96", "2001:db8::/32", "2001:db8:1::/48"]),
    host_tcp_listening=st.none() | st.lists(st.integers(1, 65535), max_size=5).map(tuple),
    **{name: st.booleans() for name in FLAGS})
listener_kinds = st.sampled_from([(2, False), (10, False), (10, True)])   # (family, dual)
metas = {ListenerMeta: st.builds(lambda kind, port, target: ListenerMeta(kind[0], port, target,
                                                                         kind[1]),
                                 listener_kinds, st.integers(1, 65535), st.integers(1, 65535)),
         ProcNetMeta: st.builds(ProcNetMeta, st.sampled_from(["ns", "host"]),
                                st.sampled_from(["tcp", "tcp6", "udp", "udp6"])),
         LogMeta: st.builds(LogMeta, st.floats(0, 1e9)),
         NetnsWatchMeta: st.builds(NetnsWatchMeta, st.binary(min_size=1, max_size=255).filter(
             lambda name: b"/" not in name and b"\0" not in name))}


@st.composite
def manifests(draw: st.DrawFn) -> list[FdEntry]:
    """Any valid manifest: single roles at most once, metadata of their type."""
    entries = []
    for role, spec in ROLES.items():
        for _ in range(draw(st.integers(0, 3 if spec.repeats else 1))):
            meta = draw(metas[spec.meta]) if spec.meta else None
            entries.append(FdEntry(role, 0, meta))
    return draw(st.permutations(entries))


@given(worker_configs, manifests())
def test_config_and_manifest_survive_msgpack(config: WorkerConfig,
                                             entries: list[FdEntry]) -> None:
    assert len(FLAGS) >= 15
    wire = msgpack.packb(handoff.encode(config, NETWORK, entries), use_bin_type=True)
    fds = list(range(100, 100 + len(entries)))
    decoded = handoff.decode(msgpack.unpackb(wire, raw=False), fds)
    assert decoded.config == config
    assert [(e.role, e.meta) for e in decoded.fds] == [(e.role, e.meta) for e in entries]
    assert [e.fd for e in decoded.fds] == fds


# -- malformed messages ----------------------------------------------------------------

def good_message(entries: list[FdEntry] = ()) -> dict:
    return handoff.encode(CONFIG, NETWORK, list(entries))


LISTENER = ListenerMeta(2, 22, 22)


def receive_raw(message: dict, fds: list[int]) -> str:
    """Send ``message`` with ``fds`` through fdpass; the HandoffError text.
    Every fd the receiver got must be closed again."""
    with pair() as (broker, worker):
        before = open_fds()
        fdpass.send(broker, message, fds)
        with pytest.raises(HandoffError) as info:
            handoff_io.receive(worker)
        assert open_fds() == before
    return str(info.value)


def test_wrong_or_missing_version() -> None:
    with pipes(1) as made:
        for version in (1, 2, 4, 0, "3", None):
            message = {**good_message([FdEntry(Role.TAP, 0)]), "v": version}
            assert receive_raw(message, [made[0][0]]) == "handoff: wrong or missing version"
        message = good_message()
        del message["v"]
        assert receive_raw(message, []) == "handoff: wrong or missing version"


def test_unknown_role() -> None:
    with pipes(1) as made:
        message = good_message([FdEntry(Role.TAP, 0)])
        message["fds"][0]["role"] = "bogus"
        assert receive_raw(message, [made[0][0]]) == "handoff: unknown fd role 'bogus'"


def test_manifest_and_fd_count_mismatch() -> None:
    with pipes(1) as made:
        two = good_message([FdEntry(Role.TCP_LISTENER, 0, LISTENER)] * 2)
        assert receive_raw(two, [made[0][0]]) == "handoff: manifest lists 2 fds, got 1"
        none = good_message()
        assert receive_raw(none, [made[0][0], made[0][1]]) == \
            "handoff: manifest lists 0 fds, got 2"


def test_fewer_fds_than_announced() -> None:
    """The framing says two fds, one arrives, then the broker goes away."""
    with pair() as (broker, worker), pipes(1) as made:
        body = msgpack.packb({**good_message([FdEntry(Role.TAP, 0)] * 2), "nfds": 2},
                             use_bin_type=True)
        before = open_fds()
        broker.sendmsg([struct.pack("!I", len(body)) + body],
                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", made[0][0]))])
        broker.shutdown(socket.SHUT_WR)
        with pytest.raises(HandoffError, match="^handoff: peer closed the socket early$"):
            handoff_io.receive(worker)
        assert open_fds() == before


def test_more_fds_than_announced() -> None:
    with pair() as (broker, worker), pipes(1) as made:
        body = msgpack.packb({**good_message([FdEntry(Role.TAP, 0)]), "nfds": 1},
                             use_bin_type=True)
        before = open_fds()
        broker.sendmsg([struct.pack("!I", len(body)) + body],
                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("ii", *made[0]))])
        with pytest.raises(HandoffError, match="^handoff: expected 1 fds, got 2$"):
            handoff_io.receive(worker)
        assert open_fds() == before


META_EXAMPLES = {ListenerMeta: LISTENER, ProcNetMeta: ProcNetMeta("ns", "udp6"),
                 LogMeta: LogMeta(3.0), NetnsWatchMeta: NetnsWatchMeta(b"n\xff")}


def example(role: Role, fd: int = 0) -> FdEntry:
    meta = ROLES[role].meta
    return FdEntry(role, fd, META_EXAMPLES[meta] if meta else None)


@pytest.mark.parametrize("role", [r for r, spec in ROLES.items() if not spec.repeats])
def test_single_roles_appear_at_most_once(role: Role) -> None:
    with pipes(1) as made:
        message = good_message([example(role), example(role)])
        assert receive_raw(message, list(made[0])) == \
            f"handoff: more than one {str(role)!r} fd"


def test_repeatable_roles_may_repeat() -> None:
    repeatable = [r for r, spec in ROLES.items() if spec.repeats]
    assert set(repeatable) >= {Role.TCP_LISTENER, Role.UDP_LISTENER, Role.PROC_NET}
    entries = [example(role) for role in repeatable for _ in range(3)]
    decoded = handoff.decode(good_message(entries), list(range(len(entries))))
    assert [e.role for e in decoded.fds] == [e.role for e in entries]
    assert [e.meta for e in decoded.fds] == [e.meta for e in entries]


def test_every_role_is_documented_and_round_trips() -> None:
    assert set(ROLES) == set(Role)
    entries = [example(role, fd) for fd, role in enumerate(Role)]
    decoded = handoff.decode(good_message(entries), list(range(len(entries))))
    assert decoded.fds == entries
    assert all(spec.what for spec in ROLES.values())


@pytest.mark.parametrize("entry, error", [
    (FdEntry(Role.TAP, 0, LISTENER), "handoff: tap fd with ListenerMeta"),
    (FdEntry(Role.TCP_LISTENER, 0), "handoff: tcp_listener fd with NoneType"),
    (FdEntry(Role.UDP_LISTENER, 0, LogMeta(1.0)), "handoff: udp_listener fd with LogMeta"),
    (FdEntry(Role.TCP_LISTENER, 0, ListenerMeta(2, 0, 22)), "handoff: tcp_listener fd: "),
    (FdEntry(Role.TCP_LISTENER, 0, ListenerMeta(2, 22, 65536)), "handoff: tcp_listener fd: "),
    (FdEntry(Role.TCP_LISTENER, 0, ListenerMeta(1, 22, 22)), "handoff: tcp_listener fd: "),
    (FdEntry(Role.TCP_LISTENER, 0, ListenerMeta(2, "22", 22)), "handoff: tcp_listener fd: "),
    (FdEntry(Role.TCP_LISTENER, 0, ListenerMeta(2, True, 22)), "handoff: tcp_listener fd: "),
    (FdEntry(Role.TCP_LISTENER, 0, ListenerMeta(2, 22, 22, True)), "handoff: tcp_listener fd: "
     "dual: only an AF_INET6 socket takes both families"),
    (FdEntry(Role.UDP_LISTENER, 0, ListenerMeta(10, 22, 22, 1)), "handoff: udp_listener fd: "),
    (FdEntry(Role.PROC_NET, 0, ProcNetMeta("init", "tcp")), "handoff: proc_net fd: "),
    (FdEntry(Role.PROC_NET, 0, ProcNetMeta("ns", "raw")), "handoff: proc_net fd: "),
    (FdEntry(Role.LOG, 0, LogMeta("now")), "handoff: log fd: "),
    (FdEntry(Role.NETNS_WATCH, 0, NetnsWatchMeta("n1")), "handoff: netns_watch fd: "),
    (FdEntry(Role.NETNS_WATCH, 0, NetnsWatchMeta(b"a/b")), "handoff: netns_watch fd: "),
    (FdEntry(Role.NETNS_WATCH, 0, NetnsWatchMeta(b"")), "handoff: netns_watch fd: "),
    (FdEntry("bogus", 0), "handoff: unknown fd role 'bogus'"),
])
def test_bad_metadata_is_refused_both_ways(entry: FdEntry, error: str) -> None:
    """The broker cannot send it, and the worker refuses it if it came."""
    with pytest.raises(HandoffError) as sent:
        handoff.encode(CONFIG, NETWORK, [entry])
    assert str(sent.value).startswith(error)
    wire = {"role": str(entry.role)}
    if entry.meta is not None:
        wire.update(dataclasses.asdict(entry.meta))
    elif ROLES.get(entry.role) and ROLES[entry.role].meta:
        wire.update(dataclasses.asdict(LISTENER))
        wire.pop("port")
    message = {**good_message(), "fds": [wire]}
    with pipes(1) as made:
        assert receive_raw(message, [made[0][0]]).startswith("handoff: ")


@pytest.mark.parametrize("mutate", [
    lambda c: c.pop("mode"),
    lambda c: c.update(bogus=1),
    lambda c: c.update(pid_file="/run/x.pid"),
    lambda c: c.update(mode="vde"),
    lambda c: c.update(no_tcp=1),
    lambda c: c.update(no_tcp="yes"),
    lambda c: c.update(max_flows=0),
    lambda c: c.update(max_flows=True),
    lambda c: c.update(max_flows=(1 << 20) + 1),
    lambda c: c.update(busy_poll=-1),
    lambda c: c.update(busy_poll=10_001),
    lambda c: c.update(log_level=5),
    lambda c: c.update(log_size=-1),
    lambda c: c.update(outbound4="2001:db8::1"),
    lambda c: c.update(outbound6="192.0.2.1"),
    lambda c: c.update(outbound_if4="a/b"),
    lambda c: c.update(outbound_if4="x" * 16),
    lambda c: c.update(map_guest_addr="host"),
    lambda c: c.update(dns_forward="192.0.2.1"),
    lambda c: c.update(dns_forward=["192.0.2.1", 5]),
    lambda c: c.update(nat64_prefix="64:ff9b::/80"),
    lambda c: c.update(nat64_prefix=96),
    lambda c: c.update(host_tcp_listening=[0]),
    lambda c: c.update(host_tcp_listening=[65536]),
    lambda c: c.update(host_tcp_listening=["22"]),
    lambda c: c.update(host_tcp_listening=22),
    lambda c: c.update(host_tcp_listening=[True]),
    lambda c: c.update(host_tcp_listening=[22] * 65536),
])
def test_bad_worker_config_is_refused(mutate) -> None:
    message = good_message()
    mutate(message["config"])
    with pytest.raises(HandoffError) as info:
        handoff.decode(message, [])
    assert str(info.value).startswith("handoff: config")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mutate", [
    lambda m: m.pop("config"),
    lambda m: m.pop("network"),
    lambda m: m.pop("fds"),
    lambda m: m["config"].update(bogus=1),
    lambda m: m["config"].pop("mode"),
    lambda m: m["config"].update(tcp_auto=None),
    lambda m: m["config"].update(dns_forward=[[1]]),
    lambda m: m["network"].pop("mtu"),
    lambda m: m["network"].update(ipv4={"addr": b"\0" * 4}),
    lambda m: m.update(network=None),
    lambda m: m.update(config=[]),
    lambda m: m.update(fds=5),
    lambda m: m.update(fds=[{"index": 0}]),
    lambda m: m.update(fds=[{"role": "tap", "index": 0}]),
    lambda m: m.update(fds=["tap"]),
    lambda m: m.update(fds=[{"role": ["tap"]}]),
], ids=["no-config", "no-network", "no-fds", "config-key", "config-mode", "config-auto",
        "config-dns", "network-mtu", "network-ipv4", "network-none", "config-list", "fds-int",
        "entry-no-role", "entry-extra-key", "entry-str", "entry-role-list"])
def test_bad_message_structure(mutate) -> None:
    message = good_message([FdEntry(Role.TAP, 0)])
    mutate(message)
    with pipes(1) as made:
        text = receive_raw(message, [made[0][0]])
    assert text.startswith("handoff: ")
    assert "\n" not in text


def test_broker_gone_before_sending() -> None:
    with pair() as (broker, worker):
        broker.close()
        with pytest.raises(HandoffError, match="^handoff: peer closed the socket early$"):
            handoff_io.receive(worker)


@pytest.mark.parametrize("raw, error", [
    (b"\x00\x00", "peer closed the socket early"),
    (struct.pack("!I", 10) + b"short", "peer closed the socket early"),
    (struct.pack("!I", fdpass.MAX_BODY + 1), "message too large"),
    (struct.pack("!I", 1) + b"\xc1", "bad msgpack: "),               # reserved type
    (struct.pack("!I", 3) + b"\x93\x01\x02", "bad msgpack: "),      # array header, 2 of 3
    (struct.pack("!I", 1) + b"\x05", "message is not a map"),
    (struct.pack("!I", 1) + b"\x80", "message has no fd count"),
    (struct.pack("!I", 7) + b"\x81\xa4nfds\xff", "message has no fd count"),    # -1
    (struct.pack("!I", 8) + b"\x81\xa4nfds\xa1x", "message has no fd count"),
])
def test_fdpass_framing_errors(raw: bytes, error: str) -> None:
    with pair() as (broker, worker):
        broker.sendall(raw)
        broker.shutdown(socket.SHUT_WR)
        with pytest.raises(fdpass.FdPassError) as info:
            fdpass.receive(worker)
        assert str(info.value).startswith(error)
    with pair() as (broker, worker):
        broker.sendall(raw)
        broker.shutdown(socket.SHUT_WR)
        with pytest.raises(HandoffError) as hinfo:
            handoff_io.receive(worker)
        assert str(hinfo.value).startswith("handoff: " + error)


def test_fdpass_adds_the_fd_count() -> None:
    with pair() as (a, b), pipes(1) as made:
        fdpass.send(a, {"hello": [1, b"\x00", "x"]}, list(made[0]))
        obj, fds = fdpass.receive(b)
        try:
            assert obj == {"hello": [1, b"\x00", "x"], "nfds": 2}
            assert len(fds) == 2 and all(same_file(x, y) for x, y in zip(fds, made[0],
                                                                          strict=True))
        finally:
            for fd in fds:
                os.close(fd)


# -- properties -------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) \
    | st.binary(max_size=8) | st.sampled_from([str(r) for r in Role] + ["mode", "port", 0, 1])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(
                          ["role", "port", "target", "family", "side", "mode", "addr"]), inner,
                          max_size=4),
                      max_leaves=20)


@given(st.fixed_dictionaries({}, optional={"v": st.sampled_from([2, 3]) | values,
                                           "config": values, "network": values,
                                           "fds": values}),
       st.integers(0, 3))
def test_arbitrary_messages_only_handoff_error(message: dict, nfds: int) -> None:
    try:
        decoded = handoff.decode(message, list(range(100, 100 + nfds)))
    except HandoffError as exc:
        assert str(exc).startswith("handoff: ")
        return
    assert isinstance(decoded.config, WorkerConfig) and isinstance(decoded.network, Network)
    assert all(type(e.role) is Role for e in decoded.fds)


@st.composite
def mutated_messages(draw: st.DrawFn) -> dict:
    """A good message with one part of it replaced by something arbitrary."""
    message = good_message([FdEntry(Role.TAP, 0), FdEntry(Role.TCP_LISTENER, 0, LISTENER)])
    part = draw(st.sampled_from(["config", "network", "fds"]))
    if isinstance(message[part], dict) and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(message[part])))
        message[part][key] = draw(values)
    elif isinstance(message[part], list) and draw(st.booleans()):
        message[part][draw(st.integers(0, 1))] = draw(values)
    else:
        message[part] = draw(values)
    return message


@given(mutated_messages())
def test_mutated_messages_only_handoff_error(message: dict) -> None:
    try:
        handoff.decode(message, [100, 101])
    except HandoffError:
        pass


@settings(max_examples=50)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_on_the_socket_only_handoff_error(raw: bytes) -> None:
    with pair() as (broker, worker):
        before = open_fds()
        broker.sendall(raw)
        broker.shutdown(socket.SHUT_WR)
        try:
            received = handoff_io.receive(worker)
        except HandoffError:
            assert open_fds() == before
            return
        close_all(received)
