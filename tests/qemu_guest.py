"""A throw-away QEMU guest for the passt-mode end-to-end test.

The guest is Debian's own kernel (``linux-image-cloud-amd64`` or
``linux-image-amd64``) booted straight into a tiny initramfs built here:
busybox static, the virtio-net modules and an ``/init`` script that runs
the checks and prints one ``RESULT <name> <value...>`` line per check on
the serial console, then powers the machine off.  The checks' parameters
come from the kernel command line (``pt_NAME=VALUE``).

Nothing is downloaded: the kernel, its modules and busybox are the ones
apt installed (see APT_PACKAGES in the Makefile).
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
import time
from collections.abc import Callable, Iterable, Mapping

BUSYBOX = "/bin/busybox"
# Loaded in this order (with their dependencies first) unless built in.
NEEDED_MODULES = ("virtio_net", "virtio_pci")
RESULT = re.compile(r"RESULT (\S+) ?(.*)$")  # not anchored: SeaBIOS leaves escapes

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in bound|renew)
  ip -4 addr flush dev "$interface"
  ip addr add "$ip/$mask" dev "$interface"
  [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
  echo "$router" > /tmp/router
  echo "$dns" > /tmp/dns
;; esac
exit 0
"""

# Each check prints its line whatever happens (each has a time limit), so a
# failure shows as a wrong value rather than a missing line or a hang;
# "RESULT done" closes the run.
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

if ping -c 2 -w 10 "$pt_remote4" >/dev/null 2>&1; then r=ok; else r=fail; fi
echo "RESULT ping $r"

# fetch ADDR SEED: sha256 of what the remote "source" server sends
fetch() { echo "$pt_size $2" | timeout 30 nc "$1" "$pt_source" | sha256sum; }
echo "RESULT tcp-down $(fetch "$pt_remote4" "$pt_seed")"

dd if=/dev/urandom of=/tmp/up bs=65536 count=$((pt_size / 65536)) 2>/dev/null
echo "RESULT tcp-up-sent $(sha256sum </tmp/up | cut -d' ' -f1) $(wc -c </tmp/up)"
echo "RESULT tcp-up-got $(timeout 30 nc "$pt_remote4" "$pt_sink" </tmp/up)"

dns=$(cat /tmp/dns 2>/dev/null); dns=${dns%% *}
echo "RESULT dns $(timeout 10 nslookup -type=a "$pt_name" "$dns" 2>/dev/null |
  awk '/^Name:/ {n = 1} n && /^Address/ {print $2}')"

i=0; addr6=
while [ -z "$addr6" ] && [ $i -lt 100 ]; do
  addr6=$(ip -6 addr show dev eth0 scope global | grep inet6 | grep -v tentative |
    awk '{print $2}')
  [ -z "$addr6" ] && sleep 0.1
  i=$((i + 1))
done
echo "RESULT slaac $addr6"
echo "RESULT tcp6-down $(fetch "$pt_remote6" "$pt_seed6")"

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
    for index, path in enumerate(modules):
        name = f"modules/{index:02d}-{_module_name(path)}.ko"
        archive.file(name, _module_bytes(os.path.join(moddir, path)))
    archive.file("udhcpc.sh", UDHCPC_SCRIPT.encode(), 0o755)
    archive.file("init", INIT_SCRIPT.encode(), 0o755)
    with open(dest, "wb") as handle:
        handle.write(gzip.compress(archive.finish(), compresslevel=1))
    return [_module_name(path) for path in modules]


# -- running it ----------------------------------------------------------------------------
def kvm_usable() -> bool:
    """/dev/kvm opens read-write (it may still fail a guest: see run_guest)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def qemu_command(qemu: str, accel: str, kernel: str, initrd: str, socket_path: str,
                 params: Mapping[str, object], mac: str = "52:54:00:12:34:56") -> list[str]:
    cpu = ["-cpu", "host"] if accel == "kvm" else []
    append = " ".join(["console=ttyS0", "quiet", "panic=-1"]
                      + [f"pt_{key}={value}" for key, value in params.items()])
    return [qemu, "-accel", accel, *cpu, "-nodefaults", "-nographic", "-no-reboot",
            "-serial", "stdio", "-m", "256", "-smp", "1",
            "-kernel", kernel, "-initrd", initrd, "-append", append,
            "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={socket_path}",
            # romfile=: no PXE ROM (the kernel is loaded directly; ipxe-qemu not needed)
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile="]


@dataclasses.dataclass
class GuestRun:
    console: str
    returncode: int | None  # None: killed (did not boot, or did not finish in time)
    booted: bool
    elapsed: float

    @property
    def results(self) -> dict[str, str]:
        return parse_results(self.console)


def run_guest(spawn: Callable[..., subprocess.Popen], command: list[str], log_path: str,
              boot_timeout: float, timeout: float) -> GuestRun:
    """Run QEMU (``spawn`` starts it, in the test's namespace) until the guest
    powers off.  Killed if the init script has not started within
    ``boot_timeout`` s, if the whole run takes more than ``timeout`` s, or
    on a KVM internal error (QEMU then stops the VM and waits forever):
    nested KVM can be so slow or broken that TCG is the better choice."""
    with open(log_path, "wb") as log:
        vm = spawn(*command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    booted = False
    while True:
        returncode = vm.poll()
        with open(log_path, "rb") as log:
            console = log.read().decode(errors="replace")
        if returncode is not None:
            break
        booted = booted or "RESULT boot" in console
        elapsed = time.monotonic() - started
        if ("KVM internal error" in console or elapsed > timeout
                or (not booted and elapsed > boot_timeout)):
            vm.kill()
            vm.wait()
            returncode = None
            break
        time.sleep(0.1)
    return GuestRun(console, returncode, booted or "RESULT boot" in console,
                    time.monotonic() - started)


def parse_results(console: str) -> dict[str, str]:
    """The ``RESULT name value`` lines of the serial console, by name."""
    results = {}
    for line in console.splitlines():
        match = RESULT.search(line.strip("\r"))
        if match:
            results[match.group(1)] = match.group(2).strip()
    return results
