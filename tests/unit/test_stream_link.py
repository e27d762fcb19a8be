"""StreamLink's frames to the guest (passt's UNIX stream socket): a peek's
frames in one write, and EPOLLOUT asked for only while frames wait for
room, with an epoll_ctl only when that changes.  A real socketpair and
epoll loop."""

from __future__ import annotations

import socket

import pytest

from passt_sep.system.log import Logger
from passt_sep.tap import stream_prefix
from passt_sep.worker.guest import Capture, StreamLink
from passt_sep.worker.loop import EPOLLIN, EPOLLOUT, Loop


class Receiver:
    def on_frame(self, frame: memoryview, now: float) -> None:
        raise AssertionError("the guest sends nothing here")

    def on_connect(self) -> None:
        pass

    def on_disconnect(self) -> None:
        pass

    def on_offload(self, on: bool) -> None:
        pass


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch):
    """(link, the guest's end, loop, the events each epoll_ctl MOD asked for)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    loop = Loop()
    link = StreamLink(loop, Capture(None), Logger("test"), connected=ours.detach())
    link.start(Receiver())
    modified: list[int] = []
    real = loop.modify_fd

    def counted(fd: int, events: int) -> None:
        modified.append(events)
        real(fd, events)

    monkeypatch.setattr(loop, "modify_fd", counted)
    yield link, theirs, loop, modified
    link.disconnect("done")
    theirs.close()


def test_frames_of_a_peek_go_in_one_write(rig) -> None:
    link, theirs, _, modified = rig
    frames = [bytes([n]) * 100 for n in range(5)]
    link.send_tcp_frames(frames)
    wire = b"".join(stream_prefix(len(f)) + f for f in frames)
    theirs.setblocking(False)
    assert theirs.recv(65536) == wire                 # one write: all there at once
    assert modified == []                             # nothing waited: no epoll_ctl


def test_frames_wait_for_room_and_go_in_order(rig) -> None:
    link, theirs, loop, modified = rig
    frames = [bytes([n % 256]) * 1400 for n in range(200)]
    for start in range(0, len(frames), 20):
        link.send_tcp_frames(frames[start:start + 20])
    link.send(b"last")
    wire = b"".join(stream_prefix(len(f)) + f for f in [*frames, b"last"])
    assert modified == [EPOLLIN | EPOLLOUT]     # asked for once
    got = b""
    theirs.setblocking(False)
    for _ in range(10000):
        if len(got) == len(wire):
            break
        try:
            got += theirs.recv(65536)
        except BlockingIOError:
            pass
        loop.poll_once(0)
    assert got == wire and not link.out
    assert modified[-1] == EPOLLIN and len(modified) == 2
