"""An attacker inside the worker: with the real broker's fds and the real
filter, every escape fails (``tests/compromised_worker.py`` runs it)."""

from __future__ import annotations

import json
import os
import platform
import select
import signal
import stat
import subprocess
import sys
import time

import pytest

from topology import REMOTE_ADDR4, Topology

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ATTACKER = os.path.join(REPO, "tests", "compromised_worker.py")
REPORT = "REPORT "
ESCAPE_NAMES = ("escape-dir", "escape-node", "escape-renamed", "escape-link", "escape-symlink")

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="the attempts are x86_64 system call numbers")


class Attacked:
    """The attacker's report and the worker it ran in (still serving)."""

    def __init__(self, variant: str, proc: subprocess.Popen, report: dict, worker: int) -> None:
        self.variant = variant
        self.proc = proc
        self.fds = {int(fd): kind for fd, kind in report["fds"].items()}
        self.attempts = report["attempts"]
        self.worker = worker


def _read_report(proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    """The attacker's line on the broker's stderr (``-f`` keeps it)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if not ready:
            continue
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith(REPORT.encode()):
            return json.loads(line[len(REPORT):])
        seen += line
    raise AssertionError(f"no report from the attacker: {seen.decode(errors='replace')}")


def _worker_of(broker: int) -> int:
    """The broker's child in the broker's own network namespace (the ns
    socket source is the one in the target's)."""
    own_net = os.stat(f"/proc/{broker}/ns/net").st_ino
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii") as handle:
                ppid = next(int(line.split()[1]) for line in handle if line.startswith("PPid:"))
            net = os.stat(f"/proc/{entry}/ns/net").st_ino
        except (OSError, StopIteration):
            continue
        if ppid == broker and net == own_net:
            return int(entry)
    raise AssertionError("no worker running")


VARIANTS = {
    "pasta": ["--config-net", "-t", "10022", "-u", "10053"],
    "pasta-pidfile": ["--config-net", "-P", "{dir}/pid"],
    "passt": ["-s", "{dir}/passt.socket", "-t", "10022"],
}


@pytest.fixture(params=list(VARIANTS))
def attacked(request, topo: Topology, shared_tmp):
    """The real broker and worker for one kind of command line, with log
    and capture files, the attacker's report, and the worker serving."""
    variant = request.param
    mode = variant.split("-")[0]
    netns = f"{topo.host}-cw"
    (shared_tmp / "victim").write_text("keep me")
    args = [arg.format(dir=shared_tmp) for arg in VARIANTS[variant]]
    args += ["-f", "--log-file", str(shared_tmp / "log"), "--pcap", str(shared_tmp / "pcap")]
    if mode == "pasta":
        subprocess.run(["ip", "netns", "add", netns], check=True)
        args += ["--netns", f"/run/netns/{netns}"]
    proc = topo.spawn_host(sys.executable, ATTACKER, mode, *args, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, cwd="/")
    worker = None
    try:
        report = _read_report(proc)
        worker = _worker_of(proc.pid)
        yield Attacked(variant, proc, report, worker), netns, shared_tmp
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGKILL)     # its own session: not in the broker's group
        proc.kill()
        proc.wait()
        if mode == "pasta":
            subprocess.run(["ip", "netns", "del", netns], check=False)


def test_path_calls_through_every_fd_are_killed(attacked) -> None:
    """openat(fd, ".."), unlinkat, mkdirat, renameat, linkat, symlinkat,
    fchdir, execveat, setns, pidfd_getfd, ioctl, fcntl(F_NOTIFY), mmap of
    the fd...: through each fd the worker holds, the filter kills."""
    run, _, directory = attacked
    per_fd = [a for a in run.attempts if a["fd"] is not None]
    assert {a["fd"] for a in per_fd} == set(run.fds)
    wrong = [a for a in per_fd if a["outcome"] != "sigsys"]
    assert not wrong, wrong
    assert (directory / "victim").read_text() == "keep me"
    assert not [name for name in ESCAPE_NAMES if (directory / name).exists()]


def test_other_escapes_are_killed(attacked) -> None:
    """Raw, packet, netlink, UNIX, SCTP sockets; forbidden socket options
    (BPF filters, TLS ULP); ptrace, process_vm_*; executable or shared
    memory; new namespaces, processes, programs; bpf, io_uring, keys..."""
    run, _, _ = attacked
    escapes = [a for a in run.attempts if a.get("group") == "escape"]
    assert len(escapes) > 40
    assert [a for a in escapes if a["outcome"] != "sigsys"] == []


def test_controls_are_allowed(attacked) -> None:
    """The same harness lets through what the worker's traffic needs,
    the clock read without the vDSO among them."""
    run, _, _ = attacked
    controls = {a["name"]: a["outcome"] for a in run.attempts if a.get("group") == "control"}
    assert controls and set(controls.values()) == {"ok"}, controls


def test_no_fd_is_a_directory_and_the_worker_still_serves(attacked) -> None:
    """Inside (fstat before the filter) and outside (/proc/PID/fd of the
    serving worker): no directory among the fds; after the attempts the
    worker serves (pasta: a ping from the namespace)."""
    run, netns, _ = attacked
    assert "dir" not in run.fds.values(), run.fds
    outside = {int(fd): os.stat(f"/proc/{run.worker}/fd/{fd}").st_mode
               for fd in os.listdir(f"/proc/{run.worker}/fd")}
    assert not [fd for fd, mode in outside.items() if stat.S_ISDIR(mode)], outside
    if run.variant.startswith("pasta"):
        ping = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "5",
                               REMOTE_ADDR4], capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout
    assert os.path.exists(f"/proc/{run.worker}") and run.proc.poll() is None
