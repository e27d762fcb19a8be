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

With ``<interface type='vhostuser'>`` (and the domain's RAM a shared memfd)
the same command line starts with ``--vhost-user`` and QEMU gets
``-chardev socket,path=<socket>,reconnect-ms=5000 -netdev vhost-user``.
There libvirt 11.3 neither kills passt nor removes its files: passt-sep
leaves on QEMU's hang-up (--one-off) and the socket and pid file stay,
stale.  A ``<source dev=...>`` becomes ``--interface``: an empty one is
refused, as passt does.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import qemu_guest

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
  <memory unit='MiB'>256</memory>{memory_backing}
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
    <interface type='{type}'>
      <backend type='passt' logFile='{log_file}'/>
      <mac address='{mac}'/>{source}
      <model type='virtio'/>
      <portForward proto='tcp' address='127.0.0.1'>
        <range start='{fwd_host}' to='{fwd_guest}'/>
      </portForward>
    </interface>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
  </devices>
</domain>
"""


@dataclasses.dataclass(frozen=True)
class Backend:
    """How the domain's interface reaches passt: what changes in its XML."""

    type: str                    # <interface type=...>
    memory_backing: str = ""     # vhost-user: QEMU shares the guest's RAM
    source: str = ""


STREAM = Backend("user")
# No <source>: libvirt makes up the socket's path and mode itself, and a
# <source dev=...> is passt's --interface (an empty one, --interface '').
VHOST_USER = Backend(
    "vhostuser",
    "\n  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>")


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


@dataclasses.dataclass
class Domain:
    """The test's domain on the session daemon, its guest's checks run
    against the remote peers; ``backend`` says how it reaches passt."""

    topo: Topology
    lv: Session
    image: qemu_guest.GuestImage
    backend: Backend = STREAM

    def define(self, checks: str, console: str) -> None:
        """(Re)define the domain to run ``checks`` with its console in ``console``."""
        params = qemu_guest.check_params(checks, SIZE, seed=SEED, fwd=FWD_GUEST_PORT)
        cmdline = " ".join(["console=ttyS0", "quiet", "panic=-1"]
                           + [f"pt_{key}={value}" for key, value in params.items()])
        xml = DOMAIN_XML.format(
            name=DOMAIN, uuid=UUID, kernel=self.image.kernel, initrd=self.image.initrd,
            cmdline=cmdline, log_file=self.lv.root / "passt.log", mac=MAC,
            fwd_host=FWD_HOST_PORT, fwd_guest=FWD_GUEST_PORT, console=console,
            type=self.backend.type, memory_backing=self.backend.memory_backing,
            source=self.backend.source)
        path = self.lv.root / "domain.xml"
        path.write_text(xml)
        self.lv.virsh("define", str(path))

    def boot(self, checks: str, number: int,
             until: str | None = None) -> tuple[qemu_guest.GuestRun, subprocess.Popen | None]:
        """Define and start the domain for its ``number``-th boot and follow
        it as run_domain; with it, the host's fetch through the <portForward>
        of what the guest serves (started once the guest listens)."""
        console = str(self.lv.root / f"console-{number}.log")
        self.define(checks, console)
        fetch: list[subprocess.Popen] = []

        def fetch_forwarded(_: str) -> None:
            fetch.append(self.topo.spawn_host(
                sys.executable, qemu_guest.PEERS, "drain", "127.0.0.1", str(FWD_HOST_PORT),
                stdout=subprocess.PIPE, text=True))

        run = run_domain(self.lv, console, until, {"fwd-listening": fetch_forwarded})
        return run, (fetch[0] if fetch else None)


@pytest.fixture
def domain(topo: Topology, session: Session, guest_image: qemu_guest.GuestImage) -> Domain:
    """A Domain (on the stream socket until a test sets its backend), the
    remote peers of its guest's checks running."""
    qemu_guest.start_remote_peers(topo)
    return Domain(topo, session, guest_image)


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
    uploaded = qemu_guest.assert_tcp_both_ways(results, where, SIZE, SEED)
    # <portForward>: the host's port FWD_HOST_PORT reaches the guest's server.
    assert results["fwd-served"] == "0", where
    assert fetch is not None, "the guest never listened on its forwarded port" + where
    assert fetch.communicate(timeout=60)[0].strip() == uploaded, where


def assert_passt_argv(lv: Session, vhost_user: bool = False) -> list[str]:
    """libvirt ran "passt" (passt-sep) once for this boot, with our options
    (the domain log starts again at each boot); that command line."""
    log = lv.domain_log.read_text(errors="replace")
    commands = passt_argv(log)
    assert len(commands) == 1, log
    argv = commands[0]
    assert argv[0] == "passt" and "--one-off" in argv, argv
    assert ("--vhost-user" in argv) == vhost_user, argv
    assert option(argv, "--socket").startswith(f"{lv.passt_dir}/"), argv
    assert option(argv, "--pid").startswith(f"{lv.passt_dir}/"), argv
    assert option(argv, "--log-file") == str(lv.root / "passt.log"), argv
    assert option(argv, "--tcp-ports") == f"127.0.0.1/{FWD_HOST_PORT}:{FWD_GUEST_PORT}", argv
    return argv


def running_worker(lv: Session) -> int:
    """After a boot: libvirt's passt directory holds the socket and the pid
    file, whose pid (passt-sep's worker) runs as the daemon's uid."""
    files = lv.passt_files()
    assert len(files) == 2 and any(f.endswith(".socket") for f in files), files
    pid_file = next(f for f in files if f.endswith(".pid"))
    worker = int((lv.passt_dir / pid_file).read_text())
    assert process_uid(worker) == UID, "passt-sep does not run as the daemon's uid"
    return worker


def assert_destroyed(topo: Topology, lv: Session, worker: int,
                     stale_files_left: bool = False) -> None:
    """``virsh destroy`` mid-download: the worker is gone and so is the
    guest's connection to the remote; libvirt removed passt's files, or,
    with ``stale_files_left``, assert_stale's."""
    files = lv.passt_files()
    lv.virsh("destroy", DOMAIN)
    assert wait_gone(worker), "passt-sep outlived the destroyed domain"
    assert not topo.run_host("ss", "-Htn", f"dport = :{qemu_guest.SOURCE_PORT}").stdout, \
        "the destroyed guest's download is still open towards the remote"
    if stale_files_left:
        assert_stale(lv, files)
    else:
        assert lv.passt_files() == [], "libvirt left passt's socket or pid file"


def assert_stale(lv: Session, files: list[str]) -> None:
    """vhostuser: libvirt 11.3 kills passt and removes its files only for
    type='user', so once QEMU is gone the socket and pid file ``files``
    stay (unless a libvirt removes them); passt-sep, jailed, cannot unlink
    them, but it left on QEMU's hang-up (--one-off): nobody listens on the
    socket, the pid file's process is gone."""
    left = lv.passt_files()
    assert set(files) >= set(left), left
    for name in left:
        path = lv.passt_dir / name
        if name.endswith(".socket"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, \
                    pytest.raises(ConnectionRefusedError):
                probe.connect(str(path))
        else:
            assert wait_gone(int(path.read_text())), f"{name}: passt-sep outlived QEMU"


@pytest.mark.slow
def test_libvirt_session_domain_with_passt_backend(domain: Domain) -> None:
    """Start, traffic, destroy mid-download, start again, traffic, guest
    poweroff: libvirt's passt is passt-sep each time, and cleans up after it."""
    lv = domain.lv
    # First boot: the checks, then an endless download that destroy cuts.
    first, fetch = domain.boot("ping,tcpdown,tcpup,fwd,hold", 1, "holding")
    assert_traffic(first, fetch)
    assert "holding" in first.results, first.describe()
    assert_passt_argv(lv)
    assert_destroyed(domain.topo, lv, running_worker(lv))

    # Second boot: a new passt-sep, traffic again; the guest powers off.
    second, fetch = domain.boot("ping,tcpdown,tcpup,fwd", 2)
    print(f"libvirt guests (TCG): first {first.elapsed:.1f} s, second {second.elapsed:.1f} s")
    assert_traffic(second, fetch)
    assert second.returncode == 0 and "done" in second.results, second.describe()
    assert lv.passt_files() == [], "libvirt left passt's socket or pid file"

    assert_passt_argv(lv)
    passt_log = (lv.root / "passt.log").read_text()
    assert passt_log.count("guest connected") == 2, passt_log   # appended to, each boot


@pytest.mark.slow
def test_libvirt_session_domain_with_passt_vhost_user(domain: Domain) -> None:
    """<interface type='vhostuser'> with <backend type='passt'/>: libvirt
    runs passt-sep with --vhost-user, QEMU shares the guest's memfd RAM
    with it; the same traffic, destroy and restart as on the stream socket."""
    lv = domain.lv
    # <source dev=''/>: libvirt runs passt with --interface '', refused (as
    # passt does) before passt-sep goes to the background, and libvirt
    # reports it and leaves nothing behind.
    domain.backend = dataclasses.replace(VHOST_USER, source="\n      <source dev=''/>")
    domain.define("ping", str(lv.root / "console-0.log"))
    refused = lv.virsh("start", DOMAIN, check=False)
    assert refused.returncode != 0, "libvirt started passt with --interface ''"
    assert "Invalid interface name for --interface" in refused.stderr, refused.stderr
    assert lv.passt_files() == [] and not lv.running(), lv.passt_files()

    domain.backend = VHOST_USER
    first, fetch = domain.boot("ping,tcpdown,tcpup,fwd,hold", 1, "holding")
    assert_traffic(first, fetch)
    assert "holding" in first.results, first.describe()
    argv = assert_passt_argv(lv, vhost_user=True)
    print("libvirt's passt command line:", " ".join(argv))
    first_files = lv.passt_files()
    assert_destroyed(domain.topo, lv, running_worker(lv), stale_files_left=True)

    second, fetch = domain.boot("ping,tcpdown,tcpup,fwd", 2)
    print(f"libvirt vhost-user guests (TCG): first {first.elapsed:.1f} s, "
          f"second {second.elapsed:.1f} s")
    assert_traffic(second, fetch)
    assert second.returncode == 0 and "done" in second.results, second.describe()
    second_argv = assert_passt_argv(lv, vhost_user=True)
    assert_stale(lv, first_files + [pathlib.Path(option(second_argv, name)).name
                                    for name in ("--socket", "--pid")])

    # One QEMU connection per boot, its guest's virtio-net driven through it.
    passt_log = (lv.root / "passt.log").read_text()
    assert passt_log.count("vhost-user front-end connected") == 2, passt_log
    assert passt_log.count("guest connected (vhost-user)") == 2, passt_log
