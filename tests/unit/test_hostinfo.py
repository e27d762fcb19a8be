"""The host's network as the netlink helper sends it (through msgpack, as
fdpass does) and what the guest is given from it."""

from __future__ import annotations

import ipaddress

import msgpack

from passt_sep.broker.hostinfo import (
    LOCAL_ADDR4,
    RT_SCOPE_LINK,
    HostFamily,
    HostInfo,
    Route,
    guest_network,
    ns_family,
    read_resolv_conf,
)
from passt_sep.config import parse_args
from passt_sep.netparams import link_local_from_mac

HOST = HostInfo(
    v4=HostFamily("eth0", 2, "192.0.2.2", 24, "192.0.2.1",
                  (Route("0.0.0.0", 0, "192.0.2.1", 100), Route("198.51.100.0", 24, "192.0.2.254",
                                                               None))),
    v6=HostFamily("eth0", 2, "2001:db8::2", 64, "fe80::1", (), (("2001:db8::2", 64),),
                  "fe80::40ad:72ff:fed5:da74"),
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


def test_guests_router_is_the_hosts_link_local_address() -> None:
    """As passt: RAs, NDP and DHCPv6 answers come from the gateway if it is
    link-local, else from the host's own link-local address, else from one
    made up from our MAC."""
    net = guest_network(parse_args([], "pasta-sep"), HOST)
    assert net.our_link_local == packed("fe80::1")          # the gateway: link-local
    global_gateway = HostInfo(v4=None, v6=HostFamily(
        "eth0", 2, "2001:db8::2", 64, "2001:db8::1", link_local="fe80::40ad:72ff:fed5:da74"),
        mtu=1500)
    net = guest_network(parse_args([], "pasta-sep"), global_gateway)
    assert net.our_link_local == packed("fe80::40ad:72ff:fed5:da74")
    net = guest_network(parse_args(["-g", "fe80::5"], "pasta-sep"), global_gateway)
    assert net.our_link_local == packed("fe80::5")
    no_link_local = HostInfo(v4=None, v6=HostFamily("eth0", 2, "2001:db8::2", 64,
                                                    "2001:db8::1"), mtu=1500)
    net = guest_network(parse_args([], "pasta-sep"), no_link_local)
    assert net.our_link_local == link_local_from_mac(net.our_mac)


# -- what --config-net sets -------------------------------------------------------------

KERNEL, BOOT = 2, 3
TEMPLATE = HostInfo(
    v4=HostFamily("eth0", 2, "198.51.100.2", 24, "198.51.100.1", (
        Route("0.0.0.0", 0, "198.51.100.1", None),
        Route("192.0.2.0", 28, None, None, RT_SCOPE_LINK, KERNEL),
        Route("192.0.2.128", 25, "192.0.2.1", 50),
        Route("198.51.100.0", 24, None, None, RT_SCOPE_LINK, KERNEL),
        Route("203.0.113.128", 25, "198.51.100.1", None)),
        (("198.51.100.2", 24), ("192.0.2.10", 28), ("198.51.100.3", 24))),
    v6=HostFamily("eth0", 2, "2001:db8:1::2", 64, "2001:db8:1::1", (
        Route("2001:db8:1::", 64, None, 256, 0, KERNEL),
        Route("2001:db8:3::", 64, None, 256, 0, KERNEL),
        Route("2001:db8:5::", 48, "2001:db8:3::1", 1024),
        Route("fe80::", 64, None, 256, 0, KERNEL),
        Route("::", 0, "2001:db8:1::1", 1024)),
        (("2001:db8:3::2", 64), ("2001:db8:1::2", 64)), "fe80::40ad:72ff:fed5:da74"),
    mtu=1500)


def plan(*argv: str, host: HostInfo = TEMPLATE):
    config = parse_args(["--config-net", *argv], "pasta-sep")
    net = guest_network(config, host)
    assert net.ipv4 is not None and net.ipv6 is not None
    return ns_family(config, net.ipv4, host.v4), ns_family(config, net.ipv6, host.v6)


def test_config_net_copies_every_address_and_route_prefix_routes_first() -> None:
    v4, v6 = plan()
    assert v4.addresses == TEMPLATE.v4.addresses and v6.addresses == TEMPLATE.v6.addresses
    assert v4.routes == (
        Route("192.0.2.0", 28, None, None, RT_SCOPE_LINK, KERNEL),
        Route("198.51.100.0", 24, None, None, RT_SCOPE_LINK, KERNEL),
        Route("192.0.2.128", 25, "192.0.2.1", 50),
        Route("203.0.113.128", 25, "198.51.100.1", None),
        Route("0.0.0.0", 0, "198.51.100.1", None))
    assert [(r.dst, r.onlink) for r in v6.routes] == [
        ("2001:db8:1::", False), ("2001:db8:3::", False), ("fe80::", False),
        ("2001:db8:5::", False), ("::", False)]


def test_address_option_stops_copying_that_versions_addresses_only() -> None:
    v4, v6 = plan("-a", "192.0.2.7")
    assert v4.addresses == (("192.0.2.7", 24),)
    assert v6.addresses == TEMPLATE.v6.addresses
    v4, v6 = plan("-a", "2001:db8:ff::7")
    assert v4.addresses == TEMPLATE.v4.addresses
    assert v6.addresses == (("2001:db8:ff::7", 64),)
    v4, v6 = plan("--no-copy-addrs")
    assert (v4.addresses, v6.addresses) == ((("198.51.100.2", 24),), (("2001:db8:1::2", 64),))


def test_netmask_option_applies_to_the_copied_primary_address() -> None:
    v4, _ = plan("-n", "16")
    assert v4.addresses == (("198.51.100.2", 16), ("192.0.2.10", 28), ("198.51.100.3", 24))


def test_address_outside_the_subnet_reaches_the_gateway_through_copied_prefixes() -> None:
    """Podman's --net=pasta:-a,ADDR: the default route's gateway is behind a
    copied prefix route, added before it."""
    v4, v6 = plan("-a", "192.0.2.7", "-n", "32", "-a", "2001:db8:ff::7")
    assert v4.routes[1] == Route("198.51.100.0", 24, None, None, RT_SCOPE_LINK, KERNEL)
    assert v4.routes[-1] == Route("0.0.0.0", 0, "198.51.100.1", None)
    assert v6.routes[-1] == Route("::", 0, "2001:db8:1::1", 1024)
    assert not any(route.onlink for route in v4.routes + v6.routes)


def test_gateway_option_stops_copying_that_versions_routes() -> None:
    v4, v6 = plan("-g", "198.51.100.1")
    assert v4.routes == (Route("0.0.0.0", 0, "198.51.100.1", None),)
    assert len(v6.routes) == len(TEMPLATE.v6.routes)
    v4, v6 = plan("--no-copy-routes")
    assert v4.routes == (Route("0.0.0.0", 0, "198.51.100.1", None),)
    assert v6.routes == (Route("::", 0, "2001:db8:1::1", None),)


def test_gateway_no_prefix_covers_is_declared_on_link() -> None:
    v4, v6 = plan("-a", "192.0.2.7", "-g", "203.0.113.5", "-a", "2001:db8:ff::7",
                  "-g", "2001:db8:2::5")
    assert v4.routes == (Route("0.0.0.0", 0, "203.0.113.5", None, onlink=True),)
    assert v6.routes == (Route("::", 0, "2001:db8:2::5", None, onlink=True),)
    v4, v6 = plan("-a", "192.0.2.7", "-g", "192.0.2.1", "-a", "2001:db8:ff::7",
                  "-g", "2001:db8:ff::1")
    assert not v4.routes[0].onlink and not v6.routes[0].onlink
    _, v6 = plan("-g", "fe80::5")
    assert v6.routes == (Route("::", 0, "fe80::5", None),)


def test_host_route_marked_on_link_stays_so() -> None:
    v4 = HostFamily("eth0", 2, "198.51.100.2", 32, "192.0.2.1",
                    (Route("0.0.0.0", 0, "192.0.2.1", None, onlink=True),),
                    (("198.51.100.2", 32),))
    host = HostInfo(v4=v4, v6=TEMPLATE.v6, mtu=1500)
    routes, _ = plan(host=host)
    assert routes.routes == (Route("0.0.0.0", 0, "192.0.2.1", None, onlink=True),)
