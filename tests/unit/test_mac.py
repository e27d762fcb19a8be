"""The broker's switch of the worker (and ns socket source) into its own
AppArmor profile or SELinux domain: which string goes to which attribute,
tried on a directory laid out like /proc, and on this kernel's /proc."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

from passt_sep.broker import mac, worker_start
from passt_sep.broker import main as broker_main


def _fake_proc(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- the decision ----------------------------------------------------------------------

@pytest.mark.parametrize(("current", "written"), [
    ("pasta-sep (enforce)\n", b"stack pasta-sep-worker"),
    ("passt-sep (complain)\n", b"stack passt-sep-worker"),
    ("passt-sep (enforce)", b"stack passt-sep-worker"),
])
def test_apparmor_stacks_the_worker_profile_on_ours(current: str, written: bytes) -> None:
    assert mac.worker_label("apparmor", current) == written


@pytest.mark.parametrize("current", [
    "unconfined\n",                              # python3 -m passt_sep: nothing attached
    "firefox (enforce)\n",                       # someone else's profile
    "pasta-sep//&pasta-sep-worker (enforce)\n",  # already stacked
    "pasta-sep//command (unconfined)\n",         # pasta's command
    "",
])
def test_apparmor_leaves_other_labels_alone(current: str) -> None:
    assert mac.worker_label("apparmor", current) is None


@pytest.mark.parametrize(("current", "written"), [
    ("unconfined_u:unconfined_r:passt_sep_t:s0-s0:c0.c1023\0",
     b"unconfined_u:unconfined_r:passt_sep_worker_t:s0-s0:c0.c1023"),
    ("system_u:system_r:passt_sep_t:s0\n", b"system_u:system_r:passt_sep_worker_t:s0"),
    ("staff_u:staff_r:passt_sep_t", b"staff_u:staff_r:passt_sep_worker_t"),
])
def test_selinux_switches_to_the_worker_domain(current: str, written: bytes) -> None:
    assert mac.worker_label("selinux", current) == written


@pytest.mark.parametrize("current", [
    "unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023",
    "system_u:system_r:passt_sep_worker_t:s0",
    "system_u:system_r:container_runtime_t:s0",
    "pasta-sep (enforce)",
])
def test_selinux_leaves_other_domains_alone(current: str) -> None:
    assert mac.worker_label("selinux", current) is None


# -- prepare and enter, on a directory laid out like /proc ---------------------------

def test_apparmor_switch_goes_to_the_apparmor_attribute(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {mac.APPARMOR_ATTR: "pasta-sep (enforce)\n",
                                 mac.LEGACY_ATTR: "pasta-sep (enforce)\n"})
    confinement = mac.prepare(str(proc))
    assert confinement is not None
    assert confinement.attr == mac.APPARMOR_ATTR
    mac.enter(confinement)
    assert (proc / mac.APPARMOR_ATTR).read_bytes().startswith(b"stack pasta-sep-worker")
    assert (proc / mac.LEGACY_ATTR).read_text() == "pasta-sep (enforce)\n"
    with pytest.raises(OSError):                 # the held /proc is let go
        os.fstat(confinement.proc_fd)


def test_apparmor_without_its_own_attribute_uses_the_legacy_one(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {mac.LEGACY_ATTR: "passt-sep (enforce)\n"})
    confinement = mac.prepare(str(proc))
    assert confinement is not None
    assert (confinement.attr, confinement.value) == (mac.LEGACY_ATTR, b"stack passt-sep-worker")
    mac.release(confinement)


def test_selinux_switch_is_a_setcon(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {mac.LEGACY_ATTR: "system_u:system_r:passt_sep_t:s0\0"})
    confinement = mac.prepare(str(proc))
    assert confinement is not None
    mac.enter(confinement)
    written = (proc / mac.LEGACY_ATTR).read_bytes()
    assert written.startswith(b"system_u:system_r:passt_sep_worker_t:s0")


@pytest.mark.parametrize("files", [
    {},                                                              # no LSM attribute
    {mac.APPARMOR_ATTR: "unconfined\n", mac.LEGACY_ATTR: "system_u:system_r:passt_sep_t:s0"},
    {mac.LEGACY_ATTR: "unconfined_u:unconfined_r:unconfined_t:s0"},
])
def test_nothing_to_do_holds_nothing(tmp_path: Path, files: dict[str, str]) -> None:
    before = _open_fds()
    assert mac.prepare(str(_fake_proc(tmp_path, files))) is None
    assert _open_fds() == before


def test_no_lsm_on_this_kernel_means_no_switch() -> None:
    """Where neither AppArmor nor SELinux confines this process, the real
    /proc leads to nothing (and holds nothing)."""
    for attr in (mac.APPARMOR_ATTR, mac.LEGACY_ATTR):
        try:
            current = Path("/proc", attr).read_text()
        except OSError:
            continue
        if mac.worker_label("apparmor", current) or mac.worker_label("selinux", current):
            pytest.skip(f"this process runs under passt-sep's own label: {current!r}")
    before = _open_fds()
    assert mac.prepare() is None
    assert _open_fds() == before


def test_an_unknown_target_is_skipped_silently(tmp_path: Path,
                                               capfd: pytest.CaptureFixture) -> None:
    held = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    mac.enter(mac.Confinement("no-such-attr", b"stack pasta-sep-worker", held))
    assert capfd.readouterr().err == ""
    with pytest.raises(OSError):
        os.fstat(held)


def test_a_refused_switch_ends_the_child(tmp_path: Path) -> None:
    """Any other error: the child must not run with the broker's label."""
    (tmp_path / "attr").mkdir()                  # EISDIR, as a stand-in for EPERM
    held = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(write_end, 2)
        mac.enter(mac.Confinement("attr", b"stack pasta-sep-worker", held))
        os._exit(0)
    os.close(write_end)
    os.close(held)
    message = os.read(read_end, 4096)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    assert b"cannot confine the worker (stack pasta-sep-worker)" in message


def test_enter_without_confinement_does_nothing() -> None:
    before = _open_fds()
    mac.enter(None)
    mac.release(None)
    assert _open_fds() == before


# -- the call sites ------------------------------------------------------------------------

def _before(source: str, first: str, then: str) -> bool:
    return -1 < source.index(first) < source.index(then)


def test_the_worker_enters_its_confinement_before_its_own_code() -> None:
    source = inspect.getsource(worker_start.start_worker)
    assert _before(source, "mac.enter(confinement)", "worker_main.run(")
    assert "mac.release(confinement)" in source


def test_the_broker_prepares_while_proc_is_reachable() -> None:
    run = inspect.getsource(broker_main.Broker._run)
    assert _before(run, "mac.prepare()", "jail.close(")
    assert "confinement=confinement" in run
    source = inspect.getsource(broker_main.Broker._ns_source)
    assert _before(source, "mac.prepare()", "jail.close(identity)")
    assert _before(source, "mac.enter(confinement)", "source_filter.load()")
