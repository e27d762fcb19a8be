"""Everything the broker says over rtnetlink: reading the host's routes,
addresses and MTU, and setting up the target namespace's tap.

With ``--config-net`` the namespace gets, as with pasta, every address
and route of the host's template interface (``hostinfo.ns_family`` decides
which, in what order) and the MTU; without it the tap stays down.  Only the
netlink helper (``netlink.py``) imports this module.

pyroute2 encodes and decodes the messages (its rtmsg and ifaddrmsg, and
``LinkMessage`` declared on its base); the socket is ours (``Rtnl``).  Its
IPRoute would cost 60-100 ms of imports (asyncio, ssl, multiprocessing,
its mock backend...) for what takes three dumps to read and one batch to
write: every change to the tap goes to the kernel in a single ``sendmsg``,
which it runs in order, answering only what fails and, last, the tap's
state.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyroute2.netlink import (
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    nlmsg,
)
from pyroute2.netlink.rtnl import (
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ..config import Config
from ..netparams import Network
from .hostinfo import (
    LOCAL_ADDR4,
    LOCAL_GATEWAY4,
    LOCAL_PREFIX4,
    RESOLV_CONF,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    HostFamily,
    HostInfo,
    NsFamily,
    Route,
    ns_family,
    read_resolv_conf,
)
from .tap import TAP_QUEUE_LEN

IFA_F_NODAD = 0x02
IFA_F_TEMPORARY = 0x01
IFF_UP = 0x01
RTN_UNICAST = 1
RTNH_F_ONLINK = 0x04
RT_TABLE_MAIN = 254
NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCP_LISTEN = 10
RECEIVE_SIZE = 1 << 16      # a dump's datagrams are at most 32 KiB
_HEADER = struct.Struct("=IHHII")
_ERROR = struct.Struct("=i")
# struct inet_diag_req_v2: family, protocol, extensions, pad, states, and a
# socket id (ports, addresses, interface, cookie) left zero for a dump
_DIAG_REQUEST = struct.Struct("=BBBxI48x")
_DIAG_SPORT = struct.Struct("!H")   # struct inet_diag_msg: the id's source port
_DIAG_SPORT_OFFSET = 4
_RTM_TABLE_OFFSET = 4               # struct rtmsg: family, dst_len, src_len, tos, table


class LinkMessage(nlmsg):
    """A link message (struct ifinfomsg) with the four attributes read and
    set here.  pyroute2's own ifinfmsg loads some twenty link-type plugins
    and pyroute2.config (multiprocessing, platform, pickle): 6-11 ms of the
    helper's start, for the name, MTU, MAC and queue length.  Other attributes are kept
    undecoded."""

    prefix = "IFLA_"
    fields = (("family", "B"), ("__align", "x"), ("ifi_type", "H"), ("index", "i"),
              ("flags", "I"), ("change", "I"))
    nla_map = ((1, "IFLA_ADDRESS", "l2addr"), (3, "IFLA_IFNAME", "asciiz"),
               (4, "IFLA_MTU", "uint32"), (13, "IFLA_TXQLEN", "uint32"))


class NetconfError(Exception):
    """A netlink request failed: what was being done, and the kernel's reason."""


# -- the socket ---------------------------------------------------------------

@dataclass
class Request:
    """One change, what its failure means in words, and an error that is
    no failure (``EEXIST`` for a route that is there already)."""

    message: nlmsg
    kind: int
    flags: int
    what: str
    tolerated: int = 0


class Rtnl:
    """An rtnetlink socket in this process's network namespace, made where
    it is to act (the tap's socket after the helper entered the namespace).
    SOCK_DGRAM, which for netlink is the same as SOCK_RAW: the AppArmor
    profile allows netlink dgram."""

    def __init__(self, protocol: int = NETLINK_ROUTE) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                  protocol)
        self.seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def dump(self, message: nlmsg, kind: int,
             keep: Callable[[bytes, int], bool] | None = None) -> list:
        """Every object a dump request returns, decoded as ``message``'s
        class; only those ``keep`` (given the datagram and the offset of
        the object's payload) says to keep, when given: decoding is the
        slow part."""
        (seq,) = self._send([(message, kind, NLM_F_REQUEST | NLM_F_DUMP)])
        return [_decoded(type(message), data, offset) for data, offset in self._dumped(seq)
                if keep is None or keep(data, offset + _HEADER.size)]

    def dump_raw(self, kind: int, payload: bytes) -> list[tuple[bytes, int]]:
        """A dump request of ``payload`` bytes: each answer's datagram and
        the offset of its payload."""
        self.seq += 1
        header = _HEADER.pack(_HEADER.size + len(payload), kind, NLM_F_REQUEST | NLM_F_DUMP,
                              self.seq, 0)
        self.sock.send(header + payload)
        return [(data, offset + _HEADER.size) for data, offset in self._dumped(self.seq)]

    def _dumped(self, seq: int) -> Iterator[tuple[bytes, int]]:
        for data, offset, msg_type, msg_seq in self._messages():
            if msg_seq != seq:
                continue
            if msg_type == NLMSG_DONE:
                return
            if msg_type == NLMSG_ERROR:
                code = -_ERROR.unpack_from(data, offset + _HEADER.size)[0]
                raise OSError(code, os.strerror(code))
            yield data, offset

    def apply(self, requests: list[Request], index: int) -> nlmsg:
        """Send every request in one datagram, then a request for the state
        of link ``index``, and return that state.  The kernel runs them in
        order, each whatever became of the one before, and answers a
        change only if it fails: the link's state comes last, once all is
        done.  Raise for the first request the kernel refused."""
        query = LinkMessage()
        query["index"] = index
        seqs = self._send([(r.message, r.kind, r.flags | NLM_F_REQUEST) for r in requests]
                          + [(query, RTM_GETLINK, NLM_F_REQUEST)])
        codes: dict[int, int] = {}
        for data, offset, msg_type, msg_seq in self._messages():
            if msg_type == NLMSG_ERROR:
                codes[msg_seq] = -_ERROR.unpack_from(data, offset + _HEADER.size)[0]
            if msg_seq == seqs[-1]:
                break
        for request, seq in zip(requests, seqs, strict=False):
            code = codes.get(seq, 0)
            if code and code != request.tolerated:
                raise NetconfError(f"{request.what}: {os.strerror(code)}")
        if seqs[-1] in codes:
            raise NetconfError(f"cannot read the state of link {index}: "
                               f"{os.strerror(codes[seqs[-1]])}")
        return _decoded(LinkMessage, data, offset)

    def _send(self, messages: list[tuple[nlmsg, int, int]]) -> list[int]:
        data = bytearray()
        seqs = []
        for message, kind, flags in messages:
            self.seq += 1
            header = message["header"]
            header["type"], header["flags"], header["sequence_number"] = kind, flags, self.seq
            message.encode()
            data += message.data + bytes(-len(message.data) % 4)
            seqs.append(self.seq)
        self.sock.send(data)
        return seqs

    def _messages(self) -> Iterator[tuple[bytes, int, int, int]]:
        """Each message received: its datagram, offset, type and sequence number."""
        while True:
            data = self.sock.recv(RECEIVE_SIZE)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, msg_type, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    break
                yield data, offset, msg_type, seq
                offset += (length + 3) & ~3


def _decoded(cls: type, data: bytes, offset: int) -> nlmsg:
    message = cls(data, offset=offset)
    message.decode()
    return message


# -- reading the host ---------------------------------------------------------

def read_host(config: Config, resolv_conf: str = RESOLV_CONF) -> HostInfo:
    resolvers, search = read_resolv_conf(resolv_conf)
    warnings = []
    with Rtnl() as rtnl:     # three dumps, both families at once
        routes = rtnl.dump(_family_message(rtmsg), RTM_GETROUTE, keep=_in_main_table)
        links = rtnl.dump(_family_message(LinkMessage), RTM_GETLINK)
        addresses = rtnl.dump(_family_message(ifaddrmsg), RTM_GETADDR)
    v4 = None if config.ipv6_only else \
        _read_family(routes, links, addresses, socket.AF_INET, config)
    v6 = None if config.ipv4_only else \
        _read_family(routes, links, addresses, socket.AF_INET6, config)
    family = v4 or v6
    mtu = _link(links, family.ifindex).get("mtu") if family else None
    missing = []
    if v4 is None and not config.ipv6_only and not config.address4 and not config.clat:
        missing.append(f"IPv4 is local-only ({LOCAL_ADDR4}/{LOCAL_PREFIX4}, gateway "
                       f"{LOCAL_GATEWAY4} = the host)")
    if v6 is None and not config.ipv4_only and not config.address6:
        missing.append("no IPv6")
    if missing:
        warnings.append("no usable default route on the host: " + "; ".join(missing))
    return HostInfo(v4, v6, mtu, resolvers, search, tuple(warnings))


def listening_tcp_ports() -> list[int] | None:
    """The ports TCP sockets of this network namespace listen on, asked of
    sock_diag for listening sockets alone: reading ``/proc/net/tcp{,6}``
    walks the kernel's whole connection hash table (some 1-4 ms each time,
    twice per file) even where nothing is connected.  None if sock_diag
    cannot answer (its module not loaded, a security policy): the worker
    reads the tables then."""
    ports: set[int] = set()
    try:
        with Rtnl(NETLINK_SOCK_DIAG) as diag:
            for family in (socket.AF_INET, socket.AF_INET6):
                request = _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN)
                ports.update(_DIAG_SPORT.unpack_from(data, offset + _DIAG_SPORT_OFFSET)[0]
                             for data, offset in diag.dump_raw(SOCK_DIAG_BY_FAMILY, request))
    except OSError:
        return None
    return sorted(ports)


def _in_main_table(data: bytes, offset: int) -> bool:
    """A route of the main table, by its rtmsg's table byte: the local
    table's (one or two per address) are not decoded."""
    return data[offset + _RTM_TABLE_OFFSET] == RT_TABLE_MAIN


def _family_message(cls: type) -> nlmsg:
    """A dump request for every family (a kernel without IPv6 returns IPv4's)."""
    message = cls()
    message["family"] = socket.AF_UNSPEC
    return message


def _read_family(all_routes: list, links: list, all_addresses: list, family: int,
                 config: Config) -> HostFamily | None:
    routes = [r for r in all_routes if r["family"] == family]
    ifindex = _outbound_ifindex(links, routes, config.interface)
    if ifindex is None:
        return None
    ifname = _link(links, ifindex).get("ifname")
    found = [a for a in all_addresses if a["family"] == family and a["index"] == ifindex]
    addresses = _copied_addresses(found)
    addr = _primary_address(found, addresses)
    if addr is None:
        return None
    gateway = next((r.get("gateway") for r in routes
                    if r["dst_len"] == 0 and r.get("oif") == ifindex and r.get("gateway")), None)
    copied = tuple(_route(r, family) for r in routes
                   if r.get("oif") == ifindex and r["type"] == RTN_UNICAST)
    link_local = next((a.get("address") for a in found if a["scope"] == RT_SCOPE_LINK), None)
    return HostFamily(ifname, ifindex, addr[0], addr[1], gateway, copied, addresses,
                      link_local if family == socket.AF_INET6 else None)


def _link(links: list, ifindex: int) -> nlmsg:
    return next(link for link in links if link["index"] == ifindex)


def _outbound_ifindex(links: list, routes: list, interface: str | None) -> int | None:
    if interface:
        return next((link["index"] for link in links if link.get("ifname") == interface), None)
    defaults = sorted((r for r in routes if r["dst_len"] == 0 and r.get("oif")),
                      key=lambda r: r.get("priority") or 0)
    return defaults[0].get("oif") if defaults else None


def _copied_addresses(found: list) -> tuple[tuple[str, int], ...]:
    """Global addresses, in the kernel's order: what --config-net copies."""
    return tuple((a.get("address"), a["prefixlen"]) for a in found
                 if a["scope"] == RT_SCOPE_UNIVERSE
                 and not ipaddress.ip_address(a.get("address")).is_link_local)


def _primary_address(found: list, addresses: tuple[tuple[str, int], ...]) -> tuple[str, int] | None:
    """The guest's address: the first global one, a temporary (privacy) one last."""
    temporary = {a.get("address") for a in found if (a.get("flags") or 0) & IFA_F_TEMPORARY}
    ranked = sorted(addresses, key=lambda a: a[0] in temporary)
    return ranked[0] if ranked else None


def _route(message: nlmsg, family: int) -> Route:
    default = "0.0.0.0" if family == socket.AF_INET else "::"
    return Route(message.get("dst") or default, message["dst_len"], message.get("gateway"),
                 message.get("priority"), message["scope"], message["proto"],
                 bool(message["flags"] & RTNH_F_ONLINK))


# -- the target namespace ----------------------------------------------------

def set_up_tap(config: Config, ifname: str, net: Network, host: HostInfo) -> str:
    """Loopback up and the tap's MAC; with ``--config-net`` the tap up and
    configured too, else, as pasta, left down for the namespace's own DHCP,
    SLAAC or manual setup.  Returns the tap's MAC.  One batch, one
    answer (``Rtnl.apply``)."""
    index = socket.if_nametoindex(ifname)
    requests = []
    if config.ns_mac_addr:
        requests.append(_link_request(f"cannot set the MAC address of {ifname}", index,
                                      attrs=[("IFLA_ADDRESS", config.ns_mac_addr)]))
    # a queue that holds a burst while the worker catches up (tap.TAP_QUEUE_LEN)
    requests.append(_link_request(f"cannot set the queue length of {ifname}", index,
                                  attrs=[("IFLA_TXQLEN", TAP_QUEUE_LEN)]))
    requests.append(_link_request("cannot bring lo up", socket.if_nametoindex("lo"), up=True))
    if config.config_net:
        requests += _configuration(index, ifname, config, net, host)
    with Rtnl() as rtnl:
        return rtnl.apply(requests, index).get("address")


def _configuration(index: int, ifname: str, config: Config, net: Network,
                   host: HostInfo) -> list[Request]:
    """MTU, then the tap up, then per IP version addresses and routes."""
    requests = [_link_request(f"cannot set the MTU of {ifname} to {net.mtu}", index,
                              attrs=[("IFLA_MTU", net.mtu)])]
    if net.ipv6:
        _disable_ra(ifname)
    requests.append(_link_request(f"cannot bring {ifname} up", index, up=True))
    if net.ipv4:
        requests += _family_requests(index, ifname, socket.AF_INET,
                                     ns_family(config, net.ipv4, host.v4))
    if net.ipv6:
        requests += _family_requests(index, ifname, socket.AF_INET6,
                                     ns_family(config, net.ipv6, host.v6))
    return requests


def _link_request(what: str, index: int, up: bool = False,
                  attrs: list[tuple[str, object]] | None = None) -> Request:
    message = LinkMessage()
    message["index"] = index
    if up:
        message["flags"] = message["change"] = IFF_UP
    message["attrs"] = attrs or []
    return Request(message, RTM_NEWLINK, 0, what)


def _family_requests(index: int, ifname: str, family: int, plan: NsFamily) -> list[Request]:
    requests = [_address_request(index, ifname, family, addr, prefix_len)
                for addr, prefix_len in plan.addresses]
    return requests + [_route_request(index, ifname, family, route) for route in plan.routes]


def _address_request(index: int, ifname: str, family: int, addr: str,
                     prefix_len: int) -> Request:
    message = ifaddrmsg()
    message["family"], message["prefixlen"], message["index"] = family, prefix_len, index
    attrs: list[tuple[str, object]] = [("IFA_ADDRESS", addr)]
    if family == socket.AF_INET:
        attrs.append(("IFA_LOCAL", addr))
    else:
        attrs.append(("IFA_FLAGS", IFA_F_NODAD))
    message["attrs"] = attrs
    return Request(message, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                   f"cannot add the address {addr}/{prefix_len} to {ifname}")


def _route_request(index: int, ifname: str, family: int, route: Route) -> Request:
    """A route already there (the prefix route of an address) is fine."""
    message = rtmsg()
    message["family"], message["dst_len"], message["table"] = family, route.dst_len, RT_TABLE_MAIN
    message["proto"], message["scope"], message["type"] = route.proto, route.scope, RTN_UNICAST
    message["flags"] = RTNH_F_ONLINK if route.onlink else 0
    attrs: list[tuple[str, object]] = [("RTA_OIF", index)]
    if route.dst_len:
        attrs.append(("RTA_DST", route.dst))
    if route.gateway:
        attrs.append(("RTA_GATEWAY", route.gateway))
    if route.metric:
        attrs.append(("RTA_PRIORITY", route.metric))
    message["attrs"] = attrs
    return Request(message, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL,
                   f"cannot add {_describe(route)} on {ifname}", tolerated=errno.EEXIST)


def _describe(route: Route) -> str:
    what = "the default route" if route.dst_len == 0 else \
        f"the route to {route.dst}/{route.dst_len}"
    return f"{what} via {route.gateway}" if route.gateway else what


def _disable_ra(ifname: str) -> None:
    """Addresses and routes are set here: router advertisements would add
    a second (SLAAC) address and another default route."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/accept_ra"
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("0")
    except OSError as exc:
        raise NetconfError(f"cannot turn off router advertisements on {ifname}: "
                           f"{exc.strerror}") from None
