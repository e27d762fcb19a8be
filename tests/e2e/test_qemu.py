"""passt mode with a real virtual machine: QEMU's -netdev stream on passt-sep's socket.

The guest is Debian's kernel with a busybox initramfs (tests/qemu_guest.py):
virtio-net, busybox udhcpc, ping, nc and nslookup and a small UDP echo
client against passt-sep, every check's outcome printed on the serial
console.  KVM when /dev/kvm opens, else TCG (a CI runner without nested
virtualisation); TCG also takes over when the guest does not get to its
init script under KVM in BOOT_TIMEOUT (nested KVM can be slower than TCG,
or stop on an internal error).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import qemu_guest
from peers import digest_of
from qemu_guest import (
    FWD_GUEST_PORT,
    FWD_HOST_PORT,
    GUEST_TIMEOUT,
    SEED4,
    assert_dhcp,
    assert_standard_results,
    assert_tcp_both_ways,
    standard_params,
)

from topology import Topology


def start_passt(topo: Topology, passt: str, socket_path: str, *args: str) -> subprocess.Popen:
    daemon = topo.spawn_host(passt, "-f", "-q", "-s", socket_path, *args,
                             stderr=subprocess.PIPE, text=True)
    qemu_guest.wait_for_socket(socket_path, daemon)
    return daemon



@pytest.mark.slow
def test_qemu_guest_dhcp_ping_tcp_udp_dns_ipv6_and_forwarded_port(
        topo: Topology, passt: str, shared_tmp, guest_image: qemu_guest.GuestImage) -> None:
    qemu_guest.start_remote_peers(topo)
    params = standard_params("ping,tcpdown,tcpup,udp,dns,ipv6,fwd")
    started: dict[str, subprocess.Popen] = {}

    def fetch_forwarded(_: str) -> None:
        """From the host side, through passt-sep's -t port, what the guest serves."""
        started["fetch"] = topo.spawn_host(sys.executable, qemu_guest.PEERS, "drain",
                                           "127.0.0.1", str(FWD_HOST_PORT),
                                           stdout=subprocess.PIPE, text=True)

    def attempt(accel: str) -> qemu_guest.GuestRun:
        socket_path = str(shared_tmp / f"passt-{accel}.socket")
        # One-off, as libvirt runs it: passt-sep ends when QEMU closes the socket.
        started["passt"] = start_passt(topo, passt, socket_path, "-1",
                                       "-t", f"{FWD_HOST_PORT}:{FWD_GUEST_PORT}")
        command = qemu_guest.qemu_command(guest_image, accel, socket_path, params)
        run = qemu_guest.run_guest(topo.spawn_host, command, str(shared_tmp / f"{accel}.log"),
                                   qemu_guest.BOOT_TIMEOUT[accel], GUEST_TIMEOUT,
                                   on_result={"fwd-listening": fetch_forwarded})
        if not run.booted:
            started["passt"].kill()
        return run

    run = qemu_guest.boot(attempt)
    results, where = run.results, run.describe()
    print(f"QEMU guest ({run.accel}): {run.elapsed:.1f} s; "
          + ", ".join(f"{k[5:]} {run.seconds(k[5:]):.1f} s" for k in results
                      if k.startswith("time-")))
    assert run.booted, "the guest never ran its init script" + where
    assert run.returncode == 0 and "done" in results, "the guest did not finish" + where
    uploaded = assert_standard_results(results, where)
    forwarded = started["fetch"].communicate(timeout=60)[0].strip()
    assert forwarded == uploaded, where
    # One-off: passt-sep ends cleanly once the VM is gone.
    daemon = started["passt"]
    assert daemon.wait(timeout=20) == 0, daemon.stderr.read()


def connections_to(topo: Topology, port: int) -> str:
    """passt-sep's TCP connections to ``port`` (host namespace), any state
    but closed."""
    return topo.run_host("ss", "-Htn", f"dport = :{port}").stdout


@pytest.mark.slow
def test_qemu_guest_killed_then_a_new_guest_gets_dhcp_and_tcp(
        topo: Topology, passt: str, shared_tmp, guest_image: qemu_guest.GuestImage) -> None:
    """Without --one-off, passt-sep outlives a VM killed in the middle of a
    download (SIGKILL: no FIN, no DHCP release) and serves the next VM on
    the same socket: the dead guest's flows are closed, the new guest gets
    its lease and moves data."""
    qemu_guest.start_remote_peers(topo)
    socket_path = str(shared_tmp / "passt.socket")
    daemon = start_passt(topo, passt, socket_path)
    size = 4 << 20

    def attempt(checks: str, until: str | None, log: str):
        def run(accel: str) -> qemu_guest.GuestRun:
            command = qemu_guest.qemu_command(guest_image, accel, socket_path,
                                              standard_params(checks, size))
            return qemu_guest.run_guest(topo.spawn_host, command, str(shared_tmp / log),
                                        qemu_guest.BOOT_TIMEOUT[accel], GUEST_TIMEOUT, until)
        return run

    first = qemu_guest.boot(attempt("tcpdown,hold", "holding", "first.log"))
    where = first.describe()
    assert first.booted and first.returncode is None, where  # killed while holding
    assert_dhcp(first.results, where)
    assert first.results["tcp-down"].split()[0] == digest_of(size, SEED4), where
    assert daemon.poll() is None, daemon.stderr.read()

    # The killed guest's download is not left open towards the remote.
    deadline = time.monotonic() + 10
    while connections_to(topo, qemu_guest.SOURCE_PORT) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not connections_to(topo, qemu_guest.SOURCE_PORT), "the dead guest's flow is still open"

    second = qemu_guest.boot(attempt("tcpdown,tcpup", None, "second.log"))
    results, where = second.results, second.describe()
    print(f"QEMU guests ({second.accel}): first {first.elapsed:.1f} s, "
          f"second {second.elapsed:.1f} s")
    assert second.returncode == 0 and "done" in results, where
    assert_dhcp(results, where)
    assert_tcp_both_ways(results, where, size)
    assert daemon.poll() is None, "passt-sep exited without --one-off"
