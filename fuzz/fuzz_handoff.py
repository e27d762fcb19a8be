"""Fuzz target ``handoff``: the broker -> worker message as the worker
receives it: the msgpack body (``fdpass._unpack``) and ``handoff.decode``
with as many fds as the message announces.

Input: the msgpack body.  Documented exceptions: ``handoff.HandoffError``
(and, for a body that is not a msgpack map, ``fdpass.FdPassError``, which
``handoff_io.receive`` turns into a ``HandoffError``).
Invariant: a decoded handoff holds every fd once, in order, each with a
known role and the metadata record that role has.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_handoff.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402

from fuzz import common  # noqa: E402
from passt_sep import handoff  # noqa: E402
from passt_sep.config import parse_args  # noqa: E402
from passt_sep.handoff import (  # noqa: E402
    FdEntry,
    HandoffError,
    ListenerMeta,
    LogMeta,
    NetnsWatchMeta,
    ProcNetMeta,
    Role,
    WorkerConfig,
)
from passt_sep.system import fdpass

NAME = "handoff"
ALLOWED = (HandoffError,)
DICTIONARY = [b"\xa1v", b"\xa6config", b"\xa7network", b"\xa3fds", b"\xa4nfds", b"\xa4role",
              b"\xa6target", b"\xa4port", b"\xa6family", b"\xa3tap", b"\xacunix_listener",
              b"\xactcp_listener", b"\xc0",
              b"\xc3", b"\xc2", b"\x90", b"\x80", b"\x91", b"\x81", b"\xdc\xff\xff",
              b"\xde\xff\xff", b"\xcc\xff", b"\xd3" + b"\xff" * 8]
MAX_FDS = 4096
FIRST_FD = 100


def check(data: bytes) -> None:
    message = common.guarded((fdpass.FdPassError,), fdpass._unpack, data)
    if message is None:
        return
    count = message.get("nfds")
    if not isinstance(count, int) or not 0 <= count <= MAX_FDS:
        return                       # fdpass.receive refuses it before decode
    fds = list(range(FIRST_FD, FIRST_FD + count))
    result = common.guarded(ALLOWED, handoff.decode, message, fds)
    if result is None:
        return
    assert [entry.fd for entry in result.fds] == fds
    for entry in result.fds:
        meta = handoff.ROLES[entry.role].meta
        assert type(entry.meta) is meta if meta else entry.meta is None
    assert isinstance(result.config, WorkerConfig)


def _body(argv: list[str], prog: str, entries: list[FdEntry]) -> bytes:
    """What the broker sends (``fdpass.send``): the message and its fd count."""
    config = WorkerConfig.from_config(parse_args(argv, prog))
    message = handoff.encode(config, common.NET, entries)
    return msgpack.packb({**message, "nfds": len(entries)}, use_bin_type=True)


def seeds() -> list[tuple[str, bytes]]:
    pasta = [FdEntry(Role.TAP, 3), FdEntry(Role.DEVNULL, 4), FdEntry(Role.COMMAND_PIDFD, 5),
             FdEntry(Role.NS_SOURCE, 6),
             FdEntry(Role.TCP_LISTENER, 7, ListenerMeta(10, 10000, 20000)),
             FdEntry(Role.PROC_NET, 8, ProcNetMeta("ns", "tcp"))]
    passt = [FdEntry(Role.UNIX_LISTENER, 3), FdEntry(Role.DEVNULL, 4), FdEntry(Role.PCAP, 5),
             FdEntry(Role.LOG, 6, LogMeta(12.5))]
    podman = ["--config-net", "--dns-forward", "169.254.1.1", "-t", "none", "-u", "none",
              "-T", "none", "-U", "none", "--no-map-gw", "--quiet", "--netns",
              "/run/user/1000/netns/netns-1234"]
    podman_fds = [FdEntry(Role.TAP, 3),
                  FdEntry(Role.NETNS_WATCH, 4, NetnsWatchMeta(b"netns-1234"))]
    return [("pasta-command", _body(["--config-net", "-t", "10000-10002:20000-20002", "--",
                                     "sh", "-c", "true"], "pasta-sep", pasta)),
            ("passt-socket", _body(["--socket", "/tmp/passt-sep.socket", "-t", "22,80:8080",
                                    "--pid-file", "/run/user/1000/vm1.pid", "-p", "/tmp/x.pcap"],
                                   "passt-sep", passt)),
            ("podman", _body(podman, "pasta", podman_fds)),
            ("no-fds", _body([], "passt-sep", []))]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
