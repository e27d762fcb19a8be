"""A throw-away QEMU guest for the passt-mode end-to-end test.

The guest is Debian's own kernel (``linux-image-cloud-amd64`` or
``linux-image-amd64``) booted straight into a tiny initramfs built here:
busybox static, the virtio-net modules, a small static UDP echo client
(qemu_guest_udpecho.c: busybox's nc has no UDP) and an ``/init`` script
that runs the checks and prints one ``RESULT <name> <value...>`` line per
check on the serial console, then powers the machine off.  Which checks
run and their parameters come from the kernel command line
(``pt_NAME=VALUE``).  Used by tests/e2e/test_qemu.py and bench/qemu_passt.py.

Nothing is downloaded: the kernel, its modules, busybox and gcc are the
ones apt installed (see APT_PACKAGES in the Makefile).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping

from peers import digest_of

from topology import GW_ADDR4, HOST_ADDR4, PREFIX4, REMOTE_ADDR4, REMOTE_ADDR6, Topology

BUSYBOX = "/bin/busybox"
QEMU = "qemu-system-x86_64"
UDPECHO_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "qemu_guest_udpecho.c")
# Loaded in this order (with their dependencies first) unless built in.
NEEDED_MODULES = ("virtio_net", "virtio_pci")
RESULT = re.compile(r"RESULT (\S+) ?(.*)$")  # not anchored: SeaBIOS leaves escapes

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in bound|renew)
  ip -4 addr flush dev "$interface"
  [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
  ip addr add "$ip/$mask" dev "$interface"
  [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
  echo "$router" > /tmp/router
  echo "$dns" > /tmp/dns
;; esac
exit 0
"""

# The guest configures eth0 by DHCP (address, router, resolver, MTU), then
# runs the checks named by pt_checks (comma-separated, in order), each a
# check_NAME function below.  Each prints its line whatever happens (each
# has a time limit), so a failure shows as a wrong value rather than a
# missing line or a hang; "RESULT time-NAME START END" (guest uptime, s)
# follows every check; "RESULT done" closes the run.
INIT_SCRIPT = r"""#!/bin/sh
export PATH=/bin
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
for a in $(cat /proc/cmdline); do
  case "$a" in pt_*=*) eval "${a%%=*}='${a#*=}'" ;; esac
done
for m in /modules/*.ko; do
  [ -e "$m" ] && { insmod "$m" || echo "RESULT insmod-failed $m"; }
done
echo "RESULT boot ok"
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set eth0 up
echo "RESULT mac $(cat /sys/class/net/eth0/address)"

udhcpc -i eth0 -s /udhcpc.sh -n -q -t 5 -T 2 >/dev/null 2>&1
echo "RESULT dhcp $(ip -4 -o addr show dev eth0 | awk '{print $4}')"
echo "RESULT router $(cat /tmp/router 2>/dev/null)"
echo "RESULT dns-server $(cat /tmp/dns 2>/dev/null)"
echo "RESULT mtu $(cat /sys/class/net/eth0/mtu)"

now() { cut -d' ' -f1 /proc/uptime; }
# ask the remote "source" server at $1 for $2 bytes made from seed $3
fetch() { echo "$2 $3" | timeout 120 nc "$1" "$pt_source"; }
# the file uploaded (and served on the forwarded port): pt_size random bytes
upload_file() {
  [ -e /tmp/up ] && return
  dd if=/dev/urandom of=/tmp/up bs=65536 count=$((pt_size / 65536)) 2>/dev/null
  echo "RESULT tcp-up-sent $(sha256sum </tmp/up | cut -d' ' -f1) $(wc -c </tmp/up)"
}

check_ping() {
  if ping -c 2 -w 10 "$pt_remote4" >/dev/null 2>&1; then r=ok; else r=fail; fi
  echo "RESULT ping $r"
}
check_tcpdown() {
  echo "RESULT tcp-down $(fetch "$pt_remote4" "$pt_size" "$pt_seed" | sha256sum)"
}
check_tcpup() {
  upload_file
  echo "RESULT tcp-up-got $(timeout 120 nc "$pt_remote4" "$pt_sink" </tmp/up)"
}
# Throughput (bench/qemu_passt.py): no digest in the guest (under TCG it
# costs as much as the transfer), and no FIN from the guest before the
# data it waits for (distro passt 0.0~git20230309 then repeats data and
# loses the remote's FIN); an upload ends when the sink has it all.
check_benchdown() {
  rm -f /tmp/req; mkfifo /tmp/req
  timeout 120 nc "$pt_remote4" "$pt_source" </tmp/req | wc -c >/tmp/got &
  exec 3>/tmp/req
  echo "$pt_size 1" >&3
  wait $!
  exec 3>&-
  echo "RESULT bench-down $(cat /tmp/got)"
}
check_benchup() {
  upload_file
  local t0=$(now)
  timeout 120 nc "$pt_remote4" "$pt_sink" </tmp/up | {
    read -r answer; echo "RESULT bench-up $answer $t0 $(now)"; killall nc 2>/dev/null; }
}
# UDP datagrams of each size in pt_udp_sizes to the remote echo server at $1
echo_udp() { timeout 30 udpecho "$1" "$pt_echo" $(echo "$pt_udp_sizes" | tr , ' '); }
check_udp() { echo "RESULT udp-echo $(echo_udp "$pt_remote4")"; }
check_dns() {
  dns=$(cat /tmp/dns 2>/dev/null); dns=${dns%% *}
  echo "RESULT dns $(timeout 10 nslookup -type=a "$pt_name" "$dns" 2>/dev/null |
    awk '/^Name:/ {n = 1} n && /^Address/ {print $2}')"
}
check_ipv6() {
  i=0; addr6=
  while [ -z "$addr6" ] && [ $i -lt 100 ]; do
    addr6=$(ip -6 addr show dev eth0 scope global | grep inet6 | grep -v tentative |
      awk '{print $2}')
    [ -z "$addr6" ] && sleep 0.1
    i=$((i + 1))
  done
  echo "RESULT slaac $addr6"
  echo "RESULT tcp6-down $(fetch "$pt_remote6" "$pt_size6" "$pt_seed6" | sha256sum)"
  echo "RESULT udp6-echo $(echo_udp "$pt_remote6")"
}
# send a line, half-close (nc's stdin ends), then wait for the sink's answer
# and its FIN: nc ends by itself only if both reach the guest after its FIN
check_halfclose() {
  r=$(echo half-close | timeout 30 nc "$pt_remote4" "$pt_sink"); rc=$?
  echo "RESULT halfclose $rc $r"
}
# serve the upload file once on port pt_fwd (reached through passt's -t)
check_fwd() {
  upload_file
  timeout 120 nc -l -p "$pt_fwd" </tmp/up >/dev/null &
  i=0
  while ! netstat -ltn | grep -q ":$pt_fwd " && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  echo "RESULT fwd-listening"
  wait $!
  echo "RESULT fwd-served $?"
}
# start an endless download and stay in the middle of it until killed
check_hold() {
  echo "$((1 << 40)) 1" | nc "$pt_remote4" "$pt_source" >/dev/null &
  sleep 2
  echo "RESULT holding"
  sleep 100000
}

for c in $(echo "$pt_checks" | tr , ' '); do
  start=$(now)
  check_$c
  echo "RESULT time-$c $start $(now)"
done
echo "RESULT done"
sleep 1
poweroff -f
"""


class GuestImageError(RuntimeError):
    """The kernel or its modules cannot make a guest (a setup problem)."""


# -- the kernel and its modules -------------------------------------------------------
def find_kernel() -> tuple[str, str] | None:
    """(vmlinuz, modules directory) of an installed Debian kernel, the
    cloud flavour first (smaller, boots faster), then the newest; None when
    there is none."""
    found = []
    for image in glob.glob("/boot/vmlinuz-*"):
        version = os.path.basename(image)[len("vmlinuz-"):]
        moddir = os.path.join("/lib/modules", version)
        if os.path.exists(os.path.join(moddir, "modules.dep")) and os.access(image, os.R_OK):
            numbers = tuple(int(n) for n in re.findall(r"\d+", version))
            found.append((("cloud" in version, numbers), image, moddir))
    if not found:
        return None
    _, image, moddir = max(found)
    return image, moddir


def _module_name(path: str) -> str:
    name = os.path.basename(path).split(".ko")[0]
    return name.replace("-", "_")


def modules_to_load(moddir: str, names: Iterable[str] = NEEDED_MODULES) -> list[str]:
    """Paths (relative to ``moddir``) of the modules that ``names`` need, each
    after its dependencies; nothing for a driver built into the kernel."""
    deps: dict[str, tuple[str, list[str]]] = {}
    with open(os.path.join(moddir, "modules.dep"), encoding="utf-8") as handle:
        for line in handle:
            path, _, rest = line.partition(":")
            deps[_module_name(path)] = (path, [_module_name(p) for p in rest.split()])
    builtin: set[str] = set()
    builtin_path = os.path.join(moddir, "modules.builtin")
    if os.path.exists(builtin_path):
        with open(builtin_path, encoding="utf-8") as handle:
            builtin = {_module_name(line.strip()) for line in handle if line.strip()}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in builtin:
            return
        if name not in deps:
            raise GuestImageError(f"{name} is neither a module of {moddir} nor built in")
        path, requires = deps[name]
        if path in order:
            return
        for dep in requires:
            visit(dep)
        order.append(path)

    for name in names:
        visit(name)
    return order


def _module_bytes(path: str) -> bytes:
    """A module file's contents, uncompressed (busybox insmod takes plain .ko)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise GuestImageError(f"{path} is zstd-compressed and zstd is not installed")
        return subprocess.run([zstd, "-dc", path], check=True, capture_output=True).stdout
    return data


# -- the initramfs ----------------------------------------------------------------------
class Cpio:
    """A cpio archive in the kernel's "newc" format, built in memory."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0)
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self.out.write(header + name.encode() + b"\0")
        self.out.write(b"\0" * (-self.out.tell() % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        self.out.write(b"\0" * (-self.out.tell() % 512))
        return self.out.getvalue()


def build_udpecho(dest: str) -> None:
    """Compile the guest's UDP echo client (qemu_guest_udpecho.c), static."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise GuestImageError("no C compiler for the guest's udpecho (apt-get install gcc)")
    result = subprocess.run([cc, "-static", "-Os", "-s", "-o", dest, UDPECHO_SOURCE],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise GuestImageError(f"cannot build udpecho (libc6-dev?): {result.stderr}")


def build_initramfs(moddir: str, dest: str) -> list[str]:
    """Write the guest's initramfs (gzip'd newc cpio) to ``dest``; return
    the names of the modules it loads, in order."""
    modules = modules_to_load(moddir)
    archive = Cpio()
    for directory in ("bin", "dev", "proc", "sys", "tmp", "modules"):
        archive.directory(directory)
    archive.chardev("dev/console", 5, 1)
    with open(BUSYBOX, "rb") as handle:
        archive.file("bin/busybox", handle.read(), 0o755)
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            archive.symlink(f"bin/{applet}", "busybox")
    udpecho = dest + ".udpecho"
    build_udpecho(udpecho)
    with open(udpecho, "rb") as handle:
        archive.file("bin/udpecho", handle.read(), 0o755)
    os.unlink(udpecho)
    for index, path in enumerate(modules):
        name = f"modules/{index:02d}-{_module_name(path)}.ko"
        archive.file(name, _module_bytes(os.path.join(moddir, path)))
    archive.file("udhcpc.sh", UDHCPC_SCRIPT.encode(), 0o755)
    archive.file("init", INIT_SCRIPT.encode(), 0o755)
    with open(dest, "wb") as handle:
        handle.write(gzip.compress(archive.finish(), compresslevel=1))
    return [_module_name(path) for path in modules]


@dataclasses.dataclass(frozen=True)
class GuestImage:
    qemu: str
    kernel: str
    initrd: str


def prepare_image(workdir: str) -> GuestImage:
    """QEMU, the installed kernel and an initramfs built in ``workdir``;
    GuestImageError says what is missing."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise GuestImageError(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    kernel = find_kernel()
    if kernel is None:
        raise GuestImageError("no guest kernel: no /boot/vmlinuz-* with /lib/modules "
                              "(apt-get install linux-image-cloud-amd64)")
    image, moddir = kernel
    initrd = os.path.join(workdir, "initramfs.gz")
    build_initramfs(moddir, initrd)
    return GuestImage(qemu, image, initrd)


# -- running it ----------------------------------------------------------------------------
def kvm_usable() -> bool:
    """/dev/kvm opens read-write (it may still fail a guest: see run_guest)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def accelerators() -> list[str]:
    """KVM first when /dev/kvm opens, TCG as the fallback; PASST_SEP_QEMU_ACCEL
    (kvm or tcg) forces one; once a guest has booted, the accelerator it
    booted with (nested KVM that fails once fails every time)."""
    forced = os.environ.get("PASST_SEP_QEMU_ACCEL")
    if forced:
        return [forced]
    if _booted_with:
        return _booted_with[-1:]
    return ["kvm", "tcg"] if kvm_usable() else ["tcg"]


_booted_with: list[str] = []


def qemu_command(image: GuestImage, accel: str, socket_path: str, params: Mapping[str, object],
                 mac: str = "52:54:00:12:34:56") -> list[str]:
    cpu = ["-cpu", "host"] if accel == "kvm" else []
    append = " ".join(["console=ttyS0", "quiet", "panic=-1"]
                      + [f"pt_{key}={value}" for key, value in params.items()])
    return [image.qemu, "-accel", accel, *cpu, "-nodefaults", "-nographic", "-no-reboot",
            "-serial", "stdio", "-m", "256", "-smp", "1",
            "-kernel", image.kernel, "-initrd", image.initrd, "-append", append,
            "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={socket_path}",
            # romfile=: no PXE ROM (the kernel is loaded directly; ipxe-qemu not needed)
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile="]


@dataclasses.dataclass
class GuestRun:
    console: str
    returncode: int | None  # None: killed (did not boot, did not finish in time, or `until`)
    booted: bool
    elapsed: float
    accel: str = ""

    @property
    def results(self) -> dict[str, str]:
        return parse_results(self.console)

    def seconds(self, check: str) -> float:
        """How long the guest's check ``check`` took (its RESULT time- line)."""
        start, end = self.results[f"time-{check}"].split()
        return float(end) - float(start)

    def describe(self) -> str:
        """For assertion messages: how the run went and the whole console."""
        return (f"\n{self.accel}: {'booted' if self.booted else 'did not boot'}, "
                f"{self.elapsed:.1f} s, QEMU exit {self.returncode}; console:\n{self.console}")


def run_guest(spawn: Callable[..., subprocess.Popen], command: list[str], log_path: str,
              boot_timeout: float, timeout: float, until: str | None = None,
              on_result: Mapping[str, Callable[[str], object]] | None = None) -> GuestRun:
    """Run QEMU (``spawn`` starts it, in the test's namespace) until the guest
    powers off, or until it prints ``RESULT <until>`` (then SIGKILL, as a
    crashing VM).  ``on_result[name](value)`` runs once when the guest
    prints ``RESULT <name> <value>`` (to start the host's side of a check).
    Killed if the init script has not started within
    ``boot_timeout`` s, if the whole run takes more than ``timeout`` s, or
    on a KVM internal error (QEMU then stops the VM and waits forever):
    nested KVM can be so slow or broken that TCG is the better choice."""
    with open(log_path, "wb") as log:
        vm = spawn(*command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    booted = False
    pending = dict(on_result or {})
    while True:
        returncode = vm.poll()
        console = read_console(log_path)
        results = parse_results(console)
        for name in [name for name in pending if name in results]:
            pending.pop(name)(results[name])
        if returncode is not None:
            break
        booted = booted or "RESULT boot" in console
        elapsed = time.monotonic() - started
        if ("KVM internal error" in console or elapsed > timeout
                or (not booted and elapsed > boot_timeout)
                or (until is not None and until in results)):
            vm.kill()
            vm.wait()
            returncode = None
            console = read_console(log_path)
            break
        time.sleep(0.1)
    return GuestRun(console, returncode, booted or "RESULT boot" in console,
                    time.monotonic() - started)


# Until the init script starts: a second with working KVM (nested KVM can
# be slower than TCG, or fail: then TCG takes over); TCG here: about 5 s.
BOOT_TIMEOUT = {"kvm": 10, "tcg": 90}


def boot(attempt: Callable[[str], GuestRun]) -> GuestRun:
    """``attempt(accel)`` (start a backend, run_guest) with each accelerator
    of accelerators() until a guest boots; the last run."""
    for accel in accelerators():
        run = attempt(accel)
        run.accel = accel
        if run.booted:
            _booted_with.append(accel)
            break
    return run


def read_console(log_path: str) -> str:
    with open(log_path, "rb") as log:
        return log.read().decode(errors="replace")


def wait_for_socket(path: str, daemon: subprocess.Popen, timeout: float = 20) -> None:
    """Until a passt's socket exists (QEMU's server=off gives up at once)."""
    deadline = time.monotonic() + timeout
    # Not connecting to it: that would use up a one-off daemon's only guest.
    while not os.path.exists(path):
        if daemon.poll() is not None:
            detail = daemon.stderr.read() if daemon.stderr else ""
            raise RuntimeError(f"{daemon.args} exited with {daemon.returncode}: {detail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no socket at {path}")
        time.sleep(0.05)
    time.sleep(0.1)  # bound, then listening: let the daemon get to listen()


# -- the other end of the guest's checks ---------------------------------------------
PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers.py")
SOURCE_PORT, SINK_PORT, ECHO_PORT = 9001, 9000, 7000


def start_remote_peers(topo: Topology) -> None:
    """The servers the guest's checks talk to, in the "remote" namespace."""
    for kind, port in (("sink", SINK_PORT), ("source", SOURCE_PORT)):
        topo.spawn_remote(sys.executable, PEERS, kind, str(port))
    # UDP servers bound to the address asked: an unbound socket would answer
    # from the address of the route back (the gateway's), not the one asked.
    for address in (REMOTE_ADDR4, REMOTE_ADDR6):
        topo.spawn_remote(sys.executable, PEERS, "udp-echo", str(ECHO_PORT), address)
        topo.spawn_remote(sys.executable, PEERS, "dns", "53", address)  # the host's resolvers
    topo.wait_listening(SINK_PORT)
    topo.wait_listening(SOURCE_PORT)
    topo.wait_listening(ECHO_PORT, "udp")
    topo.wait_listening(53, "udp")


def check_params(checks: str, size: int, **more: object) -> dict[str, object]:
    """The guest's parameters to run ``checks`` (comma-separated) against
    start_remote_peers' servers, transfers of ``size`` bytes."""
    return {"checks": checks, "remote4": REMOTE_ADDR4, "remote6": REMOTE_ADDR6,
            "source": SOURCE_PORT, "sink": SINK_PORT, "echo": ECHO_PORT, "size": size, **more}



# The standard run of the guest's checks, over the stream socket and over
# vhost-user alike.
FWD_HOST_PORT, FWD_GUEST_PORT = 10080, 8080
SIZE = 20 << 20                 # both ways over IPv4, and back out through -t
SIZE6 = 4 << 20
UDP_SIZES = (1, 1400, 8000, 65000)  # the last ones need the guest's 65520 MTU
SEED4, SEED6 = 11, 12
GUEST_TIMEOUT = 300  # the whole run; TCG here: about 11 s


def standard_params(checks: str, size: int = SIZE) -> dict[str, object]:
    """The parameters of the standard run for ``checks``."""
    return check_params(
        checks, size, seed=SEED4, size6=SIZE6, seed6=SEED6,
        udp_sizes=",".join(map(str, UDP_SIZES)), fwd=FWD_GUEST_PORT, name="name.example.test")


def assert_dhcp(results: dict[str, str], where: str) -> None:
    """The lease is the host's own address, prefix and gateway."""
    assert results["dhcp"] == f"{HOST_ADDR4}/{PREFIX4}", where
    assert results["router"] == GW_ADDR4, where


def assert_tcp_both_ways(results: dict[str, str], where: str, size: int,
                         seed: int = SEED4) -> str:
    """The "tcpdown" and "tcpup" checks: ``size`` bytes each way, the
    sha256 on both ends alike; the upload's "digest size"."""
    assert results["tcp-down"].split()[0] == digest_of(size, seed), where
    sent_digest, sent_size = results["tcp-up-sent"].split()
    assert int(sent_size) == size, where
    assert results["tcp-up-got"] == f"{sent_digest} {sent_size}", where
    return f"{sent_digest} {sent_size}"


def assert_standard_results(results: dict[str, str], where: str) -> str:
    """What the standard run ("ping,tcpdown,tcpup,udp,dns,ipv6,fwd") must
    show, whatever carries the guest's frames; the upload's "digest size",
    which the forwarded port serves back."""
    assert "insmod-failed" not in results, where
    # DHCP: the host's own address, prefix, gateway and resolver, and the MTU.
    assert_dhcp(results, where)
    assert results["dns-server"].split()[0] == REMOTE_ADDR4, where
    assert results["mtu"] == "65520", where
    # ICMP echo, through passt-sep's ping sockets.
    assert results["ping"] == "ok", where
    # TCP both ways: remote -> guest and guest -> remote, sha256 on both ends.
    uploaded = assert_tcp_both_ways(results, where, SIZE)
    # UDP: echo off the remote, and a DNS query to the resolver DHCP handed out.
    assert results["udp-echo"] == " ".join(f"{n}:ok" for n in UDP_SIZES), where
    assert results["dns"] == "203.0.113.53", where
    # IPv6: SLAAC from passt-sep's router advertisements, then TCP and UDP.
    assert results["slaac"].startswith("2001:db8:1:"), where
    assert results["tcp6-down"].split()[0] == digest_of(SIZE6, SEED6), where
    assert results["udp6-echo"] == " ".join(f"{n}:ok" for n in UDP_SIZES), where
    # -t: the guest's server was reached, every byte (the caller checks the fetch).
    assert results["fwd-served"] == "0", where
    return uploaded

def parse_results(console: str) -> dict[str, str]:
    """The ``RESULT name value`` lines of the serial console, by name."""
    results = {}
    for line in console.splitlines():
        match = RESULT.search(line.strip("\r"))
        if match:
            results[match.group(1)] = match.group(2).strip()
    return results


def qemu_vhost_user_command(image: GuestImage, accel: str, socket_path: str,
                            params: Mapping[str, object],
                            mac: str = "52:54:00:12:34:56") -> list[str]:
    """qemu_command's guest on a vhost-user back-end at ``socket_path``: its
    RAM in a shared memfd (the back-end maps it), virtio-net through
    -netdev vhost-user instead of the stream socket."""
    command = qemu_command(image, accel, socket_path, params, mac)
    size = command[command.index("-m") + 1]
    netdev = command.index("-netdev")
    return [*command[:netdev],
            "-object", f"memory-backend-memfd,id=mem,size={size}M,share=on",
            "-numa", "node,memdev=mem",
            "-chardev", f"socket,id=c0,path={socket_path}",
            "-netdev", "vhost-user,id=n0,chardev=c0",
            *command[netdev + 2:]]
