"""The broker's rtnetlink messages: built and parsed without a socket."""

from __future__ import annotations

import socket
import struct

from passt_sep.broker import rtnl


def _message(kind: int, flags: int, sequence: int, body: bytes) -> bytes:
    raw = rtnl.request(kind, flags, sequence, body)
    return raw + bytes(-len(raw) % 4)


def test_request_header_and_attribute_padding() -> None:
    attr = rtnl.attribute(rtnl.IFLA_IFNAME, b"lo\0")
    assert attr == struct.pack("=HH", 7, rtnl.IFLA_IFNAME) + b"lo\0" + b"\0"
    raw = rtnl.request(rtnl.RTM_GETLINK, rtnl.NLM_F_REQUEST, 7, attr)
    assert struct.unpack_from("=IHHII", raw) == (16 + 8, rtnl.RTM_GETLINK, 1, 7, 0)


def test_messages_split_a_datagram() -> None:
    data = _message(24, rtnl.NLM_F_MULTI, 1, b"abcde") + _message(rtnl.NLMSG_DONE, 2, 1, b"")
    parsed = [(kind, flags, seq, bytes(body)) for kind, flags, seq, body in rtnl.messages(data)]
    assert parsed == [(24, rtnl.NLM_F_MULTI, 1, b"abcde"), (rtnl.NLMSG_DONE, 2, 1, b"")]
    assert list(rtnl.messages(data[:10])) == []             # truncated: nothing


def test_route_parsed_with_pyroute2_names() -> None:
    body = (struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 4, 0, 1, 0)
            + rtnl.attribute(rtnl.RTA_DST, bytes([10, 1, 2, 0]))
            + rtnl.attribute(rtnl.RTA_GATEWAY, bytes([192, 0, 2, 1]))
            + rtnl.attribute(rtnl.RTA_OIF, struct.pack("=I", 3))
            + rtnl.attribute(rtnl.RTA_PRIORITY, struct.pack("=I", 100)))
    route = rtnl.parse_route(memoryview(body))
    assert (route["dst"], route["dst_len"], route["gateway"], route["oif"], route["priority"],
            route["table"]) == ("10.1.2.0", 24, "192.0.2.1", 3, 100, 254)


def test_link_and_address_parsed() -> None:
    link = rtnl.parse_link(memoryview(
        struct.pack("=BxHiII", 0, 1, 2, 1, 0) + rtnl.attribute(rtnl.IFLA_IFNAME, b"eth0\0")
        + rtnl.attribute(rtnl.IFLA_MTU, struct.pack("=I", 1500))
        + rtnl.attribute(rtnl.IFLA_ADDRESS, bytes.fromhex("020000000001"))))
    assert (link["index"], link["ifname"], link["mtu"], link["address"]) == \
        (2, "eth0", 1500, "02:00:00:00:00:01")
    address = rtnl.parse_address(memoryview(
        struct.pack("=BBBBi", socket.AF_INET6, 64, 0x01, 0, 2)
        + rtnl.attribute(rtnl.IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "2001:db8::5"))
        + rtnl.attribute(rtnl.IFA_FLAGS, struct.pack("=I", 0x101))))
    assert (address["address"], address["prefixlen"], address["flags"], address["index"]) == \
        ("2001:db8::5", 64, 0x101, 2)


def test_loopback_read_over_a_real_socket() -> None:
    with rtnl.Rtnl() as ipr:
        index = ipr.link_index("lo")
        assert index is not None
        assert ipr.link(index)["ifname"] == "lo"
        assert ipr.link_index("no-such-link0") is None
        assert all(a["index"] == index for a in ipr.addresses(socket.AF_INET, index))
