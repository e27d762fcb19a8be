"""What passt-sep and pasta-sep say, and where: the start-up block on
standard error (unless -q) and in the -l file, stamped lines there as
passt writes them, the reason a start failed, the program's own name, and
a refused ping said once rather than per echo request."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from topology import GW_ADDR4, HOST_ADDR4, HOST_ADDR6, REMOTE_ADDR4, Topology

STAMP = re.compile(r"^\d+\.\d{4}: (ERROR:   |WARNING: |info:    |         )")
PORT = 18460


@pytest.fixture
def netns(topo: Topology):
    name = f"{topo.host}-lg"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def _start(topo: Topology, binary: str, mode: str, shared_tmp, netns: str,
           *options: str) -> tuple[subprocess.CompletedProcess, int]:
    """Start in the background with a pid file; the result and the worker."""
    where = (["-s", str(shared_tmp / "guest.socket")] if mode == "passt"
             else ["--config-net", "--netns", f"/run/netns/{netns}"])
    pidfile = shared_tmp / "worker.pid"
    result = topo.run_host(binary, *where, "-P", str(pidfile), *options)
    assert result.returncode == 0, result.stderr
    return result, int(pidfile.read_text())


def _stop(worker: int) -> None:
    os.kill(worker, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {worker} did not exit")


def _unstamped(path) -> list[str]:
    """The log file's lines after its header, without their stamps (all
    of which must be there)."""
    header, *lines = path.read_text().splitlines()
    assert re.match(r"^(passt|pasta)-sep \S+: \S+ \(\d+\)$", header), header
    assert all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_log_file_and_stderr_hold_the_startup_block(topo: Topology, passt: str, pasta: str,
                                                    shared_tmp, netns: str, mode: str) -> None:
    log = shared_tmp / "x.log"
    binary = passt if mode == "passt" else pasta
    result, worker = _start(topo, binary, mode, shared_tmp, netns, "-l", str(log),
                            "-t", str(PORT), "-u", "none")
    try:
        stderr = result.stderr.splitlines()
        for expected in ("Template interface: eth0 (IPv4), eth0 (IPv6)", "DHCP:",
                         f"    assign: {HOST_ADDR4}", "    mask: 255.255.255.0",
                         f"    router: {GW_ADDR4}", f"    assign: {HOST_ADDR6}",
                         f"    TCP from the host: */{PORT}"):
            assert expected in stderr, result.stderr
        assert ("Namespace interface: eth0" in stderr) == (mode == "pasta")
        lines = _unstamped(log)
        block = stderr[:stderr.index(f"    TCP from the host: */{PORT}") + 1]
        assert lines[:len(block)] == block          # the same block, stamped
        assert re.match(r"^\d+\.\d{4}: info:    Template interface: ",
                        log.read_text().splitlines()[1])
    finally:
        _stop(worker)


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_quiet_prints_nothing(topo: Topology, passt: str, pasta: str, shared_tmp,
                              netns: str, mode: str) -> None:
    log = shared_tmp / "x.log"
    result, worker = _start(topo, passt if mode == "passt" else pasta, mode, shared_tmp,
                            netns, "-q", "-l", str(log), "-t", str(PORT))
    try:
        assert result.stderr == ""
        assert _unstamped(log) == []                 # the header alone
    finally:
        _stop(worker)


def test_foreground_passt_logs_guests_to_both(topo: Topology, passt: str, shared_tmp) -> None:
    """-f with -l: standard error and the file, as passt's."""
    log, path = shared_tmp / "x.log", shared_tmp / "guest.socket"
    proc = topo.spawn_host(passt, "-f", "-s", str(path), "-l", str(log),
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as guest:
        guest.connect(str(path))
        deadline = time.monotonic() + 10
        while "guest connected" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert "passt-sep: guest connected" in stderr.splitlines()
    assert "guest connected" in _unstamped(log)
    assert f"    assign: {HOST_ADDR4}" in stderr.splitlines()


def test_startup_error_is_in_the_log_file(topo: Topology, passt: str, shared_tmp) -> None:
    """-t on a port a test holds: one line on standard error, the same
    reason stamped in the -l file, and the file is kept."""
    log = shared_tmp / "x.log"
    holder = topo.spawn_host("python3", "-c",
                             "import socket, time\n"
                             f"s = socket.create_server(('0.0.0.0', {PORT}))\n"
                             "time.sleep(60)")
    topo.wait_listening(PORT, remote=False)
    result = topo.run_host(passt, "-s", str(shared_tmp / "guest.socket"), "-l", str(log),
                           "-t", str(PORT))
    holder.kill()
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("passt-sep: ") and str(PORT) in line
    lines = log.read_text().splitlines()
    assert lines[-1].endswith(f": ERROR:   {line.removeprefix('passt-sep: ')}")
    assert re.match(r"^\d+\.\d{4}: ERROR:   ", lines[-1])


def test_pasta_messages_name_pasta(topo: Topology, pasta: str, shared_tmp,
                                   netns: str) -> None:
    """The worker's lines and the broker's say pasta-sep, never passt-sep."""
    proc = topo.spawn_host(pasta, "-f", "--config-net", "--netns", f"/run/netns/{netns}",
                           "-t", "none", "-u", "none", "-T", "none", "-U", "none",
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "eth0" not in topo.run_host(
            "ip", "netns", "exec", netns, "ip", "-br", "addr").stdout:
        time.sleep(0.1)
    time.sleep(0.3)                                  # the worker's signal handlers are set
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert "pasta-sep: SIGTERM: exiting" in stderr.splitlines(), stderr
    failed = topo.run_host(pasta, "--netns", "/nonexistent/netns")
    assert failed.stderr.startswith("pasta-sep: ")
    assert "passt-sep" not in stderr + failed.stderr


@pytest.mark.parametrize("with_log", [False, True], ids=["stderr", "log-file"])
def test_refused_ping_is_one_warning(topo: Topology, pasta: str, shared_tmp,
                                     with_log: bool) -> None:
    """net.ipv4.ping_group_range excluding every group: 20 echo requests
    from the namespace give one warning, where pasta gives four lines each
    (on the user's terminal in command mode, or in the -l file)."""
    topo.in_host("sysctl", "-qw", "net.ipv4.ping_group_range=1 0")
    log = shared_tmp / "x.log"
    options = ["-l", str(log)] if with_log else []
    result = topo.run_host(pasta, "--config-net", *options, "--", "sh", "-c",
                           f"ping -c 20 -i 0.05 -W 1 {REMOTE_ADDR4}; true")
    assert result.returncode == 0, result.stderr
    assert "20 packets transmitted, 0 received" in result.stdout
    warnings = [line for line in (_unstamped(log) if with_log else result.stderr.splitlines())
                if "ping" in line]
    assert len(warnings) == 1, warnings
    assert "cannot open a ping socket: Permission denied" in warnings[0]
    assert "net.ipv4.ping_group_range" in warnings[0]
    if with_log:
        assert result.stderr == ""
    else:
        assert warnings[0].startswith("pasta-sep: WARNING: ")


PODMAN_ARGV = {
    "podman4": ["--config-net", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
                "--no-map-gw", "--netns"],
    "podman5": ["--config-net", "--dns-forward", "169.254.1.1", "-t", "none", "-u", "none",
                "-T", "none", "-U", "none", "--no-map-gw", "--quiet", "--netns"],
}


@pytest.mark.parametrize("release", ["podman4", "podman5"])
def test_podman_command_lines(topo: Topology, pasta: str, netns: str, release: str) -> None:
    """Podman 4.x passes no --quiet: the block goes to standard error (which
    Podman drops unless pasta fails); 5.x's --quiet leaves it empty, with
    its --map-guest-addr after --netns."""
    tail = ["--map-guest-addr", "169.254.1.2"] if release == "podman5" else []
    result = topo.run_host(pasta, *PODMAN_ARGV[release], f"/run/netns/{netns}", *tail)
    assert result.returncode == 0, result.stderr
    if release == "podman4":
        lines = result.stderr.splitlines()
        assert lines[0] == "Template interface: eth0 (IPv4), eth0 (IPv6)", result.stderr
        assert f"    assign: {HOST_ADDR4}" in lines and "Forwarding:" not in lines
    else:
        assert result.stderr == ""
    addresses = topo.run_host("ip", "netns", "exec", netns, "ip", "-br", "-4", "addr").stdout
    assert f"{HOST_ADDR4}/24" in addresses


def test_trace_says_every_guest_frame(topo: Topology, pasta: str) -> None:
    """--trace: a line per guest frame, with family, protocol and addresses
    (the namespace's ping to the remote among them); without it, none."""
    ping = ("ping", "-c", "1", "-W", "5", REMOTE_ADDR4)
    traced = topo.run_host(pasta, "--trace", "--config-net", "--", *ping)
    assert traced.returncode == 0, traced.stderr
    assert re.search(rf"guest: IPv4 ICMP {HOST_ADDR4} > {REMOTE_ADDR4}, \d+ bytes",
                     traced.stderr), traced.stderr
    plain = topo.run_host(pasta, "--config-net", "--", *ping)
    assert plain.returncode == 0 and "guest: " not in plain.stderr, plain.stderr
