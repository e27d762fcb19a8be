"""DHCPv6 server for one address (RFC 8415; DNS options RFC 3646).

Every client gets the host's own IPv6 address in each IA_NA it asks for,
with infinite lifetimes, plus the resolvers and the search list; rapid
commit is honoured.  No I/O here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .dnswire import encode_names
from .netparams import Network
from .packet import UDP, Drop, Inbound, udp_frame

SERVER_PORT, CLIENT_PORT = 547, 546
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE = range(1, 10)
INFORMATION_REQUEST = 11
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IA_TA, OPT_IAADDR = 1, 2, 3, 4, 5
OPT_STATUS_CODE, OPT_RAPID_COMMIT, OPT_DNS_SERVERS, OPT_DOMAIN_LIST = 13, 14, 23, 24
STATUS_SUCCESS = 0
INFINITE = 0xFFFFFFFF
DUID_LL, HW_ETHERNET = 3, 1
_HEADER = struct.Struct("!I")
_OPTION = struct.Struct("!HH")
_IA_NA = struct.Struct("!III")

ANSWERED = {SOLICIT, REQUEST, CONFIRM, RENEW, REBIND, RELEASE, DECLINE, INFORMATION_REQUEST}
NEEDS_OUR_SERVER_ID = {REQUEST, RENEW, RELEASE, DECLINE}


@dataclass(frozen=True)
class Dhcpv6Message:
    msg_type: int
    transaction_id: int
    options: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, code: int) -> bytes | None:
        return next((value for kind, value in self.options if kind == code), None)

    def all(self, code: int) -> list[bytes]:
        return [value for kind, value in self.options if kind == code]


def parse_dhcpv6(payload: bytes | memoryview) -> Dhcpv6Message:
    if len(payload) < 4:
        raise Drop("dhcpv6_short")
    (header,) = _HEADER.unpack_from(payload)
    return Dhcpv6Message(header >> 24, header & 0xFFFFFF, parse_options(payload[4:]))


def parse_options(data: bytes | memoryview) -> list[tuple[int, bytes]]:
    options = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _OPTION.size:
            raise Drop("dhcpv6_option_short")
        code, length = _OPTION.unpack_from(data, offset)
        end = offset + _OPTION.size + length
        if end > len(data):
            raise Drop("dhcpv6_option_length")
        options.append((code, bytes(data[offset + _OPTION.size:end])))
        offset = end
    return options


def build_options(options: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_OPTION.pack(code, len(value)) + value for code, value in options)


def build_dhcpv6(message: Dhcpv6Message) -> bytes:
    header = _HEADER.pack((message.msg_type << 24) | (message.transaction_id & 0xFFFFFF))
    return header + build_options(message.options)


def server_duid(net: Network) -> bytes:
    """DUID-LL from our MAC: stable, so renewals find the same server."""
    return struct.pack("!HH", DUID_LL, HW_ETHERNET) + net.our_mac


def handle_dhcpv6(net: Network, inb: Inbound, udp: UDP, *, send_dns: bool = True,
                  send_search: bool = True) -> bytes | None:
    """The reply frame to a guest's DHCPv6 message, or None."""
    if udp.dport != SERVER_PORT or net.ipv6 is None:
        return None
    request = parse_dhcpv6(udp.payload)
    if request.msg_type not in ANSWERED:
        return None
    client_id = request.get(OPT_CLIENTID)
    if client_id is None and request.msg_type != INFORMATION_REQUEST:
        raise Drop("dhcpv6_no_client_id")
    server_id = request.get(OPT_SERVERID)
    if request.msg_type in NEEDS_OUR_SERVER_ID and server_id != server_duid(net):
        return None
    reply = _reply(net, request, client_id, send_dns, send_search)
    return udp_frame(inb.eth.src, net.our_mac, net.our_link_local, inb.src,
                     SERVER_PORT, CLIENT_PORT, build_dhcpv6(reply))


def _reply(net: Network, request: Dhcpv6Message, client_id: bytes | None,
           send_dns: bool, send_search: bool) -> Dhcpv6Message:
    assert net.ipv6 is not None
    rapid = request.msg_type == SOLICIT and request.get(OPT_RAPID_COMMIT) is not None
    kind = ADVERTISE if request.msg_type == SOLICIT and not rapid else REPLY
    options: list[tuple[int, bytes]] = [(OPT_SERVERID, server_duid(net))]
    if client_id is not None:
        options.append((OPT_CLIENTID, client_id))
    if rapid:
        options.append((OPT_RAPID_COMMIT, b""))
    if request.msg_type in (RELEASE, DECLINE):
        options.append((OPT_STATUS_CODE, struct.pack("!H", STATUS_SUCCESS) + b"released"))
        return Dhcpv6Message(REPLY, request.transaction_id, options)
    if request.msg_type != INFORMATION_REQUEST:
        for ia in request.all(OPT_IA_NA):
            options.append((OPT_IA_NA, _ia_na(net, ia)))
    if send_dns and net.ipv6.dns:
        options.append((OPT_DNS_SERVERS, b"".join(net.ipv6.dns)))
    if send_search and net.search:
        options.append((OPT_DOMAIN_LIST, encode_names(net.search)))
    return Dhcpv6Message(kind, request.transaction_id, options)


def _ia_na(net: Network, ia: bytes) -> bytes:
    """Our answer to one IA_NA: same IAID, the host's address, forever."""
    assert net.ipv6 is not None
    if len(ia) < _IA_NA.size:
        raise Drop("dhcpv6_ia_short")
    iaid = ia[:4]
    address = net.ipv6.addr + struct.pack("!II", INFINITE, INFINITE)
    return iaid + struct.pack("!II", INFINITE, INFINITE) + build_options([(OPT_IAADDR, address)])
