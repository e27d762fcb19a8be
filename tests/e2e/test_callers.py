"""What callers rely on: systemd's Type=forking contract, signals, the man
pages and --help."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

import pytest
from procstat import alive, processes_naming, wait_gone

from passt_sep.config import BOTH, OPTIONS

from topology import Topology

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))






@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_forking_daemon_pid_file_and_clean_signal_exit(topo: Topology, passt: str, shared_tmp,
                                                      signum: int) -> None:
    """Type=forking: the foreground process exits 0 once the worker serves,
    with the worker's pid in the file; a signal ends the worker cleanly and
    the pid file stays, as with passt (systemd removes PIDFile= itself)."""
    pidfile = shared_tmp / "vm1.pid"
    sock = shared_tmp / "vm1.socket"
    result = topo.run_host(passt, "--quiet", "--pid-file", str(pidfile), "--socket", str(sock),
                           rootless=True)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    worker = int(pidfile.read_text())
    assert alive(worker)
    assert sock.is_socket()
    os.kill(worker, signum)
    assert wait_gone(worker)
    assert pidfile.read_text() == f"{worker}\n"


def test_systemd_unit_verifies() -> None:
    unit = os.path.join(REPO, "contrib", "systemd", "passt-sep@.service")
    with open(unit, encoding="ascii") as handle:
        text = handle.read()
    assert "Type=forking" in text and "PIDFile=%t/passt-sep/%i.pid" in text
    assert "--pid-file %t/passt-sep/%i.pid" in text
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", unit],
                            capture_output=True, text=True)
    # the unit names the installed path, which this machine may not have
    problems = [line for line in result.stderr.splitlines() if "passt-sep@" in line
                and "is not executable" not in line]
    assert not problems, result.stderr


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_man_page_renders_without_warnings(mode: str) -> None:
    page = os.path.join(REPO, "man", f"{mode}-sep.1")
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-P-cbou", page],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stderr == ""
    assert "SECURITY MODEL" in result.stdout and "EXIT STATUS" in result.stdout


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_help_and_man_page_list_the_same_options(mode: str, passt: str, pasta: str) -> None:
    binary = passt if mode == "passt" else pasta
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    in_help = set(re.findall(r"^\s+(?:-\w, )?(--[\w-]+)", help_text, re.M))
    with open(os.path.join(REPO, "man", f"{mode}-sep.1"), encoding="utf-8") as handle:
        man = handle.read().replace("\\-", "-")
    options_section = man.split(".SH OPTIONS", 1)[1].split("\n.SH ", 1)[0]
    in_man = set(re.findall(r"^\\fB(?:-\w\\fR, \\fB)?(--[\w-]+)", options_section, re.M))
    expected = {o.long for o in OPTIONS if o.modes in (BOTH, mode) and not o.refused}
    assert in_help == in_man == expected


def test_version(passt: str) -> None:
    result = subprocess.run([passt, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("passt-sep ")


def test_help_into_a_reader_that_stops_early(pasta: str) -> None:
    """``pasta --help | head -1``: the reader closes the pipe at once; no
    traceback, and success."""
    for _ in range(5):
        read_end, write_end = os.pipe()
        os.close(read_end)
        result = subprocess.run([pasta, "--help"], stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=30)
        os.close(write_end)
        assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "Unknown option: --bogus"),
    (["-t", "22-abc"], "Invalid port specifier: 22-abc (option -t)"),
    (["-a", "300.1.1.1"], "Invalid address for --address: 300.1.1.1"),
    (["--netns", "/nonexistent/netns"], "cannot open network namespace /nonexistent/netns"),
])
def test_errors_are_one_clear_line(topo: Topology, pasta: str, argv: list[str],
                                   message: str) -> None:
    result = topo.run_host(pasta, *argv)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr




@pytest.mark.parametrize("wrapper, options, message", [
    ([], ["--runas", "nosuchuser"], "--runas: unknown user 'nosuchuser'"),
    (["unshare", "--mount", "sh", "-c", 'mount -t tmpfs none /dev/net && exec "$0" "$@"'], [],
     "cannot open /dev/net/tun: No such file or directory"),
    (["unshare", "--user", "--map-root-user", "sh", "-c",
      'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" "$@"'], [],
     "cannot create a user namespace"),
], ids=["unknown-runas", "no-tun", "userns-disabled"])
def test_setup_errors_leave_nothing_behind(topo: Topology, pasta: str, shared_tmp,
                                           wrapper: list[str], options: list[str],
                                           message: str) -> None:
    """One line saying what is wrong and what to do, a non-zero status, and
    no process, namespace, socket or pid file left."""
    pidfile = shared_tmp / "error.pid"
    netns_before = set(os.listdir("/run/netns"))
    result = topo.run_host(*wrapper, pasta, *options, "--config-net", "-P", str(pidfile),
                           "--", "sleep", "60")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not pidfile.exists()
    assert set(os.listdir("/run/netns")) == netns_before
    assert processes_naming(str(pidfile)) == []
    assert os.listdir(shared_tmp) == []


def test_passt_setup_error_removes_its_socket(topo: Topology, passt: str, shared_tmp) -> None:
    """passt mode: a failure after the UNIX socket was bound removes it, and
    QEMU's hint is printed only once the worker serves."""
    socket_path = shared_tmp / "guest.socket"
    result = topo.run_host(passt, "-f", "-s", str(socket_path), "-p", "/nonexistent/x.pcap")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "passt-sep: cannot open capture file /nonexistent/x.pcap: No such file or directory"]
    assert not socket_path.exists()


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_closed_standard_streams(topo: Topology, passt: str, pasta: str, shared_tmp,
                                 mode: str) -> None:
    """Started with stdin, stdout and stderr closed (``2>&-``, some
    supervisors): no socket or file of ours lands on those numbers, and
    the worker serves."""
    pidfile = shared_tmp / "closed.pid"
    args = ([passt, "-s", str(shared_tmp / "closed.socket")] if mode == "passt" else
            [pasta, "--config-net", "-P", str(pidfile), "--", "true"])
    result = topo.run_host("sh", "-c", 'exec "$0" "$@" 0<&- 1>&- 2>&-', *args,
                           *(["-P", str(pidfile)] if mode == "passt" else []))
    assert result.returncode == 0, result.stderr
    worker = int(pidfile.read_text())
    if mode == "passt":
        assert alive(worker)
        os.kill(worker, signal.SIGTERM)
        assert wait_gone(worker)
