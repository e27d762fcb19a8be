"""The worker's sandbox, property by property, against the running daemon."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter

import pytest

from passt_sep.system import sandbox

from topology import REMOTE_ADDR4, Topology

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        return dict(line.split(":\t", 1) for line in handle.read().splitlines() if ":\t" in line)


@pytest.fixture(params=["root", "root-runas", "rootless"])
def daemon(request, topo: Topology, pasta: str, shared_tmp):
    """A daemonized pasta-sep serving a namespace; yields the worker's pid."""
    netns = f"{topo.host}-sb"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    pidfile = shared_tmp / "pid"
    rootless = request.param == "rootless"
    try:
        args = ["--config-net", "--netns", f"/run/netns/{netns}", "-P", str(pidfile), "-q"]
        if request.param == "root-runas":
            args += ["--runas", f"{RUNAS}:{RUNAS}"]
        if rootless:
            # an unprivileged caller must own the namespace: let it make one
            args = ["--config-net", "-P", str(pidfile), "-q", "--", "sleep", "30"]
            proc = topo.spawn_host(pasta, *args, rootless=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
        else:
            result = topo.run_host(pasta, *args)
            assert result.returncode == 0, result.stderr
            proc = None
        worker = int(pidfile.read_text())
        yield worker, rootless, netns
    finally:
        if proc is not None:
            proc.kill()
        subprocess.run(["ip", "netns", "del", netns], check=False)


RUNAS = 12345


def _wait_for(condition, timeout: float = 20.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not met")


CAP_NET_BIND_SERVICE = 1 << 10


def test_worker_has_no_capabilities_and_is_locked(daemon) -> None:
    """Nothing, except, as real root with pasta's auto forwarding (the
    default: the namespace may start listening on a port below 1024 at
    any time), CAP_NET_BIND_SERVICE."""
    worker, rootless, _ = daemon
    status = _status(worker)
    kept = 0 if rootless else CAP_NET_BIND_SERVICE
    assert int(status["CapEff"], 16) == kept
    assert int(status["CapPrm"], 16) == kept
    assert int(status["CapInh"], 16) == 0
    assert int(status["CapBnd"], 16) == kept
    assert int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"


def test_no_capability_at_all_without_auto_forwarding(topo: Topology, pasta: str,
                                                     shared_tmp) -> None:
    netns = f"{topo.host}-nc"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    pidfile = shared_tmp / "pid"
    try:
        result = topo.run_host(pasta, "--config-net", "--netns", f"/run/netns/{netns}", "-P",
                               str(pidfile), "-q", "-t", "none", "-u", "none")
        assert result.returncode == 0, result.stderr
        status = _status(int(pidfile.read_text()))
        for field in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
            assert int(status[field], 16) == 0, field
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def test_auto_forwards_a_port_below_1024_as_root(topo: Topology, pasta: str) -> None:
    """The kept capability at work: the namespace listens on port 80 and
    the worker binds it on the host within the rescan."""
    script = (f"{sys.executable} -c \"import socket, time\n"
              "s = socket.create_server(('0.0.0.0', 80)); time.sleep(4)\" &\n"
              "sleep 2.5\n"
              f"ip netns exec {topo.host} ss -Htln 'sport = :80' | wc -l\n"
              "wait")
    result = topo.run_host(pasta, "--config-net", "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] != "0", result.stdout


def test_worker_runs_as_nobody_or_the_runas_user(daemon, request) -> None:
    """Real root switches to nobody like passt, or to --runas; rootless
    stays the caller (65534 here) inside its own user namespace."""
    worker, _, _ = daemon
    expected = RUNAS if "root-runas" in request.node.name else 65534
    status = _status(worker)
    assert {int(x) for x in status["Uid"].split()} == {expected}
    assert {int(x) for x in status["Gid"].split()} == {expected}
    assert status["Groups"].split() == []


def test_worker_root_is_empty_and_namespaces_are_its_own(daemon) -> None:
    worker, rootless, _ = daemon
    assert os.listdir(f"/proc/{worker}/root") == []
    for kind in ("mnt", "ipc", "uts", "pid_for_children"):
        mine = os.stat(f"/proc/self/ns/{kind}").st_ino
        theirs = os.stat(f"/proc/{worker}/ns/{kind}").st_ino
        assert mine != theirs, kind
    if rootless:
        assert os.stat("/proc/self/ns/user").st_ino != os.stat(f"/proc/{worker}/ns/user").st_ino
    assert _status(worker)["NSpid"].split()[-1] == "1"  # PID 1 of its own namespace


def _fd_kind(target: str) -> str:
    """What an fd of the jailed worker is (paths show relative to its old root)."""
    for suffix, kind in (("/net/tun", "tap"), ("/null", "devnull"),
                         ("anon_inode:[eventpoll]", "epoll"), ("anon_inode:[timerfd]", "timerfd"),
                         ("anon_inode:inotify", "netns_watch"), ("anon_inode:[pidfd]", "pidfd")):
        if target.endswith(suffix):
            return kind
    if target.startswith("socket:"):
        return "socket"
    if target.endswith(("/net/tcp", "/net/tcp6", "/net/udp", "/net/udp6")):
        return "proc_net"
    return "path"


def test_worker_fds_are_the_manifest_and_the_loop(daemon) -> None:
    """Manifest: tap, /dev/null (stdio; stderr stays the caller's in command
    mode, here /dev/null too), and the command's pidfd or the netns watch,
    the ns socket source's socket, both sides'
    /proc/net/{tcp,tcp6,udp,udp6} (auto forwarding, the default); the loop's
    own: epoll, timerfd and the signal wake-up socket pair.  Nothing else."""
    worker, rootless, _ = daemon
    targets = [os.readlink(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")]
    kinds = Counter(_fd_kind(t) for t in targets)
    expected = Counter(tap=1, epoll=1, timerfd=1, socket=3, devnull=3, proc_net=8)
    if rootless:
        expected.update(pidfd=1)
    else:
        expected.update(netns_watch=1)
    assert kinds == expected, targets


def test_traffic_still_flows_under_the_filter(daemon, topo: Topology) -> None:
    worker, rootless, netns = daemon
    if rootless:
        pytest.skip("the rootless daemon's namespace belongs to its command")
    ping = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "2", "-W", "3",
                           REMOTE_ADDR4], capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout
    assert os.path.exists(f"/proc/{worker}")


@pytest.mark.parametrize("how", ["precompiled", "built"])
@pytest.mark.parametrize("call", ["open", "execve", "unix_socket", "netlink_socket",
                                  "raw_socket", "packet_type_socket", "sctp_socket",
                                  "exec_mmap", "shared_mmap", "setns", "ptrace"])
def test_unlisted_syscall_kills_with_sigsys(call: str, how: str) -> None:
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sandbox_probe.py"),
                             call, how], capture_output=True, cwd="/")
    assert result.returncode == -signal.SIGSYS, result.stderr


@pytest.mark.parametrize("how", ["precompiled", "built"])
@pytest.mark.parametrize("call", ["inet_socket", "inet6_socket", "anon_mmap",
                                  "clock_gettime_syscall", "gettimeofday_syscall"])
def test_listed_syscall_is_allowed(call: str, how: str) -> None:
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sandbox_probe.py"),
                             call, how], capture_output=True, cwd="/")
    assert result.returncode == 0, result.stderr


@pytest.fixture
def novdso(shared_tmp) -> str:
    """The clock functions through the real system call (tests/novdso.c)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the vDSO-less shim")
    shim = shared_tmp / "novdso.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(shim),
                    os.path.join(REPO, "tests", "novdso.c")], check=True)
    return str(shim)


def test_the_shim_makes_clock_reads_system_calls(novdso: str) -> None:
    """Under a filter without clock_gettime (the waiter's), a clock read
    kills only with the shim: it does reach the kernel."""
    code = ("import time\nfrom passt_sep.system import sandbox\n"
            "sandbox.prepare('waiter').load()\ntime.monotonic()\nimport os\nos._exit(0)")
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd="/")
    shimmed = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd="/",
                             env={**os.environ, "LD_PRELOAD": novdso})
    assert plain.returncode == 0, plain.stderr
    assert shimmed.returncode == -signal.SIGSYS, shimmed.stderr


def test_worker_serves_without_the_vdso(topo: Topology, pasta: str, novdso: str) -> None:
    """A host booted with vdso=0 (or a clock source the vDSO cannot read):
    every clock read of the worker is a system call, and traffic flows."""
    script = (f"ping -c 3 -i 0.3 -W 3 {REMOTE_ADDR4} >/dev/null && "
              f"{sys.executable} -c \"import socket; socket.create_connection"
              f"(('{REMOTE_ADDR4}', 10080), timeout=5).close()\"; echo tcp=$?")
    topo.spawn_remote(sys.executable, "-c", "import socket\n"
                      "s = socket.create_server(('0.0.0.0', 10080))\n"
                      "while True: s.accept()[0].close()")
    topo.wait_listening(10080)
    result = topo.run_host(pasta, "--config-net", "--", "sh", "-c", script,
                           env={**os.environ, "LD_PRELOAD": novdso})
    assert result.returncode == 0, result.stderr
    assert "tcp=0" in result.stdout, result.stderr


def _listed(name: str) -> list[str]:
    with open(sandbox.allowlist_path(name), encoding="utf-8") as handle:
        return sandbox.syscall_names(sandbox.parse_allowlist(handle.read()))


def test_allowlist_filter_and_readme_agree(tmp_path) -> None:
    """The filter libseccomp builds from the list names what the README
    says (the program a start arms is this filter, compiled at install:
    tests/unit/test_bpf.py)."""
    names = _listed("worker")
    pfc = tmp_path / "filter.pfc"
    with open(pfc, "w", encoding="ascii") as handle:
        sandbox.build(sandbox.read_allowlist("worker")[1]).filter.export_pfc(handle)
    in_filter = sorted(set(re.findall(r"# filter for syscall \"(\w+)\"", pfc.read_text())))
    assert in_filter == names
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    assert f"the worker's list has {len(names)} entries" in readme
    assert f"the waiter's list has {len(_listed('waiter'))} entries" in readme
    assert len(names) <= 45


def _ns_source(worker: int) -> int:
    """The ns socket source: the other process of this very run (a fork
    of the same broker, so the same command line as the worker), the one
    whose network namespace is the target's rather than the host's (the
    worker's, and the waiter's in command mode).  Other runs of pasta-sep
    on the machine have other command lines (their own pid files)."""
    host_net = os.stat(f"/proc/{worker}/ns/net").st_ino
    with open(f"/proc/{worker}/cmdline", "rb") as handle:
        worker_argv = handle.read()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == worker:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read()
            net = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if argv == worker_argv and net != host_net:
            return int(entry)
    raise AssertionError("no ns socket source running")


def test_ns_source_is_jailed_filtered_and_holds_one_socket(daemon) -> None:
    """It lives in the target namespace to make sockets there for the
    worker: no capabilities, its own allowlist, an empty root, and no fd
    but its socket to the worker and /dev/null on stdio."""
    worker, _, _ = daemon
    source = _ns_source(worker)
    status = _status(source)
    for field in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, field
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert os.listdir(f"/proc/{source}/root") == []
    targets = [os.readlink(f"/proc/{source}/fd/{fd}") for fd in os.listdir(f"/proc/{source}/fd")]
    assert Counter(_fd_kind(t) for t in targets) == Counter(socket=1, devnull=3), targets


def test_ns_source_allowlist_is_small() -> None:
    names = _listed("nssource")
    assert "socket" in names and "open" not in names and "openat" not in names
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        assert f"the ns socket source's list has {len(names)} entries" in handle.read()
