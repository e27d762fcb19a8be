"""Fuzz target ``nssource``: a request to the ns socket source as it
receives it from the worker (which may be the attacker's): the frame's
msgpack body, decoded, checked and judged against the forwarding options
(``nssource.decide``), before any socket is made.

Input: the msgpack body, then one control byte (from the end): which
configuration's policy judges it.
Documented exception: ``nssource.RequestError`` (the source answers it).
Invariants: an accepted request is one of the source's operations, of an
address family it serves, on a port the policy gives that operation, at
an address the policy lets it reach (of that family's size; the
namespace's loopback only when listening or with ``--host-lo-to-ns-lo``),
and the same request encoded again is accepted as the same.
"""

from __future__ import annotations

import os
import socket
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_nssource.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402

from fuzz import common  # noqa: E402
from passt_sep import nspolicy  # noqa: E402
from passt_sep.config import parse_args  # noqa: E402
from passt_sep.netparams import IPv4Params, IPv6Params, Network  # noqa: E402
from passt_sep.ports import MAX_PORT  # noqa: E402
from passt_sep.system import nssource

NAME = "nssource"
ALLOWED = (nssource.RequestError,)
OWN4, OWN6 = bytes((192, 0, 2, 2)), bytes.fromhex("20010db8000000000000000000000002")
LO4, LO6 = nspolicy.LOOPBACK[socket.AF_INET], nspolicy.LOOPBACK[socket.AF_INET6]
DICTIONARY = [b"\xa2op", b"\xa6family", b"\xa7address", b"\xa4port", b"\xa4nfds",
              b"\xc4\x04" + OWN4, b"\xc4\x10" + OWN6, b"\xc4\x04" + LO4, b"\xc4\x10" + LO6,
              b"\xa7connect",
              b"\xa6listen", b"\xabudp_connect", b"\xa8udp_bind", b"\x02", b"\x0a",
              b"\xcd\x4e\x20", b"\xcd\xff\xff", b"\xce\x00\x01\x00\x00", b"\x00", b"\xc0",
              b"\xc2", b"\xc3", b"\x90", b"\x91", b"\x80", b"\x84", b"\x85", b"\xd6\xff",
              b"\xcb\x40\x00\x00\x00\x00\x00\x00\x00", b"\xc4\x02op", b"\xd3" + b"\xff" * 8]

NET = Network(ipv4=IPv4Params(OWN4, 24, bytes((192, 0, 2, 1))),
              ipv6=IPv6Params(OWN6, 64, OWN6[:15] + b"\x01"))
# the policies a control byte picks from: what the broker computes for them
CONFIGS = (
    (["--config-net", "-t", "10080:20080,30000-30010:40000-40010", "-u", "5353", "-T", "none",
      "-U", "none"], NET),
    (["--config-net"], NET),                                    # auto both ways
    (["--config-net", "-t", "none", "-u", "none", "-T", "auto", "-U", "auto"], NET),
    (["--config-net", "-t", "~22,~1000-2000", "-u", "53:5353", "--no-udp", "-T", "8080"], NET),
    (["--config-net", "--no-tcp", "--no-udp"], NET),
    (["--config-net", "--host-lo-to-ns-lo", "-t", "8080", "-u", "53"], NET),
    (["--config-net", "-4"], Network(ipv4=NET.ipv4)),           # no IPv6 address
)
POLICIES = tuple(nspolicy.for_config(parse_args(argv, "pasta-sep"), net)
                 for argv, net in CONFIGS)


def check(data: bytes) -> None:
    fdp = common.provider(data)
    policy = POLICIES[fdp.ConsumeIntInRange(0, 255) % len(POLICIES)]
    request = common.guarded(ALLOWED, nssource.decide, common.rest(fdp), policy)
    if request is None:
        return
    assert request.op in nssource.OPS, request
    assert request.family in nssource.ADDRESS_SIZE, request
    assert 1 <= request.port <= MAX_PORT, request
    assert request.port in policy.ports(request.op), request
    assert len(request.address) == nssource.ADDRESS_SIZE[request.family], request
    assert request.address in policy.addresses(request.op), request
    if request.op in nspolicy.CONNECTING and request.address in nspolicy.LOOPBACKS:
        assert policy is POLICIES[5], request          # only --host-lo-to-ns-lo reaches lo
    elif request.op in nspolicy.CONNECTING:
        assert request.address in (OWN4, OWN6), request
    else:
        assert request.address in nspolicy.LOOPBACKS, request
    again = _body(request.op, request.family, request.address, request.port)
    assert nssource.decide(again, policy) == request


def _body(op: str, family: int, address: bytes, port: int) -> bytes:
    """What the worker sends (``NsSource.ask`` through ``fdpass.send``)."""
    return msgpack.packb({"op": op, "family": family, "address": address, "port": port,
                          "nfds": 0}, use_bin_type=True)


def seeds() -> list[tuple[str, bytes]]:
    # control: the policy (0 fixed ports, 1 auto, 2 -T/-U auto only, 3 exclusions, 4 none,
    # 5 --host-lo-to-ns-lo, 6 IPv4 only)
    return [("connect-translated", _body("connect", 2, OWN4, 20080) + common.control(0)),
            ("connect-range", _body("connect", 10, OWN6, 40005) + common.control(0)),
            ("udp-connect", _body("udp_connect", 2, OWN4, 5353) + common.control(0)),
            ("connect-auto", _body("connect", 10, OWN6, 8080) + common.control(1)),
            ("listen-auto", _body("listen", 2, LO4, 631) + common.control(2)),
            ("udp-bind-auto", _body("udp_bind", 10, LO6, 53) + common.control(2)),
            ("connect-excluded", _body("connect", 2, OWN4, 1500) + common.control(3)),
            ("nothing-allowed", _body("udp_bind", 2, LO4, 53) + common.control(4)),
            ("connect-loopback-refused", _body("connect", 2, LO4, 8080) + common.control(1)),
            ("connect-host-lo-to-ns-lo", _body("connect", 10, LO6, 8080) + common.control(5)),
            ("udp-connect-host-lo-to-ns-lo", _body("udp_connect", 2, LO4, 53)
             + common.control(5)),
            ("listen-own-address-refused", _body("listen", 2, OWN4, 631) + common.control(2)),
            ("connect-no-ipv6", _body("connect", 10, OWN6, 80) + common.control(6))]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
