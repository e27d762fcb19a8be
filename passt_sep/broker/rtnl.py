"""The few rtnetlink requests the broker makes, on a NETLINK_ROUTE socket.

Reading the host's routes, addresses and links, and configuring the tap
inside the namespace, takes a dozen messages.  pyroute2 did this before,
but importing it (every protocol family it knows, asyncio) cost over
100 ms of a start-up of 250: this module is the part we use.

Messages are built and parsed by plain functions (``request``,
``messages``, ``attributes``); ``Rtnl`` sends them and reads the answers.
Dumped objects come back as dicts with pyroute2's key names.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x300, 0x200, 0x400
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1

_NLMSGHDR = struct.Struct("=IHHII")       # length, type, flags, sequence, port id
_RTATTR = struct.Struct("=HH")            # length, type
_IFINFOMSG = struct.Struct("=BxHiII")     # family, device type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBi")      # family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")      # family, dst/src length, tos, table, protocol,
#                                           scope, type, flags
_U32 = struct.Struct("=I")
RECV_SIZE = 1 << 18


class RtnlError(OSError):
    """The kernel refused a request (``errno`` says why)."""


def _align(length: int) -> int:
    return (length + 3) & ~3


def attribute(kind: int, value: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    raw = _RTATTR.pack(_RTATTR.size + len(value), kind) + value
    return raw + bytes(_align(len(raw)) - len(raw))


def request(kind: int, flags: int, sequence: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, sequence, 0) + body


def messages(data: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """``(type, flags, sequence, payload)`` of each message in a datagram."""
    view = memoryview(data)
    offset = 0
    while offset + _NLMSGHDR.size <= len(view):
        length, kind, flags, sequence, _port = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or offset + length > len(view):
            break
        yield kind, flags, sequence, view[offset + _NLMSGHDR.size:offset + length]
        offset += _align(length)


def attributes(data: memoryview) -> dict[int, bytes]:
    """rtattrs by type (the last of a type wins; nested ones stay raw)."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            break
        found[kind & 0x3FFF] = bytes(data[offset + _RTATTR.size:offset + length])
        offset += _align(length)
    return found


def _address_text(family: int, raw: bytes | None) -> str | None:
    return socket.inet_ntop(family, raw) if raw else None


def _u32(raw: bytes | None) -> int | None:
    return _U32.unpack(raw)[0] if raw and len(raw) == 4 else None


def parse_link(payload: memoryview) -> dict:
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload)
    attrs = attributes(payload[_IFINFOMSG.size:])
    mac = attrs.get(IFLA_ADDRESS)
    name = attrs.get(IFLA_IFNAME)
    return {"index": index, "flags": flags, "ifname": name.rstrip(b"\0").decode() if name else None,
            "mtu": _u32(attrs.get(IFLA_MTU)),
            "address": ":".join(f"{b:02x}" for b in mac) if mac else None}


def parse_address(payload: memoryview) -> dict:
    family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(payload)
    attrs = attributes(payload[_IFADDRMSG.size:])
    extended = _u32(attrs.get(IFA_FLAGS))
    return {"family": family, "prefixlen": prefixlen, "scope": scope, "index": index,
            "flags": flags if extended is None else extended,
            "address": _address_text(family, attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL))}


def parse_route(payload: memoryview) -> dict:
    family, dst_len, _src_len, _tos, table, _proto, _scope, kind, _flags = \
        _RTMSG.unpack_from(payload)
    attrs = attributes(payload[_RTMSG.size:])
    return {"family": family, "dst_len": dst_len, "type": kind,
            "table": _u32(attrs.get(RTA_TABLE)) or table,
            "dst": _address_text(family, attrs.get(RTA_DST)),
            "gateway": _address_text(family, attrs.get(RTA_GATEWAY)),
            "oif": _u32(attrs.get(RTA_OIF)), "priority": _u32(attrs.get(RTA_PRIORITY))}


class Rtnl:
    """A NETLINK_ROUTE socket (``SOCK_DGRAM``, as the policies expect) and
    the requests the broker makes on it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sequence = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- transport ------------------------------------------------------------------
    def _exchange(self, kind: int, flags: int, body: bytes) -> list[memoryview]:
        """Send one request; the payloads of the answers (a dump's, or the
        one reply), raising on an error, returning on DONE or the ACK."""
        self.sequence += 1
        self.sock.send(request(kind, NLM_F_REQUEST | flags, self.sequence, body))
        answers: list[memoryview] = []
        while True:
            data = self.sock.recv(RECV_SIZE)
            for msg_kind, msg_flags, sequence, payload in messages(data):
                if sequence != self.sequence:
                    continue
                if msg_kind == NLMSG_DONE:
                    return answers
                if msg_kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", payload)[0]
                    if error:
                        raise RtnlError(error, os.strerror(error))
                    return answers
                answers.append(payload)
                if not msg_flags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return answers

    def _change(self, kind: int, body: bytes, create: bool = False) -> None:
        self._exchange(kind, NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if create else 0), body)

    # -- reading --------------------------------------------------------------------
    def routes(self, family: int, table: int = RT_TABLE_MAIN) -> list[dict]:
        answers = self._exchange(RTM_GETROUTE, NLM_F_DUMP, _RTMSG.pack(family, *[0] * 8))
        return [r for r in map(parse_route, answers) if r["table"] == table]

    def addresses(self, family: int, index: int) -> list[dict]:
        answers = self._exchange(RTM_GETADDR, NLM_F_DUMP, _IFADDRMSG.pack(family, 0, 0, 0, 0))
        return [a for a in map(parse_address, answers) if a["index"] == index]

    def link(self, index: int) -> dict | None:
        try:
            answers = self._exchange(RTM_GETLINK, 0, _IFINFOMSG.pack(0, 0, index, 0, 0))
        except RtnlError:
            return None
        return parse_link(answers[0]) if answers else None

    def link_index(self, ifname: str) -> int | None:
        body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + attribute(IFLA_IFNAME, ifname.encode() + b"\0")
        try:
            answers = self._exchange(RTM_GETLINK, 0, body)
        except RtnlError:
            return None
        return parse_link(answers[0])["index"] if answers else None

    # -- configuring ----------------------------------------------------------------
    def set_link(self, index: int, *, up: bool = False, mtu: int | None = None,
                 mac: str | None = None) -> None:
        body = _IFINFOMSG.pack(0, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)
        if mtu is not None:
            body += attribute(IFLA_MTU, _U32.pack(mtu))
        if mac is not None:
            body += attribute(IFLA_ADDRESS, bytes(int(part, 16) for part in mac.split(":")))
        self._change(RTM_NEWLINK, body)

    def add_address(self, index: int, family: int, address: str, prefixlen: int,
                    flags: int = 0) -> None:
        raw = socket.inet_pton(family, address)
        body = _IFADDRMSG.pack(family, prefixlen, flags & 0xFF, RT_SCOPE_UNIVERSE, index)
        if family == socket.AF_INET:
            body += attribute(IFA_LOCAL, raw)
        body += attribute(IFA_ADDRESS, raw)
        if flags:
            body += attribute(IFA_FLAGS, _U32.pack(flags))
        self._change(RTM_NEWADDR, body, create=True)

    def add_route(self, index: int, family: int, dst: str, dst_len: int, gateway: str,
                  priority: int | None = None) -> None:
        body = _RTMSG.pack(family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                           RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        if dst_len:
            body += attribute(RTA_DST, socket.inet_pton(family, dst))
        body += attribute(RTA_GATEWAY, socket.inet_pton(family, gateway))
        body += attribute(RTA_OIF, _U32.pack(index))
        if priority:
            body += attribute(RTA_PRIORITY, _U32.pack(priority))
        self._change(RTM_NEWROUTE, body, create=True)
