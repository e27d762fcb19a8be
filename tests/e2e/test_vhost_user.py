"""passt --vhost-user with a real virtual machine: QEMU shares the guest's
RAM (a memfd) with passt-sep, which reads and writes the virtio-net rings
in it.  The same guest and checks as over the stream socket
(tests/e2e/test_qemu.py), then QEMU is killed and a new one is served by the
same passt-sep.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
import qemu_guest
from procstat import logged_counters
from qemu_guest import (
    FWD_GUEST_PORT,
    FWD_HOST_PORT,
    GUEST_TIMEOUT,
    assert_dhcp,
    assert_standard_results,
    assert_tcp_both_ways,
    standard_params,
)

from passt_sep import vhost_user
from passt_sep.virtqueue import DESC_F_NEXT, DESC_F_WRITE

from topology import GW_ADDR4, HOST_ADDR4, Topology

HALF_CLOSE_LINE = b"half-close\n"



def start_vhost(topo: Topology, passt: str, socket_path: str, *args: str,
                quiet: bool = True) -> subprocess.Popen:
    daemon = topo.spawn_host(passt, "-f", *(["-q"] if quiet else []), "--vhost-user",
                             "-s", socket_path, *args,
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

    params = standard_params("ping,tcpdown,tcpup,halfclose,udp,dns,ipv6,fwd,hold")
    first = run_vm(topo, guest_image, socket_path, str(shared_tmp / "first.log"), params,
                   until="holding", on_result={"fwd-listening": fetch_forwarded})
    results, where = first.results, first.describe()
    print(f"QEMU guest on vhost-user ({first.accel}): {first.elapsed:.1f} s; "
          + ", ".join(f"{k[5:]} {first.seconds(k[5:]):.1f} s" for k in results
                      if k.startswith("time-")))
    assert first.booted, "the guest never ran its init script" + where
    assert "holding" in results, "the guest did not get through its checks" + where
    uploaded = assert_standard_results(results, where)
    # The guest half-closed, the sink answered after that FIN and closed: the
    # answer and the sink's FIN both reached the guest (nc ended by itself).
    answer = f"{hashlib.sha256(HALF_CLOSE_LINE).hexdigest()} {len(HALF_CLOSE_LINE)}"
    assert results["halfclose"] == f"0 {answer}", where
    assert first.seconds("halfclose") < 10, where
    forwarded = started["fetch"].communicate(timeout=60)[0].strip()
    assert forwarded == uploaded, where
    assert first.returncode is None, where          # killed while holding
    assert daemon.poll() is None, daemon.stderr.read()

    # A new QEMU on the same socket: a fresh negotiation, memory and rings.
    run_transfers(topo, guest_image, socket_path, str(shared_tmp / "second.log"), 4 << 20)
    assert daemon.poll() is None, "passt-sep exited without --one-off"
    daemon.terminate()
    assert daemon.wait(timeout=20) == 0, daemon.stderr.read()


@pytest.mark.slow
def test_vhost_user_at_mtu_1500_moves_every_byte_in_segments_of_a_buffer(
        topo: Topology, passt: str, shared_tmp,
        guest_image: qemu_guest.GuestImage) -> None:
    """At MTU 1500 a frame fits one of the guest's receive buffers: the
    rings carry many small frames per peek instead of few merged ones."""
    qemu_guest.start_remote_peers(topo)
    socket_path = str(shared_tmp / "vhost.socket")
    daemon = start_vhost(topo, passt, socket_path, "-m", "1500", quiet=False)
    results, where = run_transfers(topo, guest_image, socket_path,
                                   str(shared_tmp / "mtu1500.log"), 8 << 20)
    assert results["mtu"] == "1500", where
    counters, log = stop_with_counters(daemon)
    assert "internal_error" not in counters, log
    assert "vhost_rx_full" not in counters, log


def run_transfers(topo: Topology, image: qemu_guest.GuestImage, socket_path: str, log: str,
                  size: int) -> tuple[dict[str, str], str]:
    """A guest's lease and ``size`` bytes over TCP each way, checked; its
    results and their description."""
    guest = run_vm(topo, image, socket_path, log, standard_params("tcpdown,tcpup", size))
    results, where = guest.results, guest.describe()
    assert guest.returncode == 0 and "done" in results, where
    assert_dhcp(results, where)
    assert_tcp_both_ways(results, where, size)
    return results, where


def stop_with_counters(daemon: subprocess.Popen) -> tuple[dict[str, int], str]:
    """The worker's counters (SIGUSR1), then a clean stop; the counters and
    the whole log."""
    os.kill(worker_of(daemon.pid), signal.SIGUSR1)
    time.sleep(0.5)
    daemon.terminate()
    assert daemon.wait(timeout=20) == 0
    log = daemon.stderr.read()
    return logged_counters(log), log


# -- a hand-made front-end: hostile rings over the real socket -----------------------
RING_NUM, REGION = 8, 1 << 20
UVA_BASE = 0x7F0000000000
RINGS_AT = {vhost_user.RX: 0x0, vhost_user.TX: 0x1000}    # desc; avail +0x200, used +0x400
BUFFERS = 0x10000


class FrontEnd:
    """The QEMU side of the protocol, by hand, on one memfd of guest RAM."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(10)
        self.fd = os.memfd_create("guest", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, REGION)
        self.ram = mmap.mmap(self.fd, REGION)
        self.kick = {i: os.eventfd(0, os.EFD_NONBLOCK) for i in RINGS_AT}
        self.call = {i: os.eventfd(0, os.EFD_NONBLOCK) for i in RINGS_AT}
        self.avail = dict.fromkeys(RINGS_AT, 0)

    def send(self, request: int, payload: bytes = b"", fds: list[int] | None = None,
             flags: int = vhost_user.VERSION) -> None:
        data = vhost_user.HEADER.pack(request, flags, len(payload)) + payload
        fds = fds or []
        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))
        self.sock.sendmsg([data], [rights] if fds else [])

    def answer(self) -> bytes:
        head = self.sock.recv(vhost_user.HEADER.size, socket.MSG_WAITALL)
        _, _, size = vhost_user.HEADER.unpack(head)
        return self.sock.recv(size, socket.MSG_WAITALL)

    def set_up(self) -> None:
        self.send(vhost_user.GET_FEATURES)
        assert struct.unpack("<Q", self.answer())[0] & 1 << vhost_user.F_VERSION_1
        self.send(vhost_user.SET_FEATURES, struct.pack(
            "<Q", 1 << vhost_user.F_VERSION_1 | 1 << vhost_user.F_MRG_RXBUF))
        self.send(vhost_user.SET_MEM_TABLE,
                  struct.pack("<IIQQQQ", 1, 0, 0, REGION, UVA_BASE, 0), [self.fd])
        for index, desc in RINGS_AT.items():
            self.send(vhost_user.SET_VRING_NUM, struct.pack("<II", index, RING_NUM))
            self.send(vhost_user.SET_VRING_BASE, struct.pack("<II", index, 0))
            self.send(vhost_user.SET_VRING_ADDR, struct.pack(
                "<IIQQQQ", index, 0, UVA_BASE + desc, UVA_BASE + desc + 0x400,
                UVA_BASE + desc + 0x200, 0))
            self.send(vhost_user.SET_VRING_CALL, struct.pack("<Q", index), [self.call[index]])
            self.send(vhost_user.SET_VRING_KICK, struct.pack("<Q", index), [self.kick[index]])

    def desc(self, ring: int, slot: int, addr: int, length: int, flags: int = 0,
             nxt: int = 0) -> None:
        struct.pack_into("<QIHH", self.ram, RINGS_AT[ring] + 16 * slot, addr, length, flags, nxt)

    def offer(self, ring: int, head: int) -> None:
        avail = RINGS_AT[ring] + 0x200
        struct.pack_into("<H", self.ram, avail + 4 + 2 * (self.avail[ring] % RING_NUM), head)
        self.avail[ring] += 1
        struct.pack_into("<H", self.ram, avail + 2, self.avail[ring])

    def used(self, ring: int) -> list[tuple[int, int]]:
        used = RINGS_AT[ring] + 0x400
        (idx,) = struct.unpack_from("<H", self.ram, used + 2)
        return [struct.unpack_from("<II", self.ram, used + 4 + 8 * i) for i in range(idx)]


def arp_request() -> bytes:
    mac = bytes.fromhex("525400123456")
    return (b"\xff" * 6 + mac + b"\x08\x06" + bytes.fromhex("0001080006040001") + mac
            + socket.inet_aton(HOST_ADDR4) + bytes(6) + socket.inet_aton(GW_ADDR4))


def test_hostile_rings_are_counted_and_a_good_frame_still_answered(
        topo: Topology, passt: str, shared_tmp) -> None:
    socket_path = str(shared_tmp / "vhost.socket")
    daemon = start_vhost(topo, passt, socket_path, quiet=False)
    front = FrontEnd(socket_path)
    front.set_up()
    for slot in range(RING_NUM):                       # receive buffers, 2 KiB each
        front.desc(vhost_user.RX, slot, BUFFERS + slot * 2048, 2048, DESC_F_WRITE)
        front.offer(vhost_user.RX, slot)
    frame = bytes(12) + arp_request()
    front.ram[0x20000:0x20000 + len(frame)] = frame
    front.desc(vhost_user.TX, 0, 0x30000, 64, DESC_F_NEXT, 1)      # a loop: 0 -> 1 -> 0
    front.desc(vhost_user.TX, 1, 0x30000, 64, DESC_F_NEXT, 0)
    front.desc(vhost_user.TX, 2, REGION - 10, 64)                   # beyond guest RAM
    front.desc(vhost_user.TX, 3, 0x30000, 0xFFFFFFFF)               # a huge length
    front.desc(vhost_user.TX, 4, 0x20000, len(frame))               # the ARP request
    for head in (0, 2, 3, 4, 9):                                    # 9: beyond the table
        front.offer(vhost_user.TX, head)
    os.eventfd_write(front.kick[vhost_user.TX], 1)
    deadline = time.monotonic() + 10
    replies: list[bytes] = []
    while not replies and time.monotonic() < deadline:
        time.sleep(0.05)
        for head, length in front.used(vhost_user.RX):
            got = bytes(front.ram[BUFFERS + head * 2048:BUFFERS + head * 2048 + length])
            if got[12 + 12:12 + 14] == b"\x08\x06" and got[12 + 20:12 + 22] == b"\x00\x02":
                replies.append(got[12:])
    assert replies, "no ARP reply in the receive ring"
    assert replies[0][28:32] == socket.inet_aton(GW_ADDR4)          # the gateway's address
    assert sorted(head for head, _ in front.used(vhost_user.TX)) == [0, 2, 3, 4]
    # Garbage: the connection is dropped, the worker lives on and takes the next.
    front.sock.sendall(b"\x01\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff")
    assert front.sock.recv(1) == b""
    again = FrontEnd(socket_path)
    again.send(vhost_user.GET_FEATURES)
    assert struct.unpack("<Q", again.answer())[0] == vhost_user.OFFERED
    assert daemon.poll() is None
    counters, log = stop_with_counters(daemon)
    assert counters.get("vhost_desc_loop") == 1, log
    assert counters.get("vhost_bad_address") == 2, log
    assert counters.get("vhost_bad_head") == 1, log
    assert "internal_error" not in counters, log


def worker_of(pid: int) -> int:
    """The last-born descendant of ``pid``: passt-sep's worker."""
    while True:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            children = handle.read().split()
        if not children:
            return pid
        pid = int(children[-1])
