"""TapLink's reads: bursts are read whole in one loop round, a lone frame per
wakeup costs one read and no failing one.  A datagram socketpair stands in
for the tap (one frame per read, like the tap); a real epoll loop."""

from __future__ import annotations

import os
import socket

import pytest

from passt_sep.system.log import Logger
from passt_sep.tap import VNET_HDR_SIZE
from passt_sep.tcp_wire import ACK, build_tcp_frame
from passt_sep.worker import guest
from passt_sep.worker.guest import Capture, TapLink
from passt_sep.worker.loop import EPOLLIN, Loop

FRAME = bytes(VNET_HDR_SIZE) + bytes(range(60))


class Receiver:
    """What the link reports to: the frames, and whether a guest came."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.connected = 0

    def on_frame(self, frame: memoryview, now: float) -> None:
        self.frames.append(bytes(frame))

    def on_connect(self) -> None:
        self.connected += 1

    def on_disconnect(self) -> None:
        raise AssertionError("a tap does not go away")

    def on_offload(self, on: bool) -> None:
        raise AssertionError("a tap's offloads are set by the broker")


@pytest.fixture
def link(monkeypatch: pytest.MonkeyPatch):
    """(send one frame, run one loop round, run a round with another fd's
    event, frames delivered, reads made)."""
    tap, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    other, other_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    loop = Loop()
    loop.add_fd(other.fileno(), EPOLLIN, lambda fd, events, now: other.recv(1))
    tap_link = TapLink(loop, tap.fileno(), Capture(None), Logger("test"), 1500)
    receiver = Receiver()
    tap_link.start(receiver)
    assert receiver.connected == 1                  # the namespace is there at once
    delivered = receiver.frames
    reads = []
    real_readv = os.readv

    def counting_readv(fd: int, buffers: list) -> int:
        reads.append(fd)
        return real_readv(fd, buffers)

    monkeypatch.setattr(guest.os, "readv", counting_readv)
    def other_round() -> None:
        other_end.send(b"x")
        assert loop.poll_once(0)

    yield guest_end.send, lambda: loop.poll_once(0), other_round, delivered, reads
    for sock in (tap, guest_end, other, other_end):
        sock.close()


def test_a_lone_frame_per_wakeup_is_read_without_a_failing_read(link) -> None:
    send, poll, other_round, delivered, reads = link
    send(FRAME)
    poll()
    assert len(delivered) == 1 and len(reads) == 2     # the frame, then EAGAIN
    for count in range(2, 5):
        other_round()
        send(FRAME)
        poll()
        assert len(delivered) == count and len(reads) == count + 1


def test_frames_left_waiting_are_read_whole_in_the_next_round(link) -> None:
    send, poll, other_round, delivered, reads = link
    send(FRAME)
    poll()
    other_round()                                       # one frame per wakeup now
    for _ in range(3):
        send(FRAME)
    poll()
    assert len(delivered) == 2                          # one, the tap still readable
    poll()
    assert len(delivered) == 4 and len(reads) == 2 + 1 + 3   # the rest, then EAGAIN


def test_a_refused_uso_write_counts_every_datagram_it_carried() -> None:
    """A tap write the kernel would cut into three datagrams (USO) that
    finds the queue full drops three datagrams, and the counter says three."""
    tap, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    loop = Loop()
    tap_link = TapLink(loop, tap.fileno(), Capture(None), Logger("test"), 1500)
    tap.setblocking(False)
    try:
        while True:
            tap.send(bytes(1000))
    except BlockingIOError:
        pass
    assert tap_link.send_datagrams(bytes(42), memoryview(bytes(2500)), 1000)
    assert loop.counters.get("tap_full") == 3
    tap_link.send(bytes(60))
    assert loop.counters.get("tap_full") == 4
    tap.close()
    guest_end.close()


@pytest.mark.parametrize("size", [0, 1, 1000, 20000])
@pytest.mark.parametrize("v6", [False, True])
def test_send_tcp_writes_what_send_does(size: int, v6: bool) -> None:
    """TCP frames take a shorter way to the tap (TCP_CSUM_HEADERS up to
    the MTU, GSO beyond): the same bytes as ``send`` writes."""
    tap, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link = TapLink(Loop(), tap.fileno(), Capture(None), Logger("test"), 1500)
    addresses = (bytes(16), bytes(15) + b"\x01") if v6 else (bytes(4), bytes(3) + b"\x01")
    frame = build_tcp_frame(bytes(6), bytes(6), *addresses, 80, 40000, 1, 2, ACK, 3,
                            b"x" * size, partial=True)
    link.send(frame)
    link.send_tcp(frame)
    assert guest_end.recv(1 << 16) == guest_end.recv(1 << 16)
    tap.close()
    guest_end.close()
