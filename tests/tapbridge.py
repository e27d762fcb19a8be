"""A guest for passt mode without a VM: bridge a tap device to passt's socket.

Run inside a network namespace (as root): it creates tap ``IFNAME`` there,
connects to passt-sep's UNIX socket, and copies frames both ways, adding
and removing passt's 4-byte big-endian length.  The namespace's own kernel
is then the guest (DHCP client, TCP/IP stack), like QEMU's virtio-net would
be for a VM.  Usage: tapbridge.py SOCKET IFNAME
"""

from __future__ import annotations

import fcntl
import os
import selectors
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def connect(path: str, timeout: float = 20.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise EOFError
        data += more
    return data


def main(path: str, ifname: str) -> None:
    tap = open_tap(ifname)
    sock = connect(path)
    os.system(f"ip link set {ifname} up")
    selector = selectors.DefaultSelector()
    selector.register(tap, selectors.EVENT_READ, "tap")
    selector.register(sock, selectors.EVENT_READ, "sock")
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "tap":
                    frame = os.read(tap, 65536 + 14)
                    sock.sendall(struct.pack("!I", len(frame)) + frame)
                else:
                    (length,) = struct.unpack("!I", recv_exact(sock, 4))
                    os.write(tap, recv_exact(sock, length))
    except EOFError:
        return


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
