"""The AppArmor profiles and the SELinux module in policies/ compile with
their own tools, and allow the paths the broker's code opens."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from passt_sep.broker.jail import JAIL_MOUNT_POINT
from passt_sep.broker.namespaces import NETNS_RUN_DIR
from passt_sep.broker.tap import TUN_DEVICE

ROOT = Path(__file__).resolve().parents[2]
APPARMOR = ROOT / "policies" / "apparmor"
SELINUX = ROOT / "policies" / "selinux"
PROFILES = ("usr.bin.passt-sep", "usr.bin.pasta-sep")
ABSTRACTION = APPARMOR / "abstractions" / "passt-sep"
MODULE = "passt_sep"           # checkmodule wants the output named after it


def _tool(name: str) -> str:
    """The tool's path, or skip: the policies cannot be checked without it."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    path = shutil.which(name, path=search)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt install apparmor checkpolicy "
                    "semodule-utils)")
    return path


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def _parse_apparmor(profile: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Compile without loading into the kernel or touching the cache; our
    abstractions and tunables are found first (-I), the system's
    <tunables/global> and <abstractions/base> in /etc/apparmor.d."""
    parser = _tool("apparmor_parser")
    return _run([parser, "--skip-kernel-load", "--skip-cache", "-I", str(APPARMOR),
                 "--ofile", str(out), str(profile)])


def _rules(text: str) -> list[str]:
    """Policy lines without comments and surrounding blanks."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [" ".join(line.split()) for line in lines if line]


# -- AppArmor -----------------------------------------------------------------------

@pytest.mark.parametrize("profile", PROFILES)
def test_apparmor_profile_compiles(profile: str, tmp_path: Path) -> None:
    out = tmp_path / f"{profile}.bin"
    result = _parse_apparmor(APPARMOR / profile, out)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0


def test_apparmor_parser_rejects_a_broken_profile(tmp_path: Path) -> None:
    """The compile test can fail: a profile with a bad rule does not parse."""
    broken = tmp_path / "usr.bin.passt-sep"
    text = (APPARMOR / "usr.bin.passt-sep").read_text()
    broken.write_text(text.replace("include <abstractions/passt-sep>",
                                   "include <abstractions/passt-sep>\n  /dev/net/tun rwq,"))
    result = _parse_apparmor(broken, tmp_path / "broken.bin")
    assert result.returncode != 0


def test_apparmor_profiles_attach_to_the_console_scripts() -> None:
    tunables = dict(line.split("=", 1) for line in
                    _rules((APPARMOR / "tunables" / "passt-sep").read_text()))
    assert {"/usr", "/usr/local"} <= set(tunables["@{passt_sep_prefix}"].split())
    for profile, script in zip(PROFILES, ("passt-sep", "pasta-sep"), strict=True):
        rules = _rules((APPARMOR / profile).read_text())
        assert "include <tunables/global>" in rules
        assert "include <tunables/passt-sep>" in rules
        assert "include <abstractions/passt-sep>" in rules
        header = next(line for line in rules if line.startswith("profile "))
        assert f"@{{passt_sep_prefix}}/bin/{script} " in header
        assert "attach_disconnected" in header


def test_apparmor_allows_what_the_broker_opens() -> None:
    shared = _rules(ABSTRACTION.read_text())
    pasta = _rules((APPARMOR / "usr.bin.pasta-sep").read_text())
    # the tap (tap.py), pasta only
    assert f"{TUN_DEVICE} rw," in pasta
    assert not any(line.startswith(TUN_DEVICE) for line in shared)
    # listening ports of each side (sockets.proc_net_tables)
    assert "@{PROC}/@{pid}/net/{tcp,tcp6,udp,udp6} r," in shared
    # the jail (jail.close): tmpfs on the mount point, pivot_root, detach
    jail = JAIL_MOUNT_POINT.rstrip("/") + "/"
    assert f"pivot_root oldroot={jail} {jail}," in shared
    assert any(line.startswith("mount fstype=tmpfs") and line.endswith(f"-> {jail},")
               for line in shared)
    assert "umount /," in shared
    # --netns NAME (namespaces.open_existing)
    assert f"@{{run}}/{NETNS_RUN_DIR.removeprefix('/run/')}/* r," in pasta
    # pasta's command runs outside the profile
    assert "/{usr/,}{bin,sbin}/** Ux," in pasta
    # sockets: pyroute2's netlink socket is SOCK_DGRAM
    for rule in ("network inet stream,", "network inet6 stream,", "network inet dgram,",
                 "network inet6 dgram,", "network netlink dgram,", "network unix stream,"):
        assert rule in shared


# -- SELinux ------------------------------------------------------------------------

def test_selinux_module_compiles_and_packages(tmp_path: Path) -> None:
    checkmodule = _tool("checkmodule")
    semodule_package = _tool("semodule_package")
    mod = tmp_path / f"{MODULE}.mod"
    package = tmp_path / f"{MODULE}.pp"
    result = _run([checkmodule, "-M", "-m", "-o", str(mod), str(SELINUX / "passt-sep.te")])
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run([semodule_package, "-o", str(package), "-m", str(mod),
                   "-f", str(SELINUX / "passt-sep.fc")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert package.stat().st_size > mod.stat().st_size > 0


def test_checkmodule_rejects_a_broken_module(tmp_path: Path) -> None:
    """The compile test can fail: a rule naming an undeclared type does not
    compile."""
    checkmodule = _tool("checkmodule")
    broken = tmp_path / "passt-sep.te"
    broken.write_text((SELINUX / "passt-sep.te").read_text()
                      + "allow passt_sep_t no_such_type_t:file read;\n")
    result = _run([checkmodule, "-M", "-m", "-o", str(tmp_path / f"{MODULE}.mod"), str(broken)])
    assert result.returncode != 0


def test_selinux_module_defines_the_domain_and_allows_the_tap() -> None:
    rules = _rules((SELINUX / "passt-sep.te").read_text())
    assert "module passt_sep 1.0;" in rules
    assert "type passt_sep_t;" in rules
    assert "type passt_sep_exec_t;" in rules
    assert "type_transition unconfined_t passt_sep_exec_t:process passt_sep_t;" in rules
    assert any(re.match(r"allow passt_sep_t tun_tap_device_t:chr_file \{[^}]*\bopen\b", line)
               for line in rules)
    assert any(line.startswith("allow passt_sep_t proc_net_t:file") for line in rules)
    assert "allow passt_sep_t self:tun_socket create;" in rules


def test_selinux_file_contexts_label_the_console_scripts() -> None:
    contexts = {}
    for line in _rules((SELINUX / "passt-sep.fc").read_text()):
        path, kind, context = line.split()
        assert kind == "--"
        contexts[path] = context
    for script in ("passt-sep", "pasta-sep"):
        assert contexts[f"/usr/bin/{script}"] == "system_u:object_r:passt_sep_exec_t:s0"
