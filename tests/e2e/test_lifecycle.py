"""How long passt-sep lives: as long as whatever it serves, and never longer
than the process a supervisor started and stops."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from procstat import alive, processes_naming, wait_for

from topology import Topology


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(child) for child in handle.read().split()]
    except FileNotFoundError:
        return []


def _worker_of(broker: int) -> int | None:
    """The broker's child that is PID 1 of a PID namespace of its own: the
    worker (the netlink helper, a child for a while too, is not)."""
    for child in _children(broker):
        try:
            with open(f"/proc/{child}/status", encoding="ascii") as handle:
                nspid = [line for line in handle if line.startswith("NSpid:")][0].split()
        except (FileNotFoundError, IndexError):
            continue
        if len(nspid) > 2 and nspid[-1] == "1":
            return child
    return None




@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_foreground_signal_to_the_started_pid_ends_the_worker(
        topo: Topology, passt: str, shared_tmp, signum: int, rootless: bool) -> None:
    """``-f`` under a supervisor that stops it by the pid it started
    (systemd Type=simple, ``timeout``, KubeVirt): the worker goes with it,
    SIGKILL included, and with it the guest socket's listener."""
    sock = shared_tmp / "fg.socket"
    proc = topo.spawn_host(passt, "-f", "-q", "-s", str(sock), rootless=rootless,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for(sock.is_socket), "the socket never appeared"
    assert wait_for(lambda: _worker_of(proc.pid) is not None)
    worker = _worker_of(proc.pid)
    assert worker is not None and alive(worker)
    os.kill(proc.pid, signum)
    proc.wait(timeout=10)
    assert wait_for(lambda: not alive(worker)), "the worker outlived the process started"
    assert processes_naming(str(sock)) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_foreground_pasta_signal_ends_the_worker_and_the_ns_source(
        topo: Topology, pasta: str, shared_tmp, signum: int) -> None:
    """Pasta's ``-f`` with a forwarded port has a third process, the ns
    socket source inside the namespace: stopping the started pid ends it
    and the worker alike, and the port is free again."""
    marker = shared_tmp / "fg-pasta.pid"
    target = topo.spawn_host("unshare", "--net", "sleep", "600")
    netns = f"/proc/{target.pid}/ns/net"
    assert wait_for(lambda: os.readlink(netns) != os.readlink("/proc/self/ns/net"))
    proc = topo.spawn_host(pasta, "-f", "-q", "--config-net", "-P", str(marker),
                           "-t", "20081", "--netns", netns,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for(lambda: marker.exists() and marker.read_text().strip() != "", timeout=30)
    worker = int(marker.read_text())
    assert wait_for(lambda: len(set(processes_naming(str(marker))) - {proc.pid, worker}) == 1), \
        "no ns socket source beside the worker"
    (source,) = set(processes_naming(str(marker))) - {proc.pid, worker}
    os.kill(proc.pid, signum)
    proc.wait(timeout=10)
    assert wait_for(lambda: not alive(worker)), "the worker outlived the process started"
    assert wait_for(lambda: not alive(source)), "the ns socket source outlived it"
    assert processes_naming(str(marker)) == []
    assert wait_for(lambda: "20081" not in topo.run_host("ss", "-Htln").stdout), \
        "the forwarded port is still bound"


@pytest.mark.parametrize("how", ["path", "pid"])
def test_pid_mode_exits_when_the_target_process_dies(topo: Topology, pasta: str, shared_tmp,
                                                    how: str) -> None:
    """``--netns /proc/PID/ns/net`` or ``PID``: the namespace lives as long
    as that process, and so does the worker serving it."""
    target = topo.spawn_host("unshare", "--net", "sleep", "600")
    netns = f"/proc/{target.pid}/ns/net"
    assert wait_for(lambda: os.readlink(netns) != os.readlink("/proc/self/ns/net"))
    pidfile = shared_tmp / "target.pid"
    where = ["--netns", netns] if how == "path" else [str(target.pid)]
    result = topo.run_host(pasta, "-q", "--config-net", "-P", str(pidfile), *where)
    assert result.returncode == 0, result.stderr
    worker = int(pidfile.read_text())
    assert alive(worker)
    target.kill()
    target.wait(timeout=10)
    assert wait_for(lambda: not alive(worker), timeout=5), \
        "the worker still serves a namespace whose process is gone"
    assert processes_naming(str(pidfile)) == []


def test_nothing_outlives_the_command(topo: Topology, pasta: str, shared_tmp) -> None:
    """``pasta-sep -- COMMAND`` returns the command's status, and none of
    its processes (broker, worker, ns socket source, helpers) is left."""
    marker = str(shared_tmp / "cmd.pid")
    result = topo.run_host(pasta, "-q", "--config-net", "-P", marker, "-t", "20080", "--",
                           "sh", "-c", "exit 7")
    assert result.returncode == 7, result.stderr
    assert processes_naming(marker) == []


def test_command_status_waits_for_the_ns_source(topo: Topology, pasta: str,
                                                shared_tmp) -> None:
    """The ns socket source leaves a moment after the worker (when its
    socket closes): the command's status waits for it too.  Held stopped,
    it holds the status back; let go, nothing is left once it arrives
    (under load the status used to come first: a test found it alive)."""
    marker, flag = shared_tmp / "held.pid", shared_tmp / "go"
    proc = topo.spawn_host(pasta, "-q", "--config-net", "-P", str(marker), "-t", "20080",
                           "--", "sh", "-c", f"until [ -e {flag} ]; do sleep 0.05; done; exit 7",
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for(lambda: marker.exists() and marker.read_text().strip() != "", timeout=30)
    worker = int(marker.read_text())
    (source,) = set(processes_naming(str(marker))) - {proc.pid, worker}
    os.kill(source, signal.SIGSTOP)
    try:
        flag.touch()
        assert wait_for(lambda: not alive(worker), timeout=30), "the worker outlived the command"
        assert not wait_for(lambda: proc.poll() is not None, timeout=1), \
            "the command's status came before the ns socket source was gone"
    finally:
        os.kill(source, signal.SIGCONT)
    assert proc.wait(timeout=30) == 7, proc.stderr.read()
    assert processes_naming(str(marker)) == []


def test_command_mode_waiter_killed_takes_the_worker(topo: Topology, pasta: str,
                                                    shared_tmp) -> None:
    """The process that waits for the command is the one a caller can kill;
    the worker does not outlive it."""
    marker = str(shared_tmp / "killed.pid")
    proc = topo.spawn_host(pasta, "-q", "--config-net", "-P", marker, "--", "sleep", "600",
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pidfile = shared_tmp / "killed.pid"
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    worker = int(pidfile.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert wait_for(lambda: not alive(worker)), "the worker outlived its waiter"


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_pid_file_at_a_path_that_is_not_utf8(topo: Topology, passt: str, shared_tmp,
                                             rootless: bool) -> None:
    """Paths are any bytes: ``-P`` and ``-s`` in a directory whose name is
    not UTF-8 work as any others (the paths stay in the broker)."""
    directory = shared_tmp / os.fsdecode(b"d\xff\xfe")
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)
    pidfile, sock = directory / os.fsdecode(b"vm\xff.pid"), directory / "vm.socket"
    result = topo.run_host(passt, "--quiet", "-P", str(pidfile), "-s", str(sock),
                           rootless=rootless)
    assert result.returncode == 0, result.stderr
    assert os.fsencode(str(pidfile)).endswith(b"/d\xff\xfe/vm\xff.pid")
    worker = int(pidfile.read_text())
    assert alive(worker) and sock.is_socket()
    os.kill(worker, signal.SIGTERM)
    assert wait_for(lambda: not alive(worker))


def test_netns_file_that_is_not_utf8(topo: Topology, pasta: str, shared_tmp) -> None:
    """``--netns`` on a bind-mounted namespace file whose name is not UTF-8:
    the worker serves it, and leaves when the file goes (the netns watch
    compares the name's bytes)."""
    netns = shared_tmp / os.fsdecode(b"ns\xff")
    pidfile = shared_tmp / os.fsdecode(b"ns\xff.pid")
    netns.touch()
    subprocess.run(["unshare", f"--net={netns}", "true"], check=True)
    try:
        result = topo.run_host(pasta, "-q", "--config-net", "-P", str(pidfile), "--netns",
                               str(netns))
        assert result.returncode == 0, result.stderr
        worker = int(pidfile.read_text())
        assert alive(worker)
        routes = subprocess.run(["nsenter", f"--net={netns}", "ip", "-4", "route", "show",
                                 "default"], capture_output=True, text=True, check=True)
        assert routes.stdout.startswith("default via "), routes.stdout
    finally:
        subprocess.run(["umount", str(netns)], check=False)
    netns.unlink()
    assert wait_for(lambda: not alive(worker), timeout=5), \
        "the worker still serves a namespace whose file is gone"
