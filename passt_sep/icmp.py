"""ICMP and ICMPv6 echo, relayed through the kernel's ping sockets.

A ping socket (``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)``) sends an echo
request built here; the kernel replaces its identifier with the socket's
own and fixes the checksum, and hands back replies as ICMP messages.  This
module parses the guest's requests, builds what goes to the socket, and
turns replies back into frames carrying the guest's original identifier.
``EchoFlows`` remembers which socket serves which (guest address,
identifier, destination), as entries of the worker's one flow table
(:mod:`passt_sep.flow`), under its cap and expiring.  No I/O here.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from dataclasses import dataclass

from .flow import FlowKey, FlowSection, FlowTable
from .netparams import Network
from .packet import IPPROTO_ICMP, IPPROTO_ICMPV6, Drop, Inbound, checksum, ip_frame, l4_checksum

ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
_ECHO = struct.Struct("!BBHHH")


@dataclass(frozen=True, slots=True)
class EchoRequest:
    """An echo request from the guest, parsed."""

    dst: bytes
    ident: int
    seq: int
    data: bytes
    v6: bool


def parse_echo_request(inb: Inbound) -> EchoRequest | None:
    """The guest's echo request, or None for any other ICMP message."""
    message = inb.l4
    if len(message) < _ECHO.size:
        raise Drop("icmp_short")
    kind, code, _csum, ident, seq = _ECHO.unpack_from(message)
    wanted = ICMPV6_ECHO_REQUEST if inb.is_ipv6 else ICMP_ECHO_REQUEST
    if kind != wanted or code != 0:
        return None
    if inb.is_ipv6:
        valid = l4_checksum(inb.src, inb.dst, IPPROTO_ICMPV6, message) in (0, 0xFFFF)
    else:
        valid = checksum(message) in (0, 0xFFFF)
    if not valid:
        raise Drop("icmp_checksum")
    return EchoRequest(inb.dst, ident, seq, bytes(message[_ECHO.size:]), inb.is_ipv6)


def echo_request_payload(request: EchoRequest, v6: bool | None = None) -> bytes:
    """What to send on the ping socket (the kernel sets id and checksum),
    of the socket's family ``v6`` (by default the request's: ``--clat``
    sends an IPv4 guest's request as ICMPv6)."""
    kind = ICMPV6_ECHO_REQUEST if (request.v6 if v6 is None else v6) else ICMP_ECHO_REQUEST
    return _ECHO.pack(kind, 0, 0, request.ident, request.seq) + request.data


def parse_echo_reply(message: bytes, v6: bool) -> tuple[int, bytes] | None:
    """(sequence, data) of an echo reply read from a ping socket."""
    if len(message) < _ECHO.size:
        return None
    kind, _code, _csum, _ident, seq = _ECHO.unpack_from(message)
    if kind != (ICMPV6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY):
        return None
    return seq, message[_ECHO.size:]


def echo_reply_frame(net: Network, guest_mac: bytes, src: bytes, dst: bytes, ident: int,
                     seq: int, data: bytes) -> bytes:
    """A complete echo-reply frame to the guest, with its own identifier."""
    v6 = len(src) == 16
    message = bytearray(_ECHO.pack(ICMPV6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY, 0, 0,
                                   ident, seq) + data)
    if v6:
        csum = l4_checksum(src, dst, IPPROTO_ICMPV6, message)
    else:
        csum = checksum(message)
    struct.pack_into("!H", message, 2, csum)
    return ip_frame(guest_mac, net.our_mac, src, dst,
                    IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP, message)


def echo_key(request: EchoRequest, guest: bytes) -> FlowKey:
    """The flow of the guest's echo requests from ``guest`` with the
    request's identifier to its destination (the guest's terms)."""
    return FlowKey(IPPROTO_ICMPV6 if request.v6 else IPPROTO_ICMP, guest, request.ident,
                   request.dst, 0)


@dataclass(slots=True)
class EchoFlow:
    """A flow's entry in the table: the loop's handle (a ping socket's fd)."""

    handle: Hashable
    last_used: float


class EchoFlows:
    """Echo flows in the worker's flow table (its ICMP section: under the
    table's one cap, expiring), and the key of each by handle (an index
    emptied with the entries)."""

    def __init__(self, table: FlowTable, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.section: FlowSection[EchoFlow] = table.section(IPPROTO_ICMP, IPPROTO_ICMPV6)
        self.keys: dict[Hashable, FlowKey] = {}

    def __len__(self) -> int:
        return len(self.section)

    def get(self, key: FlowKey, now: float) -> Hashable | None:
        entry = self.section.get(key)
        if entry is None:
            return None
        entry.last_used = now
        return entry.handle

    def full(self) -> bool:
        """The flow table has no room, for any protocol."""
        return self.section.full

    def add(self, key: FlowKey, handle: Hashable, now: float) -> bool:
        """Admit a flow under the table's cap; False when refused."""
        if not self.section.add(key, EchoFlow(handle, now)):
            return False
        self.keys[handle] = key
        return True

    def by_handle(self, handle: Hashable) -> FlowKey | None:
        return self.keys.get(handle)

    def expired(self, now: float) -> list[Hashable]:
        """Remove and return the handles of flows idle past the timeout."""
        handles = [entry.handle for entry in self.section.expire(now, self.timeout)]
        for handle in handles:
            self.keys.pop(handle, None)
        return handles
