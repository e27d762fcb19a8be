"""The host's network as the netlink helper sends it (through msgpack, as
fdpass does) and what the guest is given from it."""

from __future__ import annotations

import ipaddress

import msgpack

from passt_sep.broker.hostinfo import (
    LOCAL_ADDR4,
    HostFamily,
    HostInfo,
    Route,
    guest_network,
    read_resolv_conf,
)
from passt_sep.config import parse_args

HOST = HostInfo(
    v4=HostFamily("eth0", 2, "192.0.2.2", 24, "192.0.2.1",
                  (Route("0.0.0.0", 0, "192.0.2.1", 100), Route("198.51.100.0", 24, "192.0.2.254",
                                                               None))),
    v6=HostFamily("eth0", 2, "2001:db8::2", 64, "fe80::1", ()),
    mtu=1500, resolvers=("127.0.0.53", "2001:db8::53"), search=("example.test",),
    warnings=("a warning",))


def through_msgpack(host: HostInfo) -> HostInfo:
    wire = msgpack.packb({"host": host.to_map()}, use_bin_type=True)
    return HostInfo.from_map(msgpack.unpackb(wire, raw=False)["host"])


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def test_host_survives_the_trip_from_the_helper() -> None:
    assert through_msgpack(HOST) == HOST


def test_host_without_a_family_survives_the_trip() -> None:
    bare = HostInfo(v4=None, v6=None, mtu=None)
    assert through_msgpack(bare) == bare


def test_guest_gets_the_hosts_address_and_gateway() -> None:
    net = guest_network(parse_args(["--config-net", "--dhcp-search"], "pasta-sep"), HOST)
    assert net.ipv4 is not None and net.ipv6 is not None
    assert (net.ipv4.addr, net.ipv4.prefix_len, net.ipv4.gateway) == \
        (packed("192.0.2.2"), 24, packed("192.0.2.1"))
    assert (net.ipv6.addr, net.ipv6.gateway) == (packed("2001:db8::2"), packed("fe80::1"))
    assert net.search == ("example.test",)
    assert net.mtu == 65520


def test_loopback_resolver_is_reached_through_the_gateway() -> None:
    net = guest_network(parse_args([], "passt-sep"), HOST)
    assert net.ipv4 is not None and net.ipv6 is not None
    assert net.ipv4.dns == (packed("192.0.2.1"),)
    assert net.ipv6.dns == (packed("2001:db8::53"),)


def test_pasta_hands_out_resolvers_and_search_list_only_when_asked() -> None:
    """As pasta: no DNS servers and no search list (DHCP, DHCPv6, NDP's RDNSS
    and DNSSL) unless --dhcp-dns and --dhcp-search; passt hands both out
    unless --no-dhcp-dns and --no-dhcp-search."""
    for argv, prog, dns, search in (
            ([], "pasta-sep", False, False), (["--dhcp-dns"], "pasta-sep", True, False),
            (["--dhcp-search"], "pasta-sep", False, True), ([], "passt-sep", True, True),
            (["--no-dhcp-dns"], "passt-sep", False, True),
            (["--no-dhcp-search"], "passt-sep", True, False)):
        net = guest_network(parse_args(argv, prog), HOST)
        assert net.ipv4 is not None and net.ipv6 is not None
        assert bool(net.ipv4.dns) == bool(net.ipv6.dns) == dns, argv
        assert (net.search == ("example.test",)) == search, argv


def test_dns_host_is_where_forwarded_queries_go() -> None:
    argv = ["--dns-forward", "169.254.1.1", "--dns-host", "192.0.2.53", "--dns-host",
            "2001:db8::99", "--dns-host", "192.0.2.54"]
    net = guest_network(parse_args(argv, "pasta-sep"), HOST)
    assert net.host_resolvers[:2] == ("2001:db8::99", "192.0.2.54")
    assert guest_network(parse_args([], "pasta-sep"), HOST).host_resolvers == HOST.resolvers


def test_no_ipv4_on_the_host_gives_a_link_local_one() -> None:
    net = guest_network(parse_args([], "pasta-sep"), HostInfo(v4=None, v6=None, mtu=None))
    assert net.ipv4 is not None and net.ipv4.addr == packed(LOCAL_ADDR4)
    assert net.ipv6 is None


def test_resolv_conf_nameservers_and_search(tmp_path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n"
                    "nameserver bogus\nsearch a.test b.test\n")
    assert read_resolv_conf(str(path)) == (("192.0.2.53", "fe80::1"), ("a.test", "b.test"))
    assert read_resolv_conf(str(tmp_path / "missing")) == ((), ())


IPV6_ONLY = HostInfo(v4=None, v6=HostFamily("eth0", 2, "2001:db8::2", 64, "fe80::1", ()),
                     mtu=1500, resolvers=("2001:db8::53",))


def test_clat_on_an_ipv6_only_host_gives_the_rfc7335_address_and_a_resolver() -> None:
    """--clat: the guest's IPv4 from 192.0.0.0/29, its resolver the gateway
    (forwarded to the host's IPv6 resolver), IPv6 as without it."""
    net = guest_network(parse_args(["--clat"], "passt-sep"), IPV6_ONLY)
    assert net.ipv4 is not None and net.ipv6 is not None
    assert (net.ipv4.addr, net.ipv4.prefix_len, net.ipv4.gateway, net.ipv4.dns) == \
        (packed("192.0.0.2"), 29, packed("192.0.0.1"), (packed("192.0.0.1"),))
    assert net.ipv6.dns == (packed("2001:db8::53"),)


def test_clat_address_and_gateway_follow_the_options() -> None:
    argv = ["--clat", "-a", "192.0.2.10", "-n", "24", "-g", "192.0.2.1"]
    net = guest_network(parse_args(argv, "passt-sep"), IPV6_ONLY)
    assert net.ipv4 is not None
    assert (net.ipv4.addr, net.ipv4.prefix_len, net.ipv4.gateway) == \
        (packed("192.0.2.10"), 24, packed("192.0.2.1"))
    only_address = guest_network(parse_args(["--clat", "-a", "192.0.2.10"], "passt-sep"),
                                 IPV6_ONLY)
    assert only_address.ipv4 is not None and only_address.ipv4.gateway == packed("192.0.0.1")


def test_clat_keeps_the_hosts_ipv4_where_there_is_one() -> None:
    assert guest_network(parse_args(["--clat"], "passt-sep"), HOST).ipv4 == \
        guest_network(parse_args([], "passt-sep"), HOST).ipv4
