"""The AppArmor profiles loaded into the running kernel: pasta-sep runs under
its profile, and its worker under the worker's profile stacked on it.

Skipped where AppArmor is not enabled (the kernel has no AppArmor, or it is
not among the active LSMs); the profiles are unloaded afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPARMOR = ROOT / "policies" / "apparmor"
PROFILES = [APPARMOR / "usr.bin.passt-sep", APPARMOR / "usr.bin.pasta-sep"]


def _apparmor_enabled() -> bool:
    try:
        return Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    except OSError:
        return False


def _label(pid: int) -> str:
    for attr in ("attr/apparmor/current", "attr/current"):
        try:
            return Path(f"/proc/{pid}/{attr}").read_text().strip()
        except OSError:
            continue
    return ""


@pytest.fixture
def loaded():
    if not _apparmor_enabled():
        pytest.skip("AppArmor is not enabled in this kernel")
    parser = shutil.which("apparmor_parser", path="/usr/sbin:/sbin:/usr/bin")
    if parser is None:
        pytest.skip("apparmor_parser is not installed")
    load = subprocess.run([parser, "-r", "--skip-cache", "-I", str(APPARMOR), *map(str, PROFILES)],
                          capture_output=True, text=True, check=False)
    assert load.returncode == 0, load.stderr
    try:
        yield
    finally:
        subprocess.run([parser, "-R", "-I", str(APPARMOR), *map(str, PROFILES)],
                       capture_output=True, check=False)


def _pids_named(comm: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                found.append(int(pid))
        except OSError:
            continue                                    # gone meanwhile
    return found


def _wait_for_pid(path: Path, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        time.sleep(0.05)
    raise TimeoutError(f"no pid in {path}")


def test_pasta_worker_runs_under_the_worker_profile(loaded, pasta: str, shared_tmp) -> None:
    pidfile = shared_tmp / "pid"
    proc = subprocess.Popen([pasta, "--config-net", "-P", str(pidfile), "-q", "--",
                             "sleep", "30"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        worker = _wait_for_pid(pidfile)
        assert _label(proc.pid).startswith("pasta-sep (")
        assert _label(worker).startswith("pasta-sep//&pasta-sep-worker (")
        # the command left the broker's profile through the named child profile
        labels = [_label(pid) for pid in _pids_named("sleep")]
        assert any(label.startswith("pasta-sep//command") for label in labels), labels
    finally:
        proc.kill()
        proc.wait()
