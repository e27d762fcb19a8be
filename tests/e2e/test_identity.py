"""Real root serving a network namespace that another user namespace owns
(a rootless container's, as Podman's pasta gets it): it must join that
user namespace to act there, and it becomes an unprivileged user before it
does, so the worker and the ns socket source never run as host uid 0.
Everything here reads /proc/PID/status from the initial user namespace,
where Uid and Gid show host ids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from peers import PATH as PEERS
from peers import expected as digest

from topology import REMOTE_ADDR4, Topology

PY = sys.executable
OWNER = 4242                  # no passwd entry: its group is 4242 too
OTHER_GROUP = 4343


@dataclass
class Owned:
    """A process holding a user and a network namespace that ``uid`` made."""

    pid: int
    uid: int

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    @property
    def userns(self) -> str:
        return f"/proc/{self.pid}/ns/user"


def _owned(topo: Topology, uid: int, nested: bool = False) -> Owned:
    """``uid`` unshares a user namespace where it is root, and a network
    namespace in it (``nested``: in a second user namespace inside the first)."""
    unshare = ["unshare", "--user", "--map-root-user"]
    command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *unshare,
               *(unshare if nested else []), "--net", "sleep", "infinity"]
    proc = topo.spawn_host(*command)
    host_user = os.stat("/proc/self/ns/user").st_ino
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            inside = os.readlink(f"/proc/{proc.pid}/exe").endswith("/sleep")
            if inside and os.stat(f"/proc/{proc.pid}/ns/user").st_ino != host_user:
                return Owned(proc.pid, uid)
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError("the namespace owner did not start")


def _ids(pid: int) -> dict[str, list[int]]:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        fields = dict(line.split(":", 1) for line in handle.read().splitlines())
    return {name: [int(x) for x in fields[name].split()] for name in ("Uid", "Gid", "Groups")}


def _ours(tag: str) -> list[int]:
    """Every process whose command line names ``tag`` (the test's pid file)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if tag.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@dataclass
class Served:
    worker: int
    source: int
    owned: Owned


@contextmanager
def _serve(topo: Topology, pasta: str, owned: Owned, pidfile: str,
           *options: str) -> Iterator[Served]:
    """pasta-sep serving ``owned``'s namespace: ``--netns`` its /proc path,
    unless the options name it by "PID"; "USERNS" stands for its user
    namespace's path."""
    target = ("--netns", owned.netns) if "PID" not in options else ()
    options = tuple(str(owned.pid) if o == "PID" else owned.userns if o == "USERNS" else o
                    for o in options)
    result = topo.run_host(pasta, "--config-net", *target, "-P", pidfile, "-q", *options)
    assert result.returncode == 0, result.stderr
    with open(pidfile, encoding="ascii") as handle:
        worker = int(handle.read())
    others = [pid for pid in _ours(pidfile) if pid != worker]
    try:
        assert len(others) == 1, others                # the ns socket source, nothing else
        yield Served(worker, others[0], owned)
    finally:
        for pid in (worker, *others):                  # a /proc netns is not watched
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


CASES = {
    "netns": (False, (), (OWNER, OWNER)),
    "netns-userns": (False, ("--userns", "USERNS"), (OWNER, OWNER)),
    "runas-owner": (False, ("--runas", f"{OWNER}:{OTHER_GROUP}"), (OWNER, OTHER_GROUP)),
    "nested": (True, (), (OWNER, OWNER)),
    "pid": (False, ("PID",), (OWNER, OWNER)),
}


@pytest.fixture(params=list(CASES))
def served(request, topo: Topology, pasta: str, shared_tmp):
    """A daemon serving a namespace that OWNER's user namespace owns; yields
    it with the uid and gid it should run as."""
    nested, options, expected = CASES[request.param]
    owned = _owned(topo, OWNER, nested)
    # a fixed forward below 1024: bound as root, before the identity switch
    with _serve(topo, pasta, owned, str(shared_tmp / "pid"), "-t", "80:10080",
                *options) as daemon:
        yield daemon, expected


def test_worker_and_ns_source_are_not_root(served) -> None:
    """The namespace's owner (or --runas), all four ids, no groups."""
    daemon, (uid, gid) = served
    for pid in (daemon.worker, daemon.source):
        ids = _ids(pid)
        assert ids["Uid"] == [uid] * 4, pid
        assert ids["Gid"] == [gid] * 4, pid
        assert ids["Groups"] == []
    inside = os.stat(daemon.owned.netns).st_ino
    assert os.stat(f"/proc/{daemon.source}/ns/net").st_ino == inside
    assert os.stat(f"/proc/{daemon.worker}/ns/net").st_ino != inside


def test_no_namespace_fd_is_left_open(served) -> None:
    """The user namespace found for the join stays with the broker."""
    daemon, _ = served
    for pid in (daemon.worker, daemon.source):
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not [t for t in targets if t.startswith(("user:", "net:"))], targets


def test_traffic_flows_both_ways(served, topo: Topology) -> None:
    """Out through the tap (namespace to the remote end), and in from the
    host's port 80 to the namespace's 10080, spliced by the ns source."""
    daemon, _ = served
    topo.spawn_remote(PY, PEERS, "sink", "10040")
    topo.wait_listening(10040)
    enter = ["nsenter", "--target", str(daemon.owned.pid), "--net"]
    out = subprocess.run([*enter, PY, PEERS, "send", REMOTE_ADDR4, "10040", "200000", "5"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == digest(200000, 5), out.stderr
    topo.procs.append(subprocess.Popen([*enter, PY, PEERS, "sink", "10080"],
                                       start_new_session=True))
    deadline = time.monotonic() + 20
    while True:
        back = topo.run_host(PY, PEERS, "send", "127.0.0.1", "80", "100000", "6")
        if back.stdout.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert back.stdout.strip() == digest(100000, 6), back.stderr


def _refused(topo: Topology, pasta: str, pidfile: str, *args: str) -> str:
    """Run, expecting a one-line error and nothing left behind."""
    result = topo.run_host(pasta, "--config-net", "-P", pidfile, "-q", *args)
    assert result.returncode == 1, result.stderr
    assert not os.path.exists(pidfile)
    assert _ours(pidfile) == []
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


def test_runas_who_cannot_join_is_refused(topo: Topology, pasta: str, shared_tmp) -> None:
    owned = _owned(topo, OWNER)
    error = _refused(topo, pasta, str(shared_tmp / "pid"), "--netns", owned.netns,
                     "--runas", "12345")
    assert error == (f"pasta-sep: cannot join the user namespace owning {owned.netns} as "
                     f"uid 12345: only its owner, uid {OWNER}, may; pass --runas the "
                     "namespace's owner\n")


def test_namespace_root_made_is_refused(topo: Topology, pasta: str, shared_tmp) -> None:
    """Only root could join it, and the worker never runs as root."""
    owned = _owned(topo, 0)
    error = _refused(topo, pasta, str(shared_tmp / "pid"), "--netns", owned.netns)
    assert error == (f"pasta-sep: cannot join the user namespace owning {owned.netns} as "
                     "uid 65534: only root may, and the worker never runs as root\n")


@pytest.mark.parametrize("runas", ["root", "0", "12345:0"])
def test_runas_root_is_refused(topo: Topology, pasta: str, shared_tmp, runas: str) -> None:
    error = _refused(topo, pasta, str(shared_tmp / "pid"), "--runas", runas, "--", "true")
    assert error == (f"pasta-sep: --runas {runas}: the worker never runs as root's uid or "
                     "gid (0): name an unprivileged user\n")
