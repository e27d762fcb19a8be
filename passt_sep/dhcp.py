"""DHCPv4 server for exactly one lease (RFC 2131; options RFC 2132, 3396,
3397, 6842).

Whoever asks gets the same thing: the guest's address and prefix, the
gateway (which is also our server identifier), the resolvers, the search
list, the MTU and an infinite lease, as passt does.  There is no lease
state: a REQUEST is acknowledged when it names that address and refused
(NAK) otherwise, RELEASE and DECLINE change nothing and get no answer.

Replies go to the broadcast address from the gateway address: a client
without an address yet (busybox udhcpc, ISC dhclient) reads them on a raw
socket, and one that has an address (INFORM) on its socket bound to port
68.  No I/O here: ``handle_dhcp`` turns a request into a reply frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .dnswire import encode_names
from .netparams import IPv4Params, Network
from .packet import UDP, Drop, Inbound, udp_frame

SERVER_PORT, CLIENT_PORT = 67, 68
BOOTREQUEST, BOOTREPLY = 1, 2
HTYPE_ETHERNET, HLEN_ETHERNET = 1, 6
MAGIC = bytes([99, 130, 83, 99])
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)

OPT_PAD, OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_MTU, OPT_BROADCAST = 0, 1, 3, 6, 26, 28
OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_MESSAGE_TYPE, OPT_SERVER_ID = 50, 51, 53, 54
OPT_CLIENT_ID, OPT_DOMAIN_SEARCH, OPT_END = 61, 119, 255

INFINITE_LEASE = 0xFFFFFFFF
MIN_MTU, MAX_MTU = 576, 65535      # every host takes 576 (RFC 791); the option is 16 bits
BOOTP_MIN_SIZE = 300               # RFC 1542 §2.1: some relays and clients want 300
BROADCAST4 = b"\xff" * 4
ZERO4 = bytes(4)

# RFC 2131 §2, figure 1: op htype hlen hops xid secs flags ciaddr yiaddr
# siaddr giaddr chaddr sname file; the magic cookie and the options follow.
_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_OPTIONS_START = _FIXED.size + len(MAGIC)

# The answer to each message type we answer; RELEASE and DECLINE get none.
_REPLY_TYPE = {DISCOVER: OFFER, REQUEST: ACK, INFORM: ACK}
_SILENT = frozenset({RELEASE, DECLINE})


@dataclass(frozen=True)
class DhcpMessage:
    """A BOOTP/DHCP message on Ethernet; options concatenated (RFC 3396)."""

    op: int
    xid: int
    flags: int
    ciaddr: bytes
    chaddr: bytes                       # the client's MAC (6 bytes)
    options: dict[int, bytes] = field(default_factory=dict)
    yiaddr: bytes = ZERO4
    siaddr: bytes = ZERO4
    giaddr: bytes = ZERO4
    secs: int = 0

    def __post_init__(self) -> None:
        if {len(self.ciaddr), len(self.yiaddr), len(self.siaddr), len(self.giaddr)} != {4}:
            raise ValueError("DHCP addresses are 4 bytes long")
        if len(self.chaddr) != HLEN_ETHERNET:
            raise ValueError("chaddr must be a MAC address")
        if OPT_PAD in self.options or OPT_END in self.options:
            raise ValueError("PAD and END are not options with a value")

    @property
    def message_type(self) -> int | None:
        value = self.options.get(OPT_MESSAGE_TYPE)
        return value[0] if value is not None and len(value) == 1 else None


def parse_dhcp(payload: bytes | memoryview) -> DhcpMessage:
    """Parse a DHCP message from Ethernet hardware; sname and file are not
    looked at (no option overload)."""
    if len(payload) < _OPTIONS_START:
        raise Drop("dhcp_short")
    (op, htype, hlen, _hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
     _sname, _file) = _FIXED.unpack_from(payload)
    if (htype, hlen) != (HTYPE_ETHERNET, HLEN_ETHERNET):
        raise Drop("dhcp_hardware")
    if bytes(payload[_FIXED.size:_OPTIONS_START]) != MAGIC:
        raise Drop("dhcp_cookie")
    options = _parse_options(payload[_OPTIONS_START:])
    return DhcpMessage(op, xid, flags, ciaddr, chaddr[:HLEN_ETHERNET], options,
                       yiaddr, siaddr, giaddr, secs)


def _parse_options(data: bytes | memoryview) -> dict[int, bytes]:
    """Options up to END (or the end of the data: some clients stop there).

    A repeated option continues the first one (RFC 3396).
    """
    options: dict[int, bytes] = {}
    offset = 0
    while offset < len(data) and data[offset] != OPT_END:
        code = data[offset]
        if code == OPT_PAD:
            offset += 1
            continue
        if offset + 2 > len(data) or offset + 2 + data[offset + 1] > len(data):
            raise Drop("dhcp_option_length")
        end = offset + 2 + data[offset + 1]
        options[code] = options.get(code, b"") + bytes(data[offset + 2:end])
        offset = end
    return options


def build_dhcp(message: DhcpMessage) -> bytes:
    """The message with END after the options, padded to the BOOTP size;
    options longer than 255 bytes are split (RFC 3396)."""
    out = bytearray(_FIXED.pack(
        message.op, HTYPE_ETHERNET, HLEN_ETHERNET, 0, message.xid, message.secs, message.flags,
        message.ciaddr, message.yiaddr, message.siaddr, message.giaddr,
        message.chaddr, b"", b""))
    out += MAGIC
    for code, value in message.options.items():
        for start in range(0, max(len(value), 1), 255):
            chunk = value[start:start + 255]
            out += bytes([code, len(chunk)]) + chunk
    out.append(OPT_END)
    return bytes(out.ljust(BOOTP_MIN_SIZE, b"\0"))


def handle_dhcp(net: Network, inb: Inbound, udp: UDP, *, send_dns: bool = True,
                send_search: bool = True, send_mtu: bool = True) -> bytes | None:
    """The reply frame to a guest's message to port 67, or None.

    ``inb`` is not needed (the reply goes to ``chaddr``, broadcast) but
    keeps the signature of the other guest services.
    """
    v4 = net.ipv4
    if v4 is None:
        raise Drop("dhcp_no_ipv4")
    request = parse_dhcp(udp.payload)
    if request.op != BOOTREQUEST:
        raise Drop("dhcp_op")
    kind = request.message_type
    if kind is None:
        raise Drop("dhcp_no_type")
    if kind in _SILENT or not _for_us(v4, request):
        return None
    if kind not in _REPLY_TYPE:
        raise Drop("dhcp_type")
    reply = _reply(net, v4, request, _reply_type(v4, request, kind), send_dns, send_search,
                   send_mtu)
    return udp_frame(request.chaddr, net.our_mac, v4.gateway, BROADCAST4,
                     SERVER_PORT, CLIENT_PORT, build_dhcp(reply))


def _for_us(v4: IPv4Params, request: DhcpMessage) -> bool:
    """False when the client names another server: it chose that one."""
    server_id = request.options.get(OPT_SERVER_ID)
    return server_id is None or server_id == v4.gateway


def _reply_type(v4: IPv4Params, request: DhcpMessage, kind: int) -> int:
    """OFFER, ACK, or NAK for a REQUEST of any address but the one we lease.

    SELECTING and INIT-REBOOT clients name it in option 50, RENEWING and
    REBINDING ones in ciaddr (RFC 2131 §4.3.2).
    """
    if kind == REQUEST:
        wanted = request.options.get(OPT_REQUESTED_IP, request.ciaddr)
        return ACK if wanted == v4.addr else NAK
    return _REPLY_TYPE[kind]


def _reply(net: Network, v4: IPv4Params, request: DhcpMessage, kind: int, send_dns: bool,
           send_search: bool, send_mtu: bool = True) -> DhcpMessage:
    """The reply's fields as RFC 2131 table 3 sets them."""
    options = {OPT_MESSAGE_TYPE: bytes([kind]), OPT_SERVER_ID: v4.gateway}
    inform = request.message_type == INFORM
    if kind != NAK:
        if not inform:
            options[OPT_LEASE_TIME] = struct.pack("!I", INFINITE_LEASE)
        options |= _configuration(net, v4, send_dns, send_search, send_mtu)
    if OPT_CLIENT_ID in request.options:
        options[OPT_CLIENT_ID] = request.options[OPT_CLIENT_ID]  # RFC 6842
    return DhcpMessage(
        BOOTREPLY, request.xid, request.flags,
        ciaddr=request.ciaddr if kind == ACK else ZERO4, chaddr=request.chaddr,
        options=options, yiaddr=v4.addr if kind != NAK and not inform else ZERO4,
        giaddr=request.giaddr)


def _configuration(net: Network, v4: IPv4Params, send_dns: bool,
                   send_search: bool, send_mtu: bool = True) -> dict[int, bytes]:
    """Everything we hand out, whatever the parameter request list says (as
    passt does): clients ignore what they did not ask for."""
    mask = subnet_mask(v4.prefix_len)
    options = {OPT_SUBNET_MASK: mask, OPT_ROUTER: v4.gateway}
    if v4.prefix_len <= 30:  # /31 and /32 have no broadcast address (RFC 3021)
        options[OPT_BROADCAST] = bytes(a | (~m & 0xFF) for a, m in zip(v4.addr, mask,
                                                                        strict=True))
    if send_dns and v4.dns:
        options[OPT_DNS] = b"".join(v4.dns)
    if send_search and net.search:
        options[OPT_DOMAIN_SEARCH] = encode_names(net.search)
    if send_mtu and MIN_MTU <= net.mtu <= MAX_MTU:
        options[OPT_MTU] = struct.pack("!H", net.mtu)
    return options


def subnet_mask(prefix_len: int) -> bytes:
    """``24`` -> ``255.255.255.0`` as 4 bytes."""
    return ((0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF).to_bytes(4, "big")
