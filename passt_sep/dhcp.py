"""DHCPv4 server for one lease (RFC 2131, options RFC 2132/3397).

The guest is always offered the same thing: the host's address, prefix and
gateway, the resolvers and search list, the MTU, and an infinite lease.
No I/O here: ``handle_dhcp`` turns a request into a reply frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .dnswire import encode_names
from .netparams import Network
from .packet import UDP, Drop, Inbound, udp_frame

BOOTREQUEST, BOOTREPLY = 1, 2
MAGIC = bytes([99, 130, 83, 99])
SERVER_PORT, CLIENT_PORT = 67, 68
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
OPT_PAD, OPT_END = 0, 255
OPT_SUBNET, OPT_ROUTER, OPT_DNS, OPT_MTU, OPT_BROADCAST = 1, 3, 6, 26, 28
OPT_REQUESTED_IP, OPT_LEASE, OPT_TYPE, OPT_SERVER_ID, OPT_SEARCH = 50, 51, 53, 54, 119
INFINITE_LEASE = 0xFFFFFFFF
BOOTP_MIN_SIZE = 300
BROADCAST4 = bytes([255] * 4)
_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")


@dataclass(frozen=True)
class DhcpMessage:
    op: int
    xid: int
    flags: int
    ciaddr: bytes
    chaddr: bytes                       # the client's MAC (6 bytes)
    options: dict[int, bytes] = field(default_factory=dict)
    yiaddr: bytes = bytes(4)
    siaddr: bytes = bytes(4)
    giaddr: bytes = bytes(4)
    secs: int = 0

    @property
    def message_type(self) -> int | None:
        value = self.options.get(OPT_TYPE)
        return value[0] if value and len(value) == 1 else None


def parse_dhcp(payload: bytes | memoryview) -> DhcpMessage:
    if len(payload) < _FIXED.size + len(MAGIC):
        raise Drop("dhcp_short")
    (op, htype, hlen, _hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
     _sname, _file) = _FIXED.unpack_from(payload)
    if htype != 1 or hlen != 6:
        raise Drop("dhcp_hardware")
    if bytes(payload[_FIXED.size:_FIXED.size + 4]) != MAGIC:
        raise Drop("dhcp_cookie")
    options = _parse_options(payload[_FIXED.size + 4:])
    return DhcpMessage(op, xid, flags, ciaddr, chaddr[:6], options, yiaddr, siaddr, giaddr, secs)


def _parse_options(data: bytes | memoryview) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    offset = 0
    while offset < len(data):
        code = data[offset]
        if code == OPT_END:
            return options
        if code == OPT_PAD:
            offset += 1
            continue
        if offset + 2 > len(data) or offset + 2 + data[offset + 1] > len(data):
            raise Drop("dhcp_option_length")
        length = data[offset + 1]
        # RFC 3396: a repeated option continues the first one
        options[code] = options.get(code, b"") + bytes(data[offset + 2:offset + 2 + length])
        offset += 2 + length
    raise Drop("dhcp_no_end")


def build_dhcp(message: DhcpMessage) -> bytes:
    fixed = _FIXED.pack(message.op, 1, 6, 0, message.xid, message.secs, message.flags,
                        message.ciaddr, message.yiaddr, message.siaddr, message.giaddr,
                        message.chaddr.ljust(16, b"\0"), b"", b"")
    out = bytearray(fixed + MAGIC)
    for code, value in message.options.items():
        for start in range(0, max(len(value), 1), 255):  # RFC 3396 long options
            chunk = value[start:start + 255]
            out += bytes([code, len(chunk)]) + chunk
    out.append(OPT_END)
    return bytes(out.ljust(BOOTP_MIN_SIZE, b"\0"))


def handle_dhcp(net: Network, inb: Inbound, udp: UDP, *, send_dns: bool = True,
                send_search: bool = True) -> bytes | None:
    """The reply frame to a guest's DHCP request, or None."""
    if udp.dport != SERVER_PORT or net.ipv4 is None:
        return None
    request = parse_dhcp(udp.payload)
    if request.op != BOOTREQUEST:
        return None
    kind = request.message_type
    if kind is None:
        raise Drop("dhcp_no_type")
    reply_type = _reply_type(net, request, kind)
    if reply_type is None:
        return None
    reply = _reply(net, request, reply_type, send_dns, send_search)
    return udp_frame(request.chaddr, net.our_mac, net.ipv4.gateway, BROADCAST4,
                     SERVER_PORT, CLIENT_PORT, build_dhcp(reply))


def _reply_type(net: Network, request: DhcpMessage, kind: int) -> int | None:
    assert net.ipv4 is not None
    if kind == DISCOVER:
        return OFFER
    if kind == INFORM:
        return ACK
    if kind != REQUEST:
        return None  # RELEASE, DECLINE: nothing to answer, the lease never changes
    wanted = request.options.get(OPT_REQUESTED_IP) or request.ciaddr
    return ACK if wanted == net.ipv4.addr else NAK


def _reply(net: Network, request: DhcpMessage, kind: int, send_dns: bool,
           send_search: bool) -> DhcpMessage:
    assert net.ipv4 is not None
    v4 = net.ipv4
    options: dict[int, bytes] = {OPT_TYPE: bytes([kind]), OPT_SERVER_ID: v4.gateway}
    if kind == NAK:
        return DhcpMessage(BOOTREPLY, request.xid, request.flags, bytes(4), request.chaddr, options)
    mask = ((0xFFFFFFFF << (32 - v4.prefix_len)) & 0xFFFFFFFF).to_bytes(4, "big")
    if kind != ACK or request.message_type != INFORM:
        options[OPT_LEASE] = struct.pack("!I", INFINITE_LEASE)
    options[OPT_SUBNET] = mask
    options[OPT_ROUTER] = v4.gateway
    host_bits = (~int.from_bytes(mask, "big")) & 0xFFFFFFFF
    options[OPT_BROADCAST] = (int.from_bytes(v4.addr, "big") | host_bits).to_bytes(4, "big")
    if send_dns and v4.dns:
        options[OPT_DNS] = b"".join(v4.dns)
    if send_search and net.search:
        options[OPT_SEARCH] = encode_names(net.search)
    if 576 <= net.mtu <= 65535:
        options[OPT_MTU] = struct.pack("!H", net.mtu)
    yiaddr = bytes(4) if request.message_type == INFORM else v4.addr
    return DhcpMessage(BOOTREPLY, request.xid, request.flags, request.ciaddr, request.chaddr,
                       options, yiaddr=yiaddr)

