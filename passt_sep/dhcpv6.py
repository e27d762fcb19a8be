"""DHCPv6 server for one address (RFC 8415; DNS options RFC 3646).

Every IA_NA a client asks about gets the same address, the guest's, with
infinite T1, T2 and lifetimes, plus the resolvers and the search list, as
passt does.  There is no binding state: whatever a client holds, the answer
is that address.  Prefix delegation is refused (NoPrefixAvail), temporary
addresses (IA_TA, deprecated by RFC 8415) are ignored.

Our DUID is a DUID-LL of our MAC: stable across restarts, so a client that
kept its lease renews with the server that gave it.  Replies go from our
link-local address to the client's source address and MAC.  No I/O here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from .dnswire import encode_names
from .netparams import IPv6Params, Network
from .packet import UDP, Drop, Inbound, udp_frame

SERVER_PORT, CLIENT_PORT = 547, 546
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE = range(1, 10)
INFORMATION_REQUEST = 11

OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IA_TA, OPT_IAADDR = 1, 2, 3, 4, 5
OPT_PREFERENCE, OPT_STATUS_CODE, OPT_RAPID_COMMIT = 7, 13, 14
OPT_DNS_SERVERS, OPT_DOMAIN_LIST, OPT_IA_PD = 23, 24, 25

STATUS_SUCCESS, STATUS_NOT_ON_LINK, STATUS_NO_PREFIX_AVAIL = 0, 4, 6
INFINITE = 0xFFFFFFFF
MAX_PREFERENCE = 255   # RFC 8415 §18.2.1: the client need not wait for other servers
DUID_LL, HW_ETHERNET = 3, 1

_HEADER = struct.Struct("!I")          # msg-type (8 bits), transaction-id (24 bits)
_OPTION = struct.Struct("!HH")         # option-code, option-len
_IA = struct.Struct("!4sII")           # IA_NA and IA_PD: IAID, T1, T2, then options
_IAADDR = struct.Struct("!16sII")      # address, preferred and valid lifetime
_STATUS = struct.Struct("!H")          # status-code, then a UTF-8 message

Options = list[tuple[int, bytes]]

# RFC 8415 §16: SOLICIT, CONFIRM and REBIND go to any server and must not
# name one; REQUEST, RENEW, RELEASE and DECLINE must name the server they
# are for; an INFORMATION-REQUEST may name one.
_NAMES_NO_SERVER = frozenset({SOLICIT, CONFIRM, REBIND})
_NAMES_A_SERVER = frozenset({REQUEST, RENEW, RELEASE, DECLINE})


@dataclass(frozen=True)
class Dhcpv6Message:
    """A client/server message (RFC 8415 §8); options in wire order."""

    msg_type: int
    transaction_id: int
    options: Options = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.msg_type <= 0xFF or not 0 <= self.transaction_id <= 0xFFFFFF:
            raise ValueError("msg-type is 8 bits, transaction-id 24 bits")

    def get(self, code: int) -> bytes | None:
        """The first option ``code``, or None."""
        return next((value for kind, value in self.options if kind == code), None)

    def all(self, code: int) -> list[bytes]:
        return [value for kind, value in self.options if kind == code]


def parse_dhcpv6(payload: bytes | memoryview) -> Dhcpv6Message:
    if len(payload) < _HEADER.size:
        raise Drop("dhcpv6_short")
    (header,) = _HEADER.unpack_from(payload)
    return Dhcpv6Message(header >> 24, header & 0xFFFFFF, parse_options(payload[_HEADER.size:]))


def build_dhcpv6(message: Dhcpv6Message) -> bytes:
    header = _HEADER.pack(message.msg_type << 24 | message.transaction_id)
    return header + build_options(message.options)


def parse_options(data: bytes | memoryview) -> Options:
    """Options of a message, or of an option that holds options (IA_NA)."""
    options = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _OPTION.size:
            raise Drop("dhcpv6_option_short")
        code, length = _OPTION.unpack_from(data, offset)
        start = offset + _OPTION.size
        if start + length > len(data):
            raise Drop("dhcpv6_option_length")
        options.append((code, bytes(data[start:start + length])))
        offset = start + length
    return options


def build_options(options: Options) -> bytes:
    return b"".join(_OPTION.pack(code, len(value)) + value for code, value in options)


def server_duid(net: Network) -> bytes:
    """DUID-LL (RFC 8415 §11.4) from our MAC."""
    return struct.pack("!HH", DUID_LL, HW_ETHERNET) + net.our_mac


def handle_dhcpv6(net: Network, inb: Inbound, udp: UDP, *, send_dns: bool = True,
                  send_search: bool = True) -> bytes | None:
    """The reply frame to a guest's message to port 547, or None."""
    v6 = net.ipv6
    if v6 is None:
        raise Drop("dhcpv6_no_ipv6")
    request = parse_dhcpv6(udp.payload)
    handler = _HANDLERS.get(request.msg_type)
    if handler is None:
        raise Drop("dhcpv6_type")
    client_id = request.get(OPT_CLIENTID)
    if client_id is None and request.msg_type != INFORMATION_REQUEST:
        raise Drop("dhcpv6_no_client_id")
    duid = server_duid(net)
    if not _for_us(request, duid):
        return None
    answer = handler(_Lease(v6, _configuration(net, v6, send_dns, send_search)), request)
    if answer is None:
        return None
    reply_type, body = answer
    ids = [(OPT_SERVERID, duid)] + ([(OPT_CLIENTID, client_id)] if client_id is not None else [])
    reply = Dhcpv6Message(reply_type, request.transaction_id, ids + body)
    return udp_frame(inb.eth.src, net.our_mac, net.our_link_local, inb.src,
                     SERVER_PORT, CLIENT_PORT, build_dhcpv6(reply))


def _for_us(request: Dhcpv6Message, duid: bytes) -> bool:
    named = request.get(OPT_SERVERID)
    if request.msg_type in _NAMES_NO_SERVER:
        return named is None
    if request.msg_type in _NAMES_A_SERVER:
        return named == duid
    return named is None or named == duid


def _configuration(net: Network, v6: IPv6Params, send_dns: bool, send_search: bool) -> Options:
    """The resolvers and the search list, as far as we may send them."""
    options: Options = []
    if send_dns and v6.dns:
        options.append((OPT_DNS_SERVERS, b"".join(v6.dns)))
    if send_search and net.search:
        options.append((OPT_DOMAIN_LIST, encode_names(net.search)))
    return options


@dataclass(frozen=True)
class _Lease:
    """What every answer draws from."""

    v6: IPv6Params
    configuration: Options


_Answer = tuple[int, Options] | None


def _solicit(lease: _Lease, request: Dhcpv6Message) -> _Answer:
    """ADVERTISE, or with Rapid Commit the REPLY that binds at once (§18.3.1)."""
    body = _ia_answers(lease.v6, request, retire=False) + lease.configuration
    if request.get(OPT_RAPID_COMMIT) is not None:
        return REPLY, [(OPT_RAPID_COMMIT, b"")] + body
    return ADVERTISE, [(OPT_PREFERENCE, bytes([MAX_PREFERENCE]))] + body


def _request(lease: _Lease, request: Dhcpv6Message) -> _Answer:
    return REPLY, _ia_answers(lease.v6, request, retire=False) + lease.configuration


def _renew(lease: _Lease, request: Dhcpv6Message) -> _Answer:
    """RENEW and REBIND: addresses the client holds that are not the guest's
    come back with zero lifetimes so that it stops using them (§18.3.4)."""
    return REPLY, _ia_answers(lease.v6, request, retire=True) + lease.configuration


def _confirm(lease: _Lease, request: Dhcpv6Message) -> _Answer:
    """Success only if every address the client holds is the one we lease:
    NotOnLink sends anything else back to SOLICIT, which is where it gets
    the right address.  No addresses: no reply (§18.3.3)."""
    held = [address for ia in request.all(OPT_IA_NA) for address in _addresses(_parse_ia(ia)[1])]
    if not held:
        return None
    if all(address == lease.v6.addr for address in held):
        return REPLY, [_status(STATUS_SUCCESS, "all addresses still valid")]
    return REPLY, [_status(STATUS_NOT_ON_LINK, "not the address we lease")]


def _release(lease: _Lease, request: Dhcpv6Message) -> _Answer:
    """RELEASE and DECLINE: nothing changes, the client hears that it worked."""
    return REPLY, [_status(STATUS_SUCCESS, "")]


def _information(lease: _Lease, request: Dhcpv6Message) -> _Answer:
    return REPLY, list(lease.configuration)


_HANDLERS: dict[int, Callable[[_Lease, Dhcpv6Message], _Answer]] = {
    SOLICIT: _solicit, REQUEST: _request, RENEW: _renew, REBIND: _renew, CONFIRM: _confirm,
    RELEASE: _release, DECLINE: _release, INFORMATION_REQUEST: _information,
}


def _ia_answers(v6: IPv6Params, request: Dhcpv6Message, retire: bool) -> Options:
    """One answer per IA_NA and IA_PD, in the order the client sent them."""
    answers: Options = []
    for code, ia in request.options:
        if code == OPT_IA_NA:
            answers.append((OPT_IA_NA, _ia_na(v6, ia, retire)))
        elif code == OPT_IA_PD:
            answers.append((OPT_IA_PD, _ia_pd(ia)))
    return answers


def _ia_na(v6: IPv6Params, ia: bytes, retire: bool) -> bytes:
    """The client's IAID with the guest's address, forever."""
    iaid, options = _parse_ia(ia)
    addresses = [(OPT_IAADDR, _IAADDR.pack(v6.addr, INFINITE, INFINITE))]
    if retire:
        addresses += [(OPT_IAADDR, _IAADDR.pack(address, 0, 0))
                      for address in _addresses(options) if address != v6.addr]
    return _IA.pack(iaid, INFINITE, INFINITE) + build_options(addresses)


def _ia_pd(ia: bytes) -> bytes:
    """No prefixes to delegate (RFC 8415 §18.3.2)."""
    iaid, _ = _parse_ia(ia)
    status = _status(STATUS_NO_PREFIX_AVAIL, "no prefixes to delegate")
    return _IA.pack(iaid, 0, 0) + build_options([status])


def _parse_ia(ia: bytes) -> tuple[bytes, Options]:
    """The IAID and the options of an IA_NA or IA_PD."""
    if len(ia) < _IA.size:
        raise Drop("dhcpv6_ia_short")
    return ia[:4], parse_options(ia[_IA.size:])


def _addresses(ia_options: Options) -> list[bytes]:
    """The addresses in an IA_NA's IA Address options."""
    addresses = []
    for code, value in ia_options:
        if code == OPT_IAADDR:
            if len(value) < _IAADDR.size:
                raise Drop("dhcpv6_iaaddr_short")
            addresses.append(value[:16])
    return addresses


def _status(code: int, message: str) -> tuple[int, bytes]:
    return OPT_STATUS_CODE, _STATUS.pack(code) + message.encode()
