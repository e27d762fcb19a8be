"""The tap device inside the target network namespace (pasta mode).

Runs in the netlink helper (``netlink.py``), inside the namespace: the
interface is created in the namespace of the task that calls TUNSETIFF, and
its fd keeps working from anywhere afterwards.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from ..tap import VNET_HDR_SIZE

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04

# Frames the tap holds for the worker (its txqueuelen; the kernel's default
# is 1000).  A program in the namespace can write datagrams several times
# faster than the worker translates them, and what does not fit this queue
# is dropped (the tap's tx_dropped): 12288 holds a burst of 10,000 even
# while the worker gets no CPU at all.  The frames are kernel memory no
# socket is charged for: a 1000-byte datagram takes 2304 bytes (27 MiB for
# a full queue of those), a full-size frame at MTU 65520 about 66 KiB (at
# most 800 MiB, a queue of nothing else).  The namespace's owner can set
# any txqueuelen on its own taps anyway (``ip link set ... txqueuelen``).
TAP_QUEUE_LEN = 12288
_IFREQ = struct.Struct("16sH22x")


class TapError(Exception):
    """The tap device could not be created."""


def open_tap(name: str) -> int:
    """Create tap ``name`` in the current network namespace; return its fd."""
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise TapError(f"cannot open {TUN_DEVICE}: {exc.strerror} "
                       "(it should be mode 0666, or load the tun module)") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(),
                                               IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError as exc:
        os.close(fd)
        hint = " (no CAP_NET_ADMIN in the namespace's owner)" if exc.errno == errno.EPERM else ""
        raise TapError(f"cannot create tap device {name}: {exc.strerror}{hint}") from None
    _offloads(fd)
    return fd


def _offloads(fd: int) -> None:
    """Each frame carries a virtio-net header, so the namespace may hand us
    TCP segments of up to 64 KiB at any MTU (TSO) with their checksums left
    to us (we never verify them on the tap: nothing between can corrupt a
    frame), and our frames say their checksums are valid."""
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError as exc:
        os.close(fd)
        raise TapError(f"cannot enable offloads on the tap device: {exc.strerror}") from None
