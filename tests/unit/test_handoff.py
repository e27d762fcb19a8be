"""The broker -> worker handoff over a socketpair: configuration, network and
fd manifest arrive intact with their fds; anything malformed is a
HandoffError and leaves no received fd open.  Also the fdpass framing."""

from __future__ import annotations

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

from passt_sep import fdpass, handoff
from passt_sep.config import Config, parse_args
from passt_sep.handoff import FdEntry, Handoff, HandoffError
from passt_sep.netparams import IPv4Params, IPv6Params, Network


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


CONFIG = parse_args(["-t", "22-80:1022-1080,~50", "-u", "53", "-D", "192.0.2.53", "-S",
                     "example.test", "-m", "9000", "--log-size", "2m", "-a", "192.0.2.9",
                     "-p", "/tmp/x.pcap"], "passt-sep")
PASTA_CONFIG = parse_args(["--config-net", "-T", "8080", "sh", "-c", "exit 0"], "pasta-sep")
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

@pytest.mark.parametrize("config", [CONFIG, PASTA_CONFIG, Config(mode="passt")])
def test_round_trip_through_a_socketpair(config: Config) -> None:
    with pair() as (broker, worker), pipes(3) as made:
        entries = [FdEntry("unix_listener", made[0][0], {"path": "/tmp/s.socket"}),
                   FdEntry("tcp_listener", made[1][0], {"port": 22, "target": 1022,
                                                        "family": 10}),
                   FdEntry("tcp_listener", made[1][1], {"port": 23, "target": 1023,
                                                        "family": 2}),
                   FdEntry("log", made[2][1], {"path": "/tmp/log"})]
        handoff.send(broker, config, NETWORK, entries)
        received = handoff.receive(worker)
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
            assert received.one("log") is received.fds[3]
            assert received.one("tap") is None
            assert [e.meta["port"] for e in received.by_role("tcp_listener")] == [22, 23]
        finally:
            close_all(received)


def test_round_trip_without_fds() -> None:
    with pair() as (broker, worker):
        handoff.send(broker, CONFIG, Network(), [])
        received = handoff.receive(worker)
    assert (received.config, received.network, received.fds) == (CONFIG, Network(), [])


def test_more_fds_than_one_message_carries() -> None:
    """-t all hands over thousands of listeners: chunks of FDS_PER_MSG."""
    count = fdpass.FDS_PER_MSG * 2 + 7
    with pair() as (broker, worker), pipes(1) as made:
        dups = [os.dup(made[0][0]) for _ in range(count)]
        try:
            entries = [FdEntry("tcp_listener", fd, {"port": i + 1, "target": i + 1,
                                                    "family": 2})
                       for i, fd in enumerate(dups)]
            before = len(open_fds())
            handoff.send(broker, CONFIG, NETWORK, entries)
            received = handoff.receive(worker)
            assert len(open_fds()) == before + count
        finally:
            for fd in dups:
                os.close(fd)
        try:
            assert len(received.fds) == count
            assert [e.meta["port"] for e in received.fds] == list(range(1, count + 1))
            assert all(same_file(e.fd, made[0][0]) for e in received.fds)
            assert len({e.fd for e in received.fds}) == count
        finally:
            close_all(received)


def test_encode_flattens_the_manifest() -> None:
    entries = [FdEntry("tap", 7), FdEntry("proc_net", 9, {"side": "init", "table": "tcp6"})]
    message = handoff.encode(CONFIG, NETWORK, entries)
    assert message["v"] == handoff.VERSION == 1
    assert message["fds"] == [{"role": "tap", "index": 0},
                              {"role": "proc_net", "index": 1, "side": "init",
                               "table": "tcp6"}]
    assert message["config"] == CONFIG.to_dict()
    decoded = handoff.decode(message, [70, 90])
    assert decoded.fds == [FdEntry("tap", 70), FdEntry("proc_net", 90,
                                                        {"side": "init", "table": "tcp6"})]
    assert decoded.config == CONFIG and decoded.network == NETWORK


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


# -- malformed messages ----------------------------------------------------------------

def good_message(entries: list[FdEntry] = ()) -> dict:
    return handoff.encode(CONFIG, NETWORK, list(entries))


def receive_raw(message: dict, fds: list[int]) -> str:
    """Send ``message`` with ``fds`` through fdpass; the HandoffError text.
    Every fd the receiver got must be closed again."""
    with pair() as (broker, worker):
        before = open_fds()
        fdpass.send(broker, message, fds)
        with pytest.raises(HandoffError) as info:
            handoff.receive(worker)
        assert open_fds() == before
    return str(info.value)


def test_wrong_or_missing_version() -> None:
    with pipes(1) as made:
        for version in (2, 0, "1", None):
            message = {**good_message([FdEntry("tap", 0)]), "v": version}
            assert receive_raw(message, [made[0][0]]) == "handoff: wrong or missing version"
        message = good_message()
        del message["v"]
        assert receive_raw(message, []) == "handoff: wrong or missing version"


def test_unknown_role() -> None:
    with pipes(1) as made:
        message = good_message([FdEntry("tap", 0)])
        message["fds"][0]["role"] = "bogus"
        assert receive_raw(message, [made[0][0]]) == "handoff: unknown fd role 'bogus'"


def test_manifest_and_fd_count_mismatch() -> None:
    with pipes(1) as made:
        two = good_message([FdEntry("tcp_listener", 0), FdEntry("tcp_listener", 0)])
        assert receive_raw(two, [made[0][0]]) == "handoff: manifest lists 2 fds, got 1"
        none = good_message()
        assert receive_raw(none, [made[0][0], made[0][1]]) == \
            "handoff: manifest lists 0 fds, got 2"


def test_fewer_fds_than_announced() -> None:
    """The framing says two fds, one arrives, then the broker goes away."""
    with pair() as (broker, worker), pipes(1) as made:
        body = msgpack.packb({**good_message([FdEntry("tap", 0)] * 2), "nfds": 2},
                             use_bin_type=True)
        before = open_fds()
        broker.sendmsg([struct.pack("!I", len(body)) + body],
                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", made[0][0]))])
        broker.shutdown(socket.SHUT_WR)
        with pytest.raises(HandoffError, match="^handoff: peer closed the socket early$"):
            handoff.receive(worker)
        assert open_fds() == before


def test_more_fds_than_announced() -> None:
    with pair() as (broker, worker), pipes(1) as made:
        body = msgpack.packb({**good_message([FdEntry("tap", 0)]), "nfds": 1},
                             use_bin_type=True)
        before = open_fds()
        broker.sendmsg([struct.pack("!I", len(body)) + body],
                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("ii", *made[0]))])
        with pytest.raises(HandoffError, match="^handoff: expected 1 fds, got 2$"):
            handoff.receive(worker)
        assert open_fds() == before


def test_manifest_out_of_order() -> None:
    with pipes(1) as made:
        message = good_message([FdEntry("tcp_listener", 0), FdEntry("udp_listener", 0)])
        message["fds"][0]["index"], message["fds"][1]["index"] = 1, 0
        assert receive_raw(message, list(made[0])) == "handoff: manifest out of order"


@pytest.mark.parametrize("role", [r for r, (count, _) in handoff.ROLES.items()
                                  if count == "0-1"])
def test_single_roles_appear_at_most_once(role: str) -> None:
    with pipes(1) as made:
        message = good_message([FdEntry(role, 0), FdEntry(role, 0)])
        assert receive_raw(message, list(made[0])) == f"handoff: more than one {role!r} fd"


def test_repeatable_roles_may_repeat() -> None:
    repeatable = [r for r, (count, _) in handoff.ROLES.items() if count == "*"]
    assert set(repeatable) >= {"tcp_listener", "udp_listener", "proc_net"}
    entries = [FdEntry(role, 0) for role in repeatable for _ in range(3)]
    decoded = handoff.decode(good_message(entries), list(range(len(entries))))
    assert [e.role for e in decoded.fds] == [e.role for e in entries]


@pytest.mark.parametrize("mutate", [
    lambda m: m.pop("config"),
    lambda m: m.pop("network"),
    lambda m: m.pop("fds"),
    lambda m: m["config"].update(bogus=1),
    lambda m: m["config"].pop("mode"),
    lambda m: m["config"].update(tcp_ports={"mode": "spec"}),
    lambda m: m["config"].update(tcp_ports={"mode": "spec", "rules": [[1]]}),
    lambda m: m["network"].pop("mtu"),
    lambda m: m["network"].update(ipv4={"addr": b"\0" * 4}),
    lambda m: m.update(network=None),
    lambda m: m.update(config=[]),
    lambda m: m.update(fds=5),
    lambda m: m.update(fds=[{"index": 0}]),
    lambda m: m.update(fds=[{"role": "tap"}]),
    lambda m: m.update(fds=["tap"]),
    lambda m: m.update(fds=[{"role": ["tap"], "index": 0}]),
], ids=["no-config", "no-network", "no-fds", "config-key", "config-mode", "fwd-rules",
        "fwd-rule", "network-mtu", "network-ipv4", "network-none", "config-list", "fds-int",
        "entry-role", "entry-index", "entry-str", "entry-role-list"])
def test_bad_message_structure(mutate) -> None:
    message = good_message([FdEntry("tap", 0)])
    mutate(message)
    with pipes(1) as made:
        text = receive_raw(message, [made[0][0]])
    assert text.startswith("handoff: ")
    assert "\n" not in text


def test_broker_gone_before_sending() -> None:
    with pair() as (broker, worker):
        broker.close()
        with pytest.raises(HandoffError, match="^handoff: peer closed the socket early$"):
            handoff.receive(worker)


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
            handoff.receive(worker)
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
    | st.binary(max_size=8) | st.sampled_from(list(handoff.ROLES) + ["mode", "rules", 0, 1])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(
                          ["role", "index", "mode", "rules", "addr"]), inner, max_size=4),
                      max_leaves=20)


@given(st.fixed_dictionaries({}, optional={"v": st.sampled_from([1, 2]) | values,
                                           "config": values, "network": values,
                                           "fds": values}),
       st.integers(0, 3))
def test_arbitrary_messages_only_handoff_error(message: dict, nfds: int) -> None:
    try:
        decoded = handoff.decode(message, list(range(100, 100 + nfds)))
    except HandoffError as exc:
        assert str(exc).startswith("handoff: ")
        return
    assert isinstance(decoded.config, Config) and isinstance(decoded.network, Network)


@st.composite
def mutated_messages(draw: st.DrawFn) -> dict:
    """A good message with one part of it replaced by something arbitrary."""
    message = good_message([FdEntry("tap", 0), FdEntry("tcp_listener", 0, {"port": 1})])
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
            received = handoff.receive(worker)
        except HandoffError:
            assert open_fds() == before
            return
        close_all(received)
