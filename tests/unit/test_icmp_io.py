"""EchoHandler without root: the guest's echo requests through ping sockets
and the replies back as frames with the guest's own identifier.

A ping socket needs ``net.ipv4.ping_group_range`` to include our group
(for IPv6 too).  Where it does, the real kernel answers from loopback;
where it does not, the refusal is tested instead, and the rest of the path
runs with a UDP socket in the ping socket's place: it is read and written
the same way (one ICMP message per datagram), with a test socket playing
the kernel's part (it answers the request with the identifier the kernel
would have chosen)."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from checksums import reference_checksum
from glue import GUEST_MAC, NET, Rig, family, gateway, guest_addr, inbound, loopback

from passt_sep import packet
from passt_sep.packet import IPPROTO_ICMP, IPPROTO_ICMPV6, Drop
from passt_sep.worker import icmp_io
from passt_sep.worker.icmp_io import ECHO_TIMEOUT, EchoHandler

ECHO = struct.Struct("!BBHHH")
IDENT, KERNEL_IDENT = 0x4242, 0x9999


@pytest.fixture(params=[False, True], ids=["ipv4", "ipv6"])
def v6(request: pytest.FixtureRequest) -> bool:
    return request.param


def ping_refusal(v6: bool) -> OSError | None:
    """Why this process cannot open a ping socket, or None if it can."""
    try:
        socket.socket(family(v6), socket.SOCK_DGRAM,
                      socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP).close()
    except OSError as exc:
        return exc
    return None


def request_type(v6: bool) -> int:
    return 128 if v6 else 8


def reply_type(v6: bool) -> int:
    return 129 if v6 else 0


def echo_request(handler: EchoHandler, v6: bool, seq: int, data: bytes, ident: int = IDENT,
                 kind: int | None = None, now: float | None = None) -> bool:
    """The guest's echo request to the gateway (the host's loopback)."""
    src, dst = guest_addr(v6), gateway(v6)
    message = bytearray(ECHO.pack(request_type(v6) if kind is None else kind, 0, 0, ident, seq)
                        + data)
    proto = IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP
    prefix = src + dst + struct.pack("!I", len(message)) + b"\0\0\0\x3a" if v6 else b""
    struct.pack_into("!H", message, 2, reference_checksum(prefix + bytes(message)))
    frame = packet.ip_frame(NET.our_mac, GUEST_MAC, src, dst, proto, bytes(message))
    return handler.on_guest_echo(inbound(frame), time.monotonic() if now is None else now)


def echo_reply(frame: bytes, v6: bool) -> tuple[int, int, bytes]:
    """(identifier, sequence, data) of an echo reply for the guest, every
    header and the checksum checked."""
    inb = inbound(frame)
    assert (inb.eth.dst, inb.eth.src) == (GUEST_MAC, NET.our_mac)
    assert (inb.src, inb.dst) == (gateway(v6), guest_addr(v6))
    assert inb.proto == (IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP)
    message = bytes(inb.l4)
    prefix = inb.src + inb.dst + struct.pack("!I", len(message)) + b"\0\0\0\x3a" if v6 else b""
    assert reference_checksum(prefix + message) == 0
    kind, code, _, ident, seq = ECHO.unpack_from(message)
    assert (kind, code) == (reply_type(v6), 0)
    return ident, seq, message[ECHO.size:]


# -- the real ping socket ------------------------------------------------------------------
def test_an_echo_request_to_loopback_is_answered(rig: Rig, v6: bool) -> None:
    refusal = ping_refusal(v6)
    if refusal is not None:
        pytest.skip(f"no ping socket for gid {os.getgid()} ({refusal.strerror}): "
                    "net.ipv4.ping_group_range does not include it")
    handler = rig.echo()
    assert echo_request(handler, v6, 1, b"are you there?")
    rig.run_until(lambda: len(rig.frames), "the echo reply")
    [frame] = rig.frames.take()
    assert echo_reply(frame, v6) == (IDENT, 1, b"are you there?")


def test_a_refused_ping_socket_is_counted_and_said_once(rig: Rig, v6: bool) -> None:
    if ping_refusal(v6) is None:
        pytest.skip("ping sockets are allowed here: nothing is refused")
    read_end, write_end = os.pipe()
    try:
        rig.log.to_fd(write_end)
        handler = rig.echo()
        assert echo_request(handler, v6, 1, b"a")
        assert echo_request(handler, v6, 2, b"b")
        os.close(write_end)
        write_end = -1
        said = os.read(read_end, 65536).decode()
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert rig.frames.take() == []
    assert rig.loop.counters.get("icmp_socket_error") == 2
    assert said.count("cannot open a ping socket") == 1
    assert "ping_group_range" in said


# -- the path with a stand-in for the ping socket ---------------------------------------------
class Kernel:
    """The kernel's part behind stand-in ping sockets: it gets what the
    handler sends, and answers as the kernel would."""

    def __init__(self, v6: bool) -> None:
        self.v6 = v6
        self.sock = socket.socket(family(v6), socket.SOCK_DGRAM)
        self.sock.bind((loopback(v6), 0))
        self.sock.settimeout(2)
        self.stand_ins: list[socket.socket] = []

    def socket(self, family_: int, kind: int, proto: int = 0) -> socket.socket:
        """What icmp_io gets for ``socket.socket(..., IPPROTO_ICMP[V6])``."""
        assert proto == (socket.IPPROTO_ICMPV6 if self.v6 else socket.IPPROTO_ICMP)
        stand_in = StandIn(family_, kind, self.sock.getsockname())
        stand_in.bind((loopback(self.v6), 0))
        self.stand_ins.append(stand_in)
        return stand_in

    def request(self) -> tuple[bytes, tuple]:
        return self.sock.recvfrom(65536)

    def answer(self, request: bytes, to: tuple, kind: int | None = None) -> None:
        """The reply to ``request``, with the identifier the kernel chose."""
        _, _, _, _, seq = ECHO.unpack_from(request)
        message = ECHO.pack(reply_type(self.v6) if kind is None else kind, 0, 0, KERNEL_IDENT,
                            seq) + request[ECHO.size:]
        self.sock.sendto(message, to)

    def close(self) -> None:
        for sock in [self.sock, *self.stand_ins]:
            sock.close()


class StandIn(socket.socket):
    """A UDP socket in a ping socket's place: a request for ``(host, 0)``
    goes to the kernel's stand-in instead."""

    def __init__(self, family_: int, kind: int, kernel: tuple) -> None:
        super().__init__(family_, kind)
        self.kernel = kernel

    def sendto(self, data: bytes, address: tuple) -> int:   # type: ignore[override]
        assert address == (loopback(self.family == socket.AF_INET6), 0)
        return super().sendto(data, self.kernel)


class SocketModule:
    """icmp_io's ``socket`` module, with ping sockets from the stand-in kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.socket = kernel.socket

    def __getattr__(self, name: str) -> object:
        return getattr(socket, name)


@pytest.fixture
def kernel(v6: bool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    stand_in = Kernel(v6)
    monkeypatch.setattr(icmp_io, "socket", SocketModule(stand_in))
    yield stand_in
    stand_in.close()


def test_a_reply_goes_back_with_the_guests_identifier(rig: Rig, kernel: Kernel,
                                                      v6: bool) -> None:
    handler = rig.echo()
    assert echo_request(handler, v6, 7, b"payload of the ping")
    request, origin = kernel.request()
    assert ECHO.unpack_from(request) == (request_type(v6), 0, 0, IDENT, 7)
    assert request[ECHO.size:] == b"payload of the ping"
    kernel.answer(request, origin)
    rig.run_until(lambda: len(rig.frames), "the echo reply")
    [frame] = rig.frames.take()
    assert echo_reply(frame, v6) == (IDENT, 7, b"payload of the ping")


def test_one_socket_per_identifier_and_only_replies_passed_on(rig: Rig, kernel: Kernel,
                                                              v6: bool) -> None:
    handler = rig.echo()
    echo_request(handler, v6, 1, b"first")
    echo_request(handler, v6, 2, b"second")                   # the same flow
    echo_request(handler, v6, 1, b"other", ident=IDENT + 1)   # another identifier
    (one, at), (two, at_again), (other, elsewhere) = [kernel.request() for _ in range(3)]
    assert at == at_again != elsewhere and len(kernel.stand_ins) == 2
    kernel.answer(one, at, kind=request_type(v6))             # not a reply: ignored
    kernel.answer(two, at)
    kernel.answer(other, elsewhere)
    rig.run_until(lambda: len(rig.frames) >= 2, "two echo replies")
    rig.settle()
    replies = sorted(echo_reply(frame, v6) for frame in rig.frames.take())
    assert replies == [(IDENT, 2, b"second"), (IDENT + 1, 1, b"other")]


def test_idle_echo_flows_are_swept(rig: Rig, kernel: Kernel, v6: bool) -> None:
    handler = rig.echo()
    now = time.monotonic()
    echo_request(handler, v6, 1, b"x", now=now)
    [stand_in] = kernel.stand_ins
    rig.loop.run_due_timers(now + ECHO_TIMEOUT)                # idle exactly the timeout: kept
    assert len(handler.flows) == 1 and stand_in.fileno() >= 0
    rig.loop.run_due_timers(now + 2 * ECHO_TIMEOUT)            # past it: closed
    assert len(handler.flows) == 0 and stand_in.fileno() == -1
    echo_request(handler, v6, 2, b"y", now=now + 2 * ECHO_TIMEOUT)
    assert len(kernel.stand_ins) == 2                          # a fresh socket


def test_the_flow_cap_leaves_a_new_identifier_unanswered(rig: Rig, kernel: Kernel,
                                                         v6: bool) -> None:
    handler = rig.echo(max_flows=1)
    assert echo_request(handler, v6, 1, b"in")
    assert echo_request(handler, v6, 1, b"out", ident=IDENT + 1)
    assert rig.loop.counters.get("icmp_flows_full") == 1
    assert len(handler.flows) == 1
    assert len(kernel.stand_ins) == 1                         # no socket for the refused one


def test_other_icmp_messages_are_not_taken(rig: Rig, v6: bool) -> None:
    handler = rig.echo()
    assert not echo_request(handler, v6, 1, b"", kind=reply_type(v6))
    frame = bytearray(packet.ip_frame(NET.our_mac, GUEST_MAC, guest_addr(v6), gateway(v6),
                                      IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP,
                                      ECHO.pack(request_type(v6), 0, 0xDEAD, 1, 1)))
    with pytest.raises(Drop, match="icmp_checksum"):
        handler.on_guest_echo(inbound(bytes(frame)), time.monotonic())
    assert len(handler.flows) == 0 and rig.frames.take() == []
