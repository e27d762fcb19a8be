"""passt mode with a real virtual machine: QEMU's -netdev stream on passt-sep's socket.

The guest is Debian's kernel with a busybox initramfs (tests/qemu_guest.py):
virtio-net, busybox udhcpc, ping, nc and nslookup against passt-sep, every
check's outcome printed on the serial console.  KVM when /dev/kvm opens,
else TCG (a CI runner without nested virtualisation); TCG also takes over
when the guest does not get to its init script under KVM in BOOT_TIMEOUT
(nested KVM can be slower than TCG, or stop on an internal error).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import qemu_guest
from peers import digest_of

from topology import GW_ADDR4, HOST_ADDR4, PREFIX4, REMOTE_ADDR4, REMOTE_ADDR6, Topology

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(TESTS, "peers.py")
PY = sys.executable
QEMU = "qemu-system-x86_64"
SOURCE_PORT, SINK_PORT = 9001, 9000
SIZE = 4 << 20
SEED4, SEED6 = 11, 12
GUEST_TIMEOUT = 150  # the whole run; TCG here: about 10 s
# Until the init script starts: a second with working KVM (nested KVM can
# be slower than TCG, or fail: then TCG takes over); TCG here: about 5 s.
BOOT_TIMEOUT = {"kvm": 10, "tcg": 90}


@pytest.fixture(scope="session")
def guest_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(qemu, kernel, initramfs), built once per session."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    kernel = qemu_guest.find_kernel()
    if kernel is None:
        pytest.skip("no guest kernel: no /boot/vmlinuz-* with /lib/modules "
                    "(apt-get install linux-image-cloud-amd64)")
    image, moddir = kernel
    initrd = str(tmp_path_factory.mktemp("qemu-guest") / "initramfs.gz")
    qemu_guest.build_initramfs(moddir, initrd)
    return qemu, image, initrd


def wait_for_socket(path: str, daemon: subprocess.Popen, timeout: float = 20) -> None:
    """Until passt-sep's socket exists (QEMU's server=off gives up at once)."""
    deadline = time.monotonic() + timeout
    # Not connecting to it: that would use up the one-off daemon's only guest.
    while not os.path.exists(path):
        if daemon.poll() is not None:
            raise RuntimeError(f"passt-sep exited with {daemon.returncode}: "
                               f"{daemon.stderr.read()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"passt-sep made no socket at {path}")
        time.sleep(0.05)
    time.sleep(0.1)  # bound, then listening: let the broker get to listen()


def accelerators() -> list[str]:
    """KVM first when /dev/kvm opens, TCG as the fallback; PASST_SEP_QEMU_ACCEL
    (kvm or tcg) forces one."""
    forced = os.environ.get("PASST_SEP_QEMU_ACCEL")
    if forced:
        return [forced]
    return ["kvm", "tcg"] if qemu_guest.kvm_usable() else ["tcg"]


@pytest.mark.slow
def test_qemu_guest_dhcp_ping_tcp_dns_and_slaac(topo: Topology, passt: str, shared_tmp,
                                               guest_image: tuple[str, str, str]) -> None:
    qemu, kernel, initrd = guest_image
    for kind, port in (("sink", SINK_PORT), ("source", SOURCE_PORT)):
        topo.spawn_remote(PY, PEERS, kind, str(port))
        topo.wait_listening(port)
    for address in (REMOTE_ADDR4, REMOTE_ADDR6):  # the host's resolvers (resolv.conf)
        topo.spawn_remote(PY, PEERS, "dns", "53", address)
    topo.wait_listening(53, "udp")
    params = {"remote4": REMOTE_ADDR4, "remote6": REMOTE_ADDR6, "source": SOURCE_PORT,
              "sink": SINK_PORT, "size": SIZE, "seed": SEED4, "seed6": SEED6,
              "name": "name.example.test"}

    tried = []
    for accel in accelerators():
        socket_path = str(shared_tmp / f"passt-{accel}.socket")
        # One-off, as libvirt runs it: passt-sep ends when QEMU closes the socket.
        daemon = topo.spawn_host(passt, "-f", "-q", "-1", "-s", socket_path,
                                 stderr=subprocess.PIPE, text=True)
        wait_for_socket(socket_path, daemon)
        command = qemu_guest.qemu_command(qemu, accel, kernel, initrd, socket_path, params)
        run = qemu_guest.run_guest(topo.spawn_host, command, str(shared_tmp / f"{accel}.log"),
                                   BOOT_TIMEOUT[accel], GUEST_TIMEOUT)
        tried.append(f"{accel}: {'booted' if run.booted else 'did not boot'} "
                     f"in {run.elapsed:.1f} s")
        if run.booted:
            break
        daemon.kill()
    print("QEMU guest: " + "; ".join(tried))
    results = run.results
    print(results)
    where = f"\n{'; '.join(tried)}; QEMU exit {run.returncode}; console:\n{run.console}"

    assert run.booted, "the guest never ran its init script" + where
    assert run.returncode == 0 and "done" in results, "the guest did not finish" + where
    assert "insmod-failed" not in results, where
    # DHCP: the host's own address, prefix, gateway and resolver.
    assert results["dhcp"] == f"{HOST_ADDR4}/{PREFIX4}", where
    assert results["router"] == GW_ADDR4, where
    assert results["dns-server"].split()[0] == REMOTE_ADDR4, where
    # ICMP echo, through passt-sep's ping sockets.
    assert results["ping"] == "ok", where
    # TCP both ways: remote -> guest and guest -> remote.
    assert results["tcp-down"].split()[0] == digest_of(SIZE, SEED4), where
    sent_digest, sent_size = results["tcp-up-sent"].split()
    assert int(sent_size) == SIZE, where
    assert results["tcp-up-got"] == f"{sent_digest} {sent_size}", where
    # UDP: a DNS query to the resolver DHCP handed out.
    assert results["dns"] == "203.0.113.53", where
    # IPv6: SLAAC from passt-sep's router advertisements, then TCP.
    assert results["slaac"].startswith("2001:db8:1:"), where
    assert results["tcp6-down"].split()[0] == digest_of(SIZE, SEED6), where
    # One-off: passt-sep ends cleanly once the VM is gone.
    assert daemon.wait(timeout=20) == 0, daemon.stderr.read()
