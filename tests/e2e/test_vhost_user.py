"""passt --vhost-user with a real virtual machine: QEMU shares the guest's
RAM (a memfd) with passt-sep, which reads and writes the virtio-net rings
in it.  The same guest and checks as over the stream socket
(tests/e2e/test_qemu.py), then QEMU is killed and a new one is served by the
same passt-sep.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import qemu_guest
from peers import digest_of

from topology import GW_ADDR4, HOST_ADDR4, PREFIX4, REMOTE_ADDR4, Topology

HALF_CLOSE_LINE = b"half-close\n"
# As tests/e2e/test_qemu.py's run over the stream socket.
FWD_HOST_PORT, FWD_GUEST_PORT = 10080, 8080
SIZE, SIZE6 = 20 << 20, 4 << 20
UDP_SIZES = (1, 1400, 8000, 65000)
SEED4, SEED6 = 11, 12
GUEST_TIMEOUT = 300


@pytest.fixture(scope="module")
def guest_image(tmp_path_factory: pytest.TempPathFactory) -> qemu_guest.GuestImage:
    try:
        return qemu_guest.prepare_image(str(tmp_path_factory.mktemp("qemu-guest")))
    except qemu_guest.GuestImageError as exc:
        pytest.skip(str(exc))


def guest_params(checks: str, size: int = SIZE) -> dict[str, object]:
    return qemu_guest.check_params(
        checks, size, seed=SEED4, size6=SIZE6, seed6=SEED6,
        udp_sizes=",".join(map(str, UDP_SIZES)), fwd=FWD_GUEST_PORT, name="name.example.test")


def assert_dhcp(results: dict[str, str], where: str) -> None:
    assert results["dhcp"] == f"{HOST_ADDR4}/{PREFIX4}", where
    assert results["router"] == GW_ADDR4, where


def start_vhost(topo: Topology, passt: str, socket_path: str, *args: str) -> subprocess.Popen:
    daemon = topo.spawn_host(passt, "-f", "-q", "--vhost-user", "-s", socket_path, *args,
                             stderr=subprocess.PIPE, text=True)
    qemu_guest.wait_for_socket(socket_path, daemon)
    return daemon


def run_vm(topo: Topology, image: qemu_guest.GuestImage, socket_path: str, log: str,
           params: dict[str, object], until: str | None = None,
           on_result=None) -> qemu_guest.GuestRun:
    def attempt(accel: str) -> qemu_guest.GuestRun:
        command = qemu_guest.qemu_vhost_user_command(image, accel, socket_path, params)
        return qemu_guest.run_guest(topo.spawn_host, command, log,
                                    qemu_guest.BOOT_TIMEOUT[accel], GUEST_TIMEOUT, until,
                                    on_result=on_result)
    return qemu_guest.boot(attempt)


@pytest.mark.slow
def test_vhost_user_guest_checks_then_a_restarted_qemu(
        topo: Topology, passt: str, shared_tmp,
        guest_image: qemu_guest.GuestImage) -> None:
    qemu_guest.start_remote_peers(topo)
    socket_path = str(shared_tmp / "vhost.socket")
    daemon = start_vhost(topo, passt, socket_path, "-t", f"{FWD_HOST_PORT}:{FWD_GUEST_PORT}")
    started: dict[str, subprocess.Popen] = {}

    def fetch_forwarded(_: str) -> None:
        started["fetch"] = topo.spawn_host(sys.executable, qemu_guest.PEERS, "drain",
                                           "127.0.0.1", str(FWD_HOST_PORT),
                                           stdout=subprocess.PIPE, text=True)

    params = guest_params("ping,tcpdown,tcpup,halfclose,udp,dns,ipv6,fwd,hold")
    first = run_vm(topo, guest_image, socket_path, str(shared_tmp / "first.log"), params,
                   until="holding", on_result={"fwd-listening": fetch_forwarded})
    results, where = first.results, first.describe()
    print(f"QEMU guest on vhost-user ({first.accel}): {first.elapsed:.1f} s; "
          + ", ".join(f"{k[5:]} {first.seconds(k[5:]):.1f} s" for k in results
                      if k.startswith("time-")))
    assert first.booted, "the guest never ran its init script" + where
    assert "holding" in results, "the guest did not get through its checks" + where
    assert "insmod-failed" not in results, where
    assert_dhcp(results, where)
    assert results["dns-server"].split()[0] == REMOTE_ADDR4, where
    assert results["mtu"] == "65520", where
    assert results["ping"] == "ok", where
    assert results["tcp-down"].split()[0] == digest_of(SIZE, SEED4), where
    sent_digest, sent_size = results["tcp-up-sent"].split()
    assert int(sent_size) == SIZE, where
    assert results["tcp-up-got"] == f"{sent_digest} {sent_size}", where
    # The guest half-closed, the sink answered after that FIN and closed: the
    # answer and the sink's FIN both reached the guest (nc ended by itself).
    answer = f"{hashlib.sha256(HALF_CLOSE_LINE).hexdigest()} {len(HALF_CLOSE_LINE)}"
    assert results["halfclose"] == f"0 {answer}", where
    assert first.seconds("halfclose") < 10, where
    assert results["udp-echo"] == " ".join(f"{n}:ok" for n in UDP_SIZES), where
    assert results["dns"] == "203.0.113.53", where
    assert results["slaac"].startswith("2001:db8:1:"), where
    assert results["tcp6-down"].split()[0] == digest_of(SIZE6, SEED6), where
    assert results["udp6-echo"] == " ".join(f"{n}:ok" for n in UDP_SIZES), where
    assert results["fwd-served"] == "0", where
    forwarded = started["fetch"].communicate(timeout=60)[0].strip()
    assert forwarded == f"{sent_digest} {sent_size}", where
    assert first.returncode is None, where          # killed while holding
    assert daemon.poll() is None, daemon.stderr.read()

    # A new QEMU on the same socket: a fresh negotiation, memory and rings.
    size = 4 << 20
    second = run_vm(topo, guest_image, socket_path, str(shared_tmp / "second.log"),
                    guest_params("tcpdown,tcpup", size))
    results, where = second.results, second.describe()
    assert second.returncode == 0 and "done" in results, where
    assert_dhcp(results, where)
    assert results["tcp-down"].split()[0] == digest_of(size, SEED4), where
    sent_digest, sent_size = results["tcp-up-sent"].split()
    assert results["tcp-up-got"] == f"{sent_digest} {sent_size}", where
    assert daemon.poll() is None, "passt-sep exited without --one-off"
    daemon.terminate()
    assert daemon.wait(timeout=20) == 0, daemon.stderr.read()
