"""The broker's output files (pid, capture, log) on a real file system:
how they are opened, and how a failed start takes back what it made."""

from __future__ import annotations

import os
import stat

import pytest

from passt_sep.broker.sockets import SetupError, open_output


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_file_is_private_whatever_the_umask(tmp_path) -> None:
    path = tmp_path / "x.pcap"
    previous = os.umask(0)
    try:
        output = open_output(str(path), "--pcap", "capture file", os.O_TRUNC)
    finally:
        os.umask(previous)
    os.write(output.fd, b"data")
    os.close(output.fd)
    output.release()
    assert output.created
    assert _mode(path) == 0o600 and path.read_bytes() == b"data"


def test_an_existing_file_keeps_its_mode_and_is_appended_to(tmp_path) -> None:
    path = tmp_path / "x.log"
    path.write_text("earlier\n")
    os.chmod(path, 0o640)
    output = open_output(str(path), "--log-file", "log file", os.O_APPEND)
    os.write(output.fd, b"later\n")
    os.close(output.fd)
    output.release()
    assert not output.created
    assert _mode(path) == 0o640 and path.read_text() == "earlier\nlater\n"


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symbolic_link_is_refused_in_words(tmp_path, dangling: bool) -> None:
    target = tmp_path / "target"
    if not dangling:
        target.write_text("keep\n")
    link = tmp_path / "x.pid"
    os.symlink(target, link)
    with pytest.raises(SetupError) as error:
        open_output(str(link), "--pid-file", "pid file", os.O_TRUNC)
    assert str(error.value) == f"--pid-file {link}: is a symbolic link, refusing to follow it"
    assert dangling != target.exists()
    if not dangling:
        assert target.read_text() == "keep\n"
    assert sorted(os.listdir(tmp_path)) == sorted(["x.pid"] + ([] if dangling else ["target"]))


@pytest.mark.parametrize("path, reason", [("/", "Is a directory"),
                                          ("/nonexistent/x.pid", "No such file or directory")])
def test_a_path_that_cannot_be_a_file_is_one_clear_error(path: str, reason: str) -> None:
    with pytest.raises(SetupError) as error:
        open_output(path, "--pid-file", "pid file", os.O_TRUNC)
    assert str(error.value) == f"cannot open pid file {path}: {reason}"


def test_removal_goes_through_the_directory_not_the_path(tmp_path) -> None:
    """After the jail the path means nothing: here the directory has moved."""
    before = tmp_path / "before"
    before.mkdir()
    output = open_output(str(before / "x.pid"), "--pid-file", "pid file", os.O_TRUNC)
    os.close(output.fd)
    os.rename(before, tmp_path / "after")
    output.remove()
    assert os.listdir(tmp_path / "after") == []


def test_removal_spares_another_file_that_took_the_name(tmp_path) -> None:
    path = tmp_path / "x.pcap"
    output = open_output(str(path), "--pcap", "capture file", os.O_TRUNC)
    os.close(output.fd)
    os.unlink(path)
    path.write_text("someone else's\n")
    output.remove()
    assert path.read_text() == "someone else's\n"
