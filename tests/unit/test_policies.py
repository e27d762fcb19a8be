"""The AppArmor profiles and the SELinux module in policies/ compile with
their own tools, allow the paths the broker's code opens, and leave the
worker (and the ns socket source) nothing but its fds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from passt_sep.broker import mac
from passt_sep.broker.jail import JAIL_MOUNT_POINT
from passt_sep.broker.namespaces import NETNS_RUN_DIR
from passt_sep.broker.tap import TUN_DEVICE
from passt_sep.system import sandbox

ROOT = Path(__file__).resolve().parents[2]
APPARMOR = ROOT / "policies" / "apparmor"
SELINUX = ROOT / "policies" / "selinux"
PROFILES = ("usr.bin.passt-sep", "usr.bin.pasta-sep")
ABSTRACTION = APPARMOR / "abstractions" / "passt-sep"
WORKER_ABSTRACTION = APPARMOR / "abstractions" / "passt-sep-worker"
# The features of a kernel with AppArmor, shipped with the parser: stacking
# (change_profile -> &...) is refused when compiling for a kernel without
KERNEL_FEATURES = Path("/usr/share/apparmor-features/features")
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
    features = ["--kernel-features", str(KERNEL_FEATURES)] if KERNEL_FEATURES.exists() else []
    return _run([parser, "--skip-kernel-load", "--skip-cache", *features, "-I", str(APPARMOR),
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
    # pasta's command: a named, scrubbed transition to a child profile
    assert "/{usr/,}{bin,sbin}/** Cx -> command," in pasta
    assert "profile command flags=(unconfined) {" in pasta
    # sockets: pyroute2's netlink socket is SOCK_DGRAM
    for rule in ("network inet stream,", "network inet6 stream,", "network inet dgram,",
                 "network inet6 dgram,", "network netlink dgram,", "network unix stream,"):
        assert rule in shared


def _profile_block(text: str, name: str) -> list[str]:
    """The rules of profile ``name`` in a policy file (up to its closing brace)."""
    rules = _rules(text)
    start = next(i for i, line in enumerate(rules) if line.startswith(f"profile {name} "))
    depth, block = 0, []
    for line in rules[start:]:
        depth += line.count("{") - line.count("}")
        block.append(line)
        if depth == 0:
            return block[1:-1]
    raise AssertionError(f"profile {name} is not closed")


WORKER_RULES = {
    "abi <abi/3.0>,",
    "network inet stream,", "network inet6 stream,", "network inet dgram,",
    "network inet6 dgram,", "network unix stream,",
    "capability net_bind_service,",
    "signal (receive),",
    "/dev/null rw,",
    "@{passt_sep_output} w,",
}


@pytest.mark.parametrize(("profile", "extra"), [
    ("passt-sep", set()),
    ("pasta-sep", {f"{TUN_DEVICE} rw,"}),
])
def test_apparmor_worker_profile_allows_only_its_fds(profile: str, extra: set[str]) -> None:
    """The worker's profile: its sockets, the files it was handed (AppArmor
    checks them again by path under a new label), no other path, no exec,
    no profile change, no mount, no capability but low ports."""
    text = (APPARMOR / f"usr.bin.{profile}").read_text()
    block = _profile_block(text, f"{profile}-worker")
    assert "include <abstractions/passt-sep-worker>" in block
    includes = {line for line in block if line.startswith("include ")}
    assert includes == {"include <abstractions/passt-sep-worker>",
                        f"include if exists <local/{profile}-worker>"}
    rules = set(_rules(WORKER_ABSTRACTION.read_text())) | (set(block) - includes)
    assert rules == WORKER_RULES | extra
    assert not any(re.search(r"x", rule.split()[-1]) for rule in rules
                   if rule.startswith(("/", "@")))
    header = next(line for line in _rules(text) if line.startswith(f"profile {profile}-worker "))
    assert header == f"profile {profile}-worker flags=(attach_disconnected) {{"


# Calls that take a path: with none of them, a profile's grant that only a
# path can exercise (w's unlink, below) cannot be used
PATH_SYSCALLS = {"open", "openat", "openat2", "creat", "unlink", "unlinkat", "rmdir", "rename",
                 "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "mkdir",
                 "mkdirat", "mknod", "mknodat", "truncate", "chmod", "fchmodat", "chown",
                 "fchownat", "lchown", "utimensat", "execve", "execveat", "chdir", "fchdir",
                 "name_to_handle_at", "open_by_handle_at"}


@pytest.mark.parametrize("profile", ["passt-sep", "pasta-sep"])
def test_apparmor_worker_profile_removes_nothing(profile: str) -> None:
    """No directory and no delete for the worker beyond what AppArmor ties to
    writing: the held files are written (w: AppArmor checks each write(2) on
    a handed-over fd as a plain write, O_APPEND or not, and ftruncate as
    write, so append would not do), never read, linked or locked; w's unlink
    has no path to act on, as the worker's seccomp filter allows no call
    that takes one, and it holds no directory."""
    text = (APPARMOR / f"usr.bin.{profile}").read_text()
    block = _profile_block(text, f"{profile}-worker")
    rules = [rule for rule in set(_rules(WORKER_ABSTRACTION.read_text())) | set(block)
             if rule.startswith(("/", "@", "owner ", "deny ", "audit "))]
    assert rules
    for rule in rules:
        path, mode = rule.rstrip(",").split()[-2:]
        assert not path.endswith("/") and "_dirs" not in path, rule
        assert set(mode) <= set("rw"), rule
        assert "r" not in mode or path in {"/dev/null", TUN_DEVICE}, rule
    assert "@{passt_sep_output} w," in rules
    with open(sandbox.allowlist_path("worker"), encoding="utf-8") as handle:
        worker_calls = set(sandbox.syscall_names(sandbox.parse_allowlist(handle.read())))
    assert worker_calls and not worker_calls & PATH_SYSCALLS


def test_apparmor_broker_keeps_its_failure_cleanup() -> None:
    """The broker opens each output file's directory and keeps the fd, to
    remove what it created if start-up fails (w covers the unlink), also
    after the jail closed: a disconnected path (attach_disconnected)."""
    shared = _rules(ABSTRACTION.read_text())
    assert "owner @{passt_sep_output} rw," in shared
    assert "@{passt_sep_output_dirs} r," in shared
    for profile in ("passt-sep", "pasta-sep"):
        header = next(line for line in _rules((APPARMOR / f"usr.bin.{profile}").read_text())
                      if line.startswith(f"profile {profile} "))
        assert "attach_disconnected" in header


@pytest.mark.parametrize("profile", ["passt-sep", "pasta-sep"])
def test_apparmor_broker_may_stack_the_worker_profile(profile: str) -> None:
    """The broker's child stacks the worker's profile (mac.py): that takes a
    change_profile rule for the stack, and writing its own attribute through
    the /proc it held across the jail."""
    block = _profile_block((APPARMOR / f"usr.bin.{profile}").read_text(), profile)
    worker = mac.WORKER_PROFILES[profile]
    assert f"change_profile -> &{worker}," in block
    assert [line for line in block if line.startswith("change_profile")] == \
        [f"change_profile -> &{worker},"]
    attr = "@{PROC}/@{pid}/task/@{tid}/attr/{apparmor/,}current rw,"
    assert attr in _rules(ABSTRACTION.read_text())


def test_apparmor_grants_no_unconfined_exec_and_no_blanket_writes() -> None:
    files = [ABSTRACTION, WORKER_ABSTRACTION, APPARMOR / "tunables" / "passt-sep",
             *(APPARMOR / profile for profile in PROFILES)]
    rules = [rule for path in files for rule in _rules(path.read_text())]
    assert not any(re.search(r"\b[pPcC]?[uU]x\b", rule) for rule in rules)
    shared = _rules(ABSTRACTION.read_text())
    writes = {rule for rule in shared
              if re.search(r"\s[rawlk]*w[rawlk]*,$", rule) and not rule.startswith("deny ")}
    assert writes == {"owner @{PROC}/@{pid}/setgroups w,", "owner @{PROC}/@{pid}/uid_map rw,",
                      "owner @{PROC}/@{pid}/gid_map w,",
                      "owner @{passt_sep_output} rw,",
                      "@{PROC}/@{pid}/task/@{tid}/attr/{apparmor/,}current rw,"}
    tunables = dict(line.split("=", 1) for line in
                    _rules((APPARMOR / "tunables" / "passt-sep").read_text()))
    output = tunables["@{passt_sep_output}"].split()
    assert "@{HOME}/**" not in output                      # only passt-sep's kinds of file there
    assert "@{HOME}/**.{pcap,log,pid,sock,socket}" in output


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
    assert "type_transition passt_sep_caller passt_sep_exec_t:process passt_sep_t;" in rules
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


_SET = r"(\{[^}]*\}|\S+)"
_ALLOW = re.compile(rf"allow {_SET} {_SET}:{_SET} {_SET};")


def _names(field: str) -> set[str]:
    return set(field.strip("{}").split())


def _allows(rules: list[str]) -> list[tuple[set[str], ...]]:
    """(sources, targets, classes, permissions) of every allow rule."""
    found = []
    for rule in rules:
        match = _ALLOW.fullmatch(rule)
        if match:
            found.append(tuple(_names(field) for field in match.groups()))
        else:
            assert not rule.startswith("allow "), rule
    return found


def _optional_blocks(rules: list[str]) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] | None = None
    depth = 0
    for line in rules:
        if line == "optional {":
            current, depth = [], 0
        if current is not None:
            current.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0:
                blocks.append(current)
                current = None
    return blocks


@pytest.mark.parametrize(("caller", "role"), [
    ("unconfined_t", "unconfined_r"), ("staff_t", "staff_r"), ("user_t", "user_r"),
    ("virtd_t", "system_r"), ("virtqemud_t", "system_r"), ("container_runtime_t", "system_r"),
])
def test_selinux_callers_enter_the_domain(caller: str, role: str) -> None:
    """libvirt, Podman and the user's sessions start passt-sep: each enters
    passt_sep_t, from an optional block so that the module links without
    the module that defines the caller."""
    rules = _rules((SELINUX / "passt-sep.te").read_text())
    block = next(block for block in _optional_blocks(rules)
                 if f"typeattribute {caller} passt_sep_caller;" in block)
    assert f"type {caller};" in block
    assert f"role {role} types {{ passt_sep_t passt_sep_worker_t }};" in block
    assert "type_transition passt_sep_caller passt_sep_exec_t:process passt_sep_t;" in rules
    assert ({"passt_sep_caller"}, {"passt_sep_t"}, {"process"}, {"transition"}) in _allows(rules)


def test_selinux_broker_switches_to_the_worker_domain() -> None:
    rules = _rules((SELINUX / "passt-sep.te").read_text())
    assert (mac.DOMAIN, mac.WORKER_DOMAIN) == ("passt_sep_t", "passt_sep_worker_t")
    assert "type passt_sep_worker_t;" in rules
    allows = _allows(rules)
    assert ({"passt_sep_t"}, {"self"}, {"process"}, {"setcurrent"}) in allows
    assert ({"passt_sep_t"}, {"passt_sep_worker_t"}, {"process"}, {"dyntransition"}) in allows


FILE_CLASSES = {"file", "dir", "lnk_file", "chr_file", "blk_file", "sock_file", "fifo_file"}
REMOVALS = {"unlink", "remove_name", "rmdir", "rename", "reparent"}
WORKER_FORBIDDEN = {"open", "create", "execute", "execute_no_trans", "entrypoint", "map",
                    "transition", "dyntransition", "setcurrent", "mounton", "mount", "add_name",
                    "link", "rename", "ioctl", "relabelfrom", "relabelto", "setattr", "read",
                    *REMOVALS}


def test_selinux_worker_domain_holds_only_its_fds() -> None:
    """No open, create, read, remove, exec, transition or mount for the
    worker: files only written through held fds (the tap also read), no
    directory at all."""
    rules = _rules((SELINUX / "passt-sep.te").read_text())
    worker = [(targets, classes, perms) for sources, targets, classes, perms in _allows(rules)
              if "passt_sep_worker_t" in sources]
    assert worker
    for targets, classes, perms in worker:
        if classes & FILE_CLASSES - {"chr_file", "fifo_file"}:
            assert not perms & WORKER_FORBIDDEN, (targets, classes, perms)
            assert not targets & {"bin_t", "shell_exec_t", "lib_t", "usr_t", "etc_t", "proc_t"}
        if classes & {"chr_file", "fifo_file"}:
            assert not perms & (WORKER_FORBIDDEN - {"read", "ioctl"}), (targets, perms)
        if "process" in classes:
            assert not perms & {"transition", "dyntransition", "setcurrent", "execmem"}
        if classes & {"capability", "cap_userns"}:
            assert perms == {"net_bind_service"}
    assert not any(perms & REMOVALS for _targets, _classes, perms in worker)
    assert not any("dir" in classes for _targets, classes, _perms in worker)
    assert not any(line.startswith("type_transition passt_sep_worker_t") for line in rules)


def test_selinux_only_the_broker_removes_and_only_runtime_files() -> None:
    """The broker removes the files it created when start-up fails (and
    passt's stale socket): unlink and remove_name for passt_sep_t alone, on
    the runtime files' types; the worker's capture and log are written."""
    rules = _rules((SELINUX / "passt-sep.te").read_text())
    allows = _allows(rules)
    removals = [(sources, targets, perms & REMOVALS) for sources, targets, _classes, perms
                in allows if perms & REMOVALS]
    assert removals
    for sources, targets, perms in removals:
        assert sources == {"passt_sep_t"}, (sources, targets, perms)
        assert perms <= {"unlink", "remove_name"}
        assert targets <= {"tmp_t", "user_tmp_t", "user_runtime_t"}, targets
    assert any("unlink" in perms and "user_tmp_t" in targets for _, targets, perms in removals)
    worker_files = {frozenset(perms) for sources, targets, classes, perms in allows
                    if sources == {"passt_sep_worker_t"} and classes == {"file"}}
    assert worker_files == {frozenset({"write", "append", "getattr"})}


def test_selinux_removes_nothing_in_home_directories() -> None:
    rules = _rules((SELINUX / "passt-sep.te").read_text())
    for _sources, targets, _classes, perms in _allows(rules):
        if targets & {"user_home_t", "user_home_dir_t"}:
            assert not perms & {"unlink", "remove_name", "rename"}, (targets, perms)
    # pasta's command: only the broker's domain executes programs
    execs = [sources for sources, targets, classes, perms in _allows(rules)
             if "file" in classes and "execute" in perms and targets & {"bin_t", "shell_exec_t"}]
    assert execs and all(sources == {"passt_sep_t"} for sources in execs)
