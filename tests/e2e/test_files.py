"""The paths the broker writes to: the pid, capture and log files and the
passt socket.  Run as root, which could otherwise write through a link or
remove what it likes: a symbolic link is refused, a file made here is
0600, a failed start leaves nothing it made, and the worker holds no
directory (so no path-taking call can reach outside its jail)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess

import pytest
from procstat import wait_gone

from topology import Topology

SECRET = "root only\n"






def _secret(tmp_path) -> os.PathLike:
    """A file only root may read or write, outside the directory under test."""
    target = tmp_path / "secret"
    target.write_text(SECRET)
    os.chmod(target, 0o600)
    return target


def _unchanged(target, before: os.stat_result) -> bool:
    after = os.stat(target)
    return (target.read_text() == SECRET and stat.S_IMODE(after.st_mode) == 0o600
            and after.st_mtime_ns == before.st_mtime_ns)


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _daemon_args(mode: str, shared_tmp, netns: str) -> list[str]:
    if mode == "passt":
        return ["-s", str(shared_tmp / "guest.socket")]
    return ["--config-net", "--netns", f"/run/netns/{netns}"]


@pytest.fixture
def netns(topo: Topology):
    name = f"{topo.host}-fl"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_no_worker_fd_is_a_directory(topo: Topology, passt: str, pasta: str, shared_tmp,
                                     netns: str, mode: str) -> None:
    """With every file option: no fd of the worker is a directory (the pid
    file's directory used to be one, and unlinkat through it reached
    outside the jail); SIGTERM ends the worker and the pid file stays."""
    pidfile = shared_tmp / "worker.pid"
    result = topo.run_host(passt if mode == "passt" else pasta, "--quiet",
                           *_daemon_args(mode, shared_tmp, netns), "-P", str(pidfile),
                           "-p", str(shared_tmp / "x.pcap"), "-l", str(shared_tmp / "x.log"))
    assert result.returncode == 0, result.stderr
    worker = int(pidfile.read_text())
    try:
        fds = os.listdir(f"/proc/{worker}/fd")
        kinds = {fd: os.stat(f"/proc/{worker}/fd/{fd}").st_mode for fd in fds}
        assert len(kinds) >= 5         # stdio, the guest link, the loop's own...
        directories = [os.readlink(f"/proc/{worker}/fd/{fd}") for fd, mode_ in kinds.items()
                       if stat.S_ISDIR(mode_)]
        assert directories == []
    finally:
        os.kill(worker, signal.SIGTERM)
    assert wait_gone(worker)
    assert pidfile.read_text() == f"{worker}\n"


@pytest.mark.parametrize("option, long", [("-p", "--pcap"), ("-P", "--pid-file"),
                                          ("-l", "--log-file")])
def test_output_path_that_is_a_symbolic_link_is_refused(topo: Topology, passt: str,
                                                        shared_tmp, tmp_path, option: str,
                                                        long: str) -> None:
    """A link planted where a file is to be written, pointing at a file only
    root may touch: refused in words, nothing written through it, and the
    files this run had made already are gone again, but for the log file,
    which holds the reason."""
    target = _secret(tmp_path)
    before = os.stat(target)
    link = shared_tmp / "planted"
    os.symlink(target, link)
    others = {"-p": shared_tmp / "made.pcap", "-P": shared_tmp / "made.pid",
              "-l": shared_tmp / "made.log"}
    others[option] = link
    files = [arg for flag, path in others.items() for arg in (flag, str(path))]
    result = topo.run_host(passt, "-f", "-s", str(shared_tmp / "guest.socket"), *files)
    assert result.returncode == 1
    assert _one_line(result) == (f"passt-sep: {long} {link}: is a symbolic link, "
                                 "refusing to follow it")
    assert _unchanged(target, before)
    assert os.readlink(link) == str(target)
    # the log file is opened first and kept, with the reason in it
    kept = ["made.log", "planted"] if option != "-l" else ["planted"]
    assert sorted(os.listdir(shared_tmp)) == kept


def test_pasta_refuses_a_symbolic_link_too(topo: Topology, pasta: str, shared_tmp,
                                           tmp_path, netns: str) -> None:
    target = _secret(tmp_path)
    before = os.stat(target)
    link = shared_tmp / "x.pcap"
    os.symlink(target, link)
    result = topo.run_host(pasta, "--config-net", "--netns", f"/run/netns/{netns}",
                           "-p", str(link))
    assert result.returncode == 1
    assert _one_line(result) == (f"pasta-sep: --pcap {link}: is a symbolic link, "
                                 "refusing to follow it")
    assert _unchanged(target, before)


def test_failed_start_keeps_files_it_did_not_make(topo: Topology, passt: str,
                                                  shared_tmp) -> None:
    """A log file that was there (libvirt makes its own) keeps its content,
    and gets the reason, when start-up fails; the capture file this run
    made is removed."""
    log = shared_tmp / "kept.log"
    log.write_text("earlier\n")
    result = topo.run_host(passt, "-f", "-s", str(shared_tmp / "guest.socket"),
                           "-l", str(log), "-p", str(shared_tmp / "made.pcap"),
                           "-P", "/nonexistent/x.pid")
    assert result.returncode == 1
    assert _one_line(result) == ("passt-sep: cannot open pid file /nonexistent/x.pid: "
                                 "No such file or directory")
    earlier, header, error = log.read_text().splitlines()
    assert earlier == "earlier" and header.startswith("passt-sep ")
    assert error.endswith(": ERROR:   cannot open pid file /nonexistent/x.pid: "
                          "No such file or directory")
    assert sorted(os.listdir(shared_tmp)) == ["kept.log"]


def test_created_files_are_private(topo: Topology, passt: str, shared_tmp) -> None:
    """0600 whatever the umask allows; written through, and the pid file
    names the worker."""
    paths = {name: shared_tmp / name for name in ("x.pcap", "x.pid", "x.log")}
    result = topo.run_host("sh", "-c", 'umask 0 && exec "$@"', "sh", passt, "--quiet",
                           "-s", str(shared_tmp / "guest.socket"), "-p", str(paths["x.pcap"]),
                           "-P", str(paths["x.pid"]), "-l", str(paths["x.log"]))
    assert result.returncode == 0, result.stderr
    worker = int(paths["x.pid"].read_text())
    try:
        for path in paths.values():
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600, path
            assert stat.S_ISREG(os.lstat(path).st_mode), path
        assert paths["x.pcap"].read_bytes()[:4] == bytes.fromhex("d4c3b2a1")
    finally:
        os.kill(worker, signal.SIGTERM)
    assert wait_gone(worker)


@pytest.mark.parametrize("kind", ["regular file", "directory", "symbolic link"])
def test_socket_path_that_is_not_a_socket_is_left_alone(topo: Topology, passt: str,
                                                        shared_tmp, tmp_path,
                                                        kind: str) -> None:
    """``-s PATH`` replaces only a stale socket: anything else is named in
    the error and stays as it was (a regular file used to be removed:
    connecting to it is refused just as to a dead socket)."""
    path = shared_tmp / "guest.socket"
    target = _secret(tmp_path)
    before = os.stat(target)
    if kind == "regular file":
        path.write_text(SECRET)
    elif kind == "directory":
        path.mkdir()
    else:
        os.symlink(target, path)
    result = topo.run_host(passt, "-f", "-s", str(path))
    assert result.returncode == 1
    assert _one_line(result) == (f"passt-sep: --socket {path}: a {kind} is there, not a "
                                 "socket: refusing to replace it (remove it or pick another "
                                 "path)")
    if kind == "regular file":
        assert path.read_text() == SECRET
    elif kind == "directory":
        assert path.is_dir()
    else:
        assert os.readlink(path) == str(target)
    assert _unchanged(target, before)


def test_a_stale_socket_is_still_replaced(topo: Topology, passt: str, shared_tmp) -> None:
    """What the removal is for: a socket nobody listens on any more."""
    path = shared_tmp / "guest.socket"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    pidfile = shared_tmp / "worker.pid"
    result = topo.run_host(passt, "--quiet", "-s", str(path), "-P", str(pidfile))
    assert result.returncode == 0, result.stderr
    worker = int(pidfile.read_text())
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(path))
        probe.close()
    finally:
        os.kill(worker, signal.SIGTERM)
    assert wait_gone(worker)
