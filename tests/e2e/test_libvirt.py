"""libvirt runs passt-sep as its passt: ``<interface type='user'>`` with
``<backend type='passt'/>`` on a real libvirt session daemon and QEMU.

An unprivileged ``qemu:///session`` daemon (uid nobody, HOME and
XDG_RUNTIME_DIR in a temporary directory) runs in the topology's "host"
namespace, so the guest's traffic only reaches the "remote" one.  libvirt
looks ``passt`` up in its daemon's PATH: a directory whose ``passt`` is a
link to the venv's passt-sep comes first.  The guest is tests/qemu_guest.py's
(TCG: the daemon's uid has no /dev/kvm).

libvirt 11.3 starts, per interface (domain log, "Starting external device:
passt")::

    passt --one-off --socket $XDG_RUNTIME_DIR/libvirt/qemu/run/passt/<id>-<name>-net0.socket
          --pid $XDG_RUNTIME_DIR/libvirt/qemu/run/passt/<id>-<name>-net0-passt.pid
          --log-file <logFile> --tcp-ports 127.0.0.1/10080:8080

(also ``--mtu``, ``--interface``, ``--address``/``--netmask`` and
``--udp-ports`` from other elements; no ``--mac-addr``), waits
for it to exit 0 (passt-sep then serves in the background), then gives QEMU
``-netdev stream,server=off,reconnect-ms=5000`` on the socket.  On destroy or
shutdown it kills the pid in the pid file and unlinks the pid file and the
socket.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import qemu_guest
from peers import digest_of

from topology import GW_ADDR4, HOST_ADDR4, PREFIX4, Topology

UID = 65534                      # nobody: the daemon, QEMU and passt-sep run as it
DOMAIN = "passt-sep-vm"
UUID = "6b1f0a52-7c3e-4d1a-9a53-2f7c1e0b5a11"  # fixed: each define updates the same domain
MAC = "52:54:00:12:34:56"
FWD_HOST_PORT, FWD_GUEST_PORT = 10080, 8080
SIZE, SEED = 8 << 20, 21
GUEST_TIMEOUT = 150              # one boot, all its checks; TCG here: about 10 s
LIBVIRT_MIN = (10, 0)            # passt works from here (Debian 12's 9.0 has it disabled)

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <interface type='user'>
      <backend type='passt' logFile='{log_file}'/>
      <mac address='{mac}'/>
      <model type='virtio'/>
      <portForward proto='tcp' address='127.0.0.1'>
        <range start='{fwd_host}' to='{fwd_guest}'/>
      </portForward>
    </interface>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
  </devices>
</domain>
"""


def libvirt_version() -> tuple[int, ...] | None:
    """The installed libvirtd's version; None without libvirtd or virsh."""
    if not (shutil.which("libvirtd") and shutil.which("virsh")):
        return None
    out = subprocess.run(["libvirtd", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"(\d+)\.(\d+)", out)
    return tuple(int(n) for n in match.groups()) if match else None


@dataclasses.dataclass
class Session:
    """A libvirt session daemon of uid UID, all its state under ``root``."""

    topo: Topology
    root: pathlib.Path
    passt: str                   # what the daemon runs as "passt"
    daemon: subprocess.Popen | None = None

    @property
    def env(self) -> list[str]:
        path = f"{self.root / 'bin'}:/usr/bin:/bin:/usr/sbin:/sbin"
        return ["env", "-i", f"HOME={self.root / 'home'}", f"PATH={path}", "LC_ALL=C",
                f"XDG_RUNTIME_DIR={self.root / 'run'}"]

    @property
    def passt_dir(self) -> pathlib.Path:
        return self.root / "run" / "libvirt" / "qemu" / "run" / "passt"

    @property
    def domain_log(self) -> pathlib.Path:
        return self.root / "home" / ".cache" / "libvirt" / "qemu" / "log" / f"{DOMAIN}.log"

    def start(self) -> None:
        """The ``passt`` link, QEMU's console in a file of its own (no
        virtlogd), then the daemon, in the host namespace."""
        for name in ("home", "run", "bin", "home/.config/libvirt"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        (self.root / "bin" / "passt").symlink_to(self.passt)
        (self.root / "home/.config/libvirt/qemu.conf").write_text('stdio_handler = "file"\n')
        os.chown(self.root, UID, UID)   # the console and logFile are made here
        for path in (self.root / "home", self.root / "run"):
            for directory, _, files in os.walk(path):
                for name in [directory, *(os.path.join(directory, f) for f in files)]:
                    os.chown(name, UID, UID)
        os.chmod(self.root / "run", 0o700)
        with open(self.root / "libvirtd.log", "wb") as log:
            self.daemon = self.topo.spawn_host(*self.env, "libvirtd", rootless=True,
                                               stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=subprocess.STDOUT)
        socket_path = self.root / "run" / "libvirt" / "libvirt-sock"
        deadline = time.monotonic() + 30
        while not socket_path.exists():    # before it: virsh would start a daemon itself
            assert self.daemon.poll() is None, self.daemon_output()
            assert time.monotonic() < deadline, "no libvirt session socket"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.daemon is None:
            return
        self.virsh("destroy", DOMAIN, check=False)
        self.daemon.terminate()
        try:
            self.daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.daemon.kill()         # Topology.close() kills what it leaves

    def daemon_output(self) -> str:
        return (self.root / "libvirtd.log").read_text(errors="replace")

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = self.topo.run_host(*self.env, "virsh", "-c", "qemu:///session", *args,
                                    rootless=True, timeout=120)
        if check:
            assert result.returncode == 0, (f"virsh {' '.join(args)}: {result.stderr}\n"
                                            f"libvirtd:\n{self.daemon_output()}")
        return result

    def running(self) -> bool:
        """QEMU runs: libvirt keeps its pid file while it does."""
        return (self.root / "run" / "libvirt" / "qemu" / "run" / f"{DOMAIN}.pid").exists()

    def passt_files(self) -> list[str]:
        """What is in libvirt's passt directory (the socket and pid file)."""
        return sorted(os.listdir(self.passt_dir)) if self.passt_dir.exists() else []


@pytest.fixture
def image_dir():
    """The guest's initramfs where the daemon's uid can read it."""
    path = tempfile.mkdtemp(prefix="passt-sep-libvirt-image-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def session(topo: Topology, passt: str):
    version = libvirt_version()
    if version is None:
        pytest.skip("libvirt is not installed (libvirt-daemon-driver-qemu, libvirt-clients)")
    if version < LIBVIRT_MIN:
        pytest.skip(f"libvirt {version} runs no passt: bookworm-backports has one that does")
    root = pathlib.Path(tempfile.mkdtemp(prefix="passt-sep-libvirt-", dir="/tmp"))
    os.chmod(root, 0o755)
    lv = Session(topo, root, passt)
    try:
        lv.start()
        yield lv
    finally:
        lv.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def guest_image(image_dir: str) -> qemu_guest.GuestImage:
    try:
        return qemu_guest.prepare_image(image_dir)
    except qemu_guest.GuestImageError as exc:
        pytest.skip(str(exc))


def define(lv: Session, image: qemu_guest.GuestImage, checks: str, console: str) -> None:
    """(Re)define the domain to run ``checks`` with its console in ``console``."""
    params = qemu_guest.check_params(checks, SIZE, seed=SEED, fwd=FWD_GUEST_PORT)
    cmdline = " ".join(["console=ttyS0", "quiet", "panic=-1"]
                       + [f"pt_{key}={value}" for key, value in params.items()])
    xml = DOMAIN_XML.format(name=DOMAIN, uuid=UUID, kernel=image.kernel, initrd=image.initrd,
                            cmdline=cmdline, log_file=lv.root / "passt.log", mac=MAC,
                            fwd_host=FWD_HOST_PORT, fwd_guest=FWD_GUEST_PORT, console=console)
    path = lv.root / "domain.xml"
    path.write_text(xml)
    lv.virsh("define", str(path))


def run_domain(lv: Session, console: str, until: str | None = None,
               on_result: dict | None = None) -> qemu_guest.GuestRun:
    """``virsh start``, then follow the console until the guest prints
    ``RESULT <until>`` (the domain left running) or the domain shuts off
    (returncode 0); on_result as qemu_guest.run_guest's."""
    lv.virsh("start", DOMAIN)
    started = time.monotonic()
    pending = dict(on_result or {})
    returncode = None
    while True:
        text = qemu_guest.read_console(console) if os.path.exists(console) else ""
        results = qemu_guest.parse_results(text)
        for name in [name for name in pending if name in results]:
            pending.pop(name)(results[name])
        if until is not None and until in results:
            break
        if not lv.running():
            returncode = 0
            break
        if time.monotonic() - started > GUEST_TIMEOUT:
            break
        time.sleep(0.2)
    text = qemu_guest.read_console(console) if os.path.exists(console) else ""
    return qemu_guest.GuestRun(text, returncode, "RESULT boot" in text,
                               time.monotonic() - started, "tcg")


def passt_argv(domain_log: str) -> list[list[str]]:
    """Each command line libvirt logged for "Starting external device: passt"."""
    lines = domain_log.splitlines()
    return [lines[i + 1].split() for i, line in enumerate(lines[:-1])
            if line.endswith("Starting external device: passt")]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def process_uid(pid: int) -> int | None:
    """The real uid of ``pid``; None once it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            status = dict(line.split(":", 1) for line in handle if ":" in line)
    except FileNotFoundError:
        return None
    return None if status["State"].split()[0] == "Z" else int(status["Uid"].split()[0])


def wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while process_uid(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def assert_traffic(run: qemu_guest.GuestRun, fetch: subprocess.Popen | None) -> None:
    """DHCP, ping, TCP both ways and the forwarded port, byte for byte."""
    results, where = run.results, run.describe()
    assert run.booted, "the guest never ran its init script" + where
    missing = {"dhcp", "router", "ping", "tcp-down", "tcp-up-sent", "tcp-up-got",
               "fwd-served"} - results.keys()
    assert not missing, f"no result for {sorted(missing)}" + where
    assert results["dhcp"] == f"{HOST_ADDR4}/{PREFIX4}", where
    assert results["router"] == GW_ADDR4, where
    assert results["ping"] == "ok", where
    assert results["tcp-down"].split()[0] == digest_of(SIZE, SEED), where
    sent_digest, sent_size = results["tcp-up-sent"].split()
    assert int(sent_size) == SIZE, where
    assert results["tcp-up-got"] == f"{sent_digest} {sent_size}", where
    # <portForward>: the host's port FWD_HOST_PORT reaches the guest's server.
    assert results["fwd-served"] == "0", where
    assert fetch is not None, "the guest never listened on its forwarded port" + where
    assert fetch.communicate(timeout=60)[0].strip() == f"{sent_digest} {sent_size}", where


def assert_passt_argv(lv: Session) -> None:
    """libvirt ran "passt" (passt-sep) once for this boot, with our options
    (the domain log starts again at each boot)."""
    log = lv.domain_log.read_text(errors="replace")
    commands = passt_argv(log)
    assert len(commands) == 1, log
    argv = commands[0]
    assert argv[0] == "passt" and "--one-off" in argv, argv
    assert option(argv, "--socket").startswith(f"{lv.passt_dir}/"), argv
    assert option(argv, "--pid").startswith(f"{lv.passt_dir}/"), argv
    assert option(argv, "--log-file") == str(lv.root / "passt.log"), argv
    assert option(argv, "--tcp-ports") == f"127.0.0.1/{FWD_HOST_PORT}:{FWD_GUEST_PORT}", argv


@pytest.mark.slow
def test_libvirt_session_domain_with_passt_backend(
        topo: Topology, session: Session, guest_image: qemu_guest.GuestImage) -> None:
    """Start, traffic, destroy mid-download, start again, traffic, guest
    poweroff: libvirt's passt is passt-sep each time, and cleans up after it."""
    lv = session
    qemu_guest.start_remote_peers(topo)
    fetch: dict[str, subprocess.Popen] = {}

    def fetch_forwarded(_: str) -> None:
        """From the host side, through the <portForward>, what the guest serves."""
        fetch["fwd"] = topo.spawn_host(sys.executable, qemu_guest.PEERS, "drain", "127.0.0.1",
                                       str(FWD_HOST_PORT), stdout=subprocess.PIPE, text=True)

    # First boot: the checks, then an endless download that destroy cuts.
    console = str(lv.root / "console-1.log")
    define(lv, guest_image, "ping,tcpdown,tcpup,fwd,hold", console)
    first = run_domain(lv, console, "holding", {"fwd-listening": fetch_forwarded})
    assert_traffic(first, fetch.pop("fwd", None))
    assert "holding" in first.results, first.describe()
    assert_passt_argv(lv)
    files = lv.passt_files()
    assert len(files) == 2 and any(f.endswith(".socket") for f in files), files
    pid_file = next(f for f in files if f.endswith(".pid"))
    worker = int((lv.passt_dir / pid_file).read_text())
    assert process_uid(worker) == UID, "passt-sep does not run as the daemon's uid"

    lv.virsh("destroy", DOMAIN)
    assert lv.passt_files() == [], "libvirt left passt's socket or pid file"
    assert wait_gone(worker), "passt-sep outlived the destroyed domain"
    assert not topo.run_host("ss", "-Htn", f"dport = :{qemu_guest.SOURCE_PORT}").stdout, \
        "the destroyed guest's download is still open towards the remote"

    # Second boot: a new passt-sep, traffic again; the guest powers off.
    console = str(lv.root / "console-2.log")
    define(lv, guest_image, "ping,tcpdown,tcpup,fwd", console)
    second = run_domain(lv, console, None, {"fwd-listening": fetch_forwarded})
    print(f"libvirt guests (TCG): first {first.elapsed:.1f} s, second {second.elapsed:.1f} s")
    assert_traffic(second, fetch.pop("fwd", None))
    assert second.returncode == 0 and "done" in second.results, second.describe()
    assert lv.passt_files() == [], "libvirt left passt's socket or pid file"

    assert_passt_argv(lv)
    passt_log = (lv.root / "passt.log").read_text()
    assert passt_log.count("guest connected") == 2, passt_log   # appended to, each boot
