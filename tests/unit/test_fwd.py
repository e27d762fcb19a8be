"""Special-address mapping between the guest's view and host sockets."""

from __future__ import annotations

import ipaddress
import socket

from passt_sep.clat import Nat64Prefix
from passt_sep.fwd import (
    LOOPBACK4,
    LOOPBACK6,
    AddressMap,
    is_loopback_text,
    text_family,
    unmapped,
    unmapped_text,
    v4_mapped,
)


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


GW4, GW6 = ip("198.51.100.1"), ip("2001:db8:1::1")
HOST4, HOST6 = ip("198.51.100.2"), ip("2001:db8:1::2")


def amap(**options) -> AddressMap:
    defaults = dict(gateway4=GW4, gateway6=GW6, no_map_gw=False, map_host_loopback=None,
                    map_guest_addr=None, host_addr4=HOST4, host_addr6=HOST6)
    return AddressMap.build(**{**defaults, **options})


def test_gateway_means_host_loopback_by_default() -> None:
    m = amap()
    assert m.to_host(GW4, 80) == LOOPBACK4
    assert m.to_host(GW6, 80) == LOOPBACK6
    assert m.to_guest(LOOPBACK4, 80) == GW4
    assert m.to_guest(ip("127.0.0.5"), 80) == GW4
    assert m.to_guest(LOOPBACK6, 80) == GW6


def test_no_map_gw_leaves_gateway_alone() -> None:
    m = amap(no_map_gw=True)
    assert m.to_host(GW4, 80) == GW4
    assert m.to_guest(LOOPBACK4, 80) == LOOPBACK4


def test_map_host_loopback_replaces_gateway_mapping() -> None:
    m = amap(map_host_loopback="169.254.1.2")
    assert m.to_host(ip("169.254.1.2"), 22) == LOOPBACK4
    assert m.to_host(GW4, 22) == GW4
    assert m.to_guest(LOOPBACK4, 22) == ip("169.254.1.2")


def test_map_guest_addr_reaches_host_address() -> None:
    m = amap(map_guest_addr="169.254.1.2")
    assert m.to_host(ip("169.254.1.2"), 8080) == HOST4
    assert m.to_guest(HOST4, 8080) == ip("169.254.1.2")


def test_host_address_appears_as_the_gateway_without_map_guest_addr() -> None:
    """The guest holds the host's address itself: a host peer there (a
    local client, unspliced) must look like someone it can answer."""
    for m in (amap(), amap(no_map_gw=True)):
        assert m.to_guest(HOST4, 8080) == GW4
        assert m.to_guest(HOST6, 8080) == GW6
    assert amap(map_guest_addr="169.254.1.2").to_guest(HOST6, 8080) == GW6


def test_dns_forward_only_for_port_53() -> None:
    m = amap(dns_forward=("169.254.1.1", "fd00::53"), dns_servers=("203.0.113.1", "2001:db8:2::1"))
    assert m.to_host(ip("169.254.1.1"), 53) == ip("203.0.113.1")
    assert m.to_host(ip("169.254.1.1"), 54) == ip("169.254.1.1")
    assert m.to_host(ip("fd00::53"), 53) == ip("2001:db8:2::1")


def test_replies_keep_the_address_the_guest_used() -> None:
    m = amap(dns_forward=("169.254.1.1",), dns_servers=("203.0.113.1",))
    assert m.to_guest(ip("203.0.113.1"), 53, original_dst=ip("169.254.1.1")) == ip("169.254.1.1")
    assert m.to_guest(ip("203.0.113.9"), 80) == ip("203.0.113.9")


def test_loopback_from_socket_api_text() -> None:
    assert is_loopback_text("127.0.0.1") and is_loopback_text("127.3.2.1")
    assert is_loopback_text("::1") and is_loopback_text("::1%lo")
    assert not is_loopback_text("198.51.100.1") and not is_loopback_text("::12")
    assert not is_loopback_text("1.127.0.0")


def test_a_dual_stack_sockets_ipv4_peer_is_ipv4() -> None:
    """A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d: unmapped,
    it is that IPv4 address; every other address stays as it is, and the
    way back maps it again."""
    mapped = ip("::ffff:203.0.113.1")
    assert unmapped(mapped) == ip("203.0.113.1")
    assert v4_mapped(unmapped(mapped)) == mapped
    for other in (ip("203.0.113.1"), ip("2001:db8::1"), ip("::203.0.113.1"),
                  ip("::fffe:203.0.113.1"), ip("::1"), ip("64:ff9b::203.0.113.1")):
        assert unmapped(other) == other
    assert v4_mapped(ip("2001:db8::1")) == ip("2001:db8::1")
    assert unmapped_text("::ffff:127.0.0.1") == "127.0.0.1"
    assert is_loopback_text(unmapped_text("::ffff:127.0.0.1"))
    for text in ("::ffff:1", "2001:db8::1", "198.51.100.1", "fe80::1%eth0"):
        assert unmapped_text(text) == text
    assert [text_family(unmapped_text(t)) for t in ("::ffff:10.0.0.1", "10.0.0.1", "::1")] == [
        socket.AF_INET, socket.AF_INET, socket.AF_INET6]


# -- --clat ---------------------------------------------------------------------------

CLAT_GW4, CLAT_GUEST4 = ip("192.0.0.1"), ip("192.0.0.2")
WKP = Nat64Prefix.parse("64:ff9b::/96")


def clat_map(**options) -> AddressMap:
    return amap(gateway4=CLAT_GW4, host_addr4=CLAT_GUEST4, nat64=WKP, **options)


def test_clat_sends_ipv4_destinations_to_the_nat64_prefix() -> None:
    m = clat_map()
    assert m.to_host(ip("203.0.113.1"), 80) == ip("64:ff9b::203.0.113.1")
    assert m.to_host(ip("2001:db8::5"), 80) == ip("2001:db8::5")      # IPv6: untouched
    assert m.to_guest(ip("64:ff9b::203.0.113.1"), 80, ip("203.0.113.1")) == ip("203.0.113.1")


def test_clat_leaves_special_and_local_ipv4_destinations_alone() -> None:
    m = clat_map()
    assert m.to_host(CLAT_GW4, 80) == LOOPBACK4            # the host, over its loopback
    for text in ("127.0.0.1", "0.0.0.0", "224.0.0.251", "255.255.255.255"):
        assert m.to_host(ip(text), 80) == ip(text)


def test_clat_dns_to_the_gateway_goes_to_the_hosts_ipv6_resolver() -> None:
    m = clat_map(dns_servers=("2001:db8::53",))
    assert m.to_host(CLAT_GW4, 53) == ip("2001:db8::53")
    assert m.to_host(CLAT_GW4, 80) == LOOPBACK4
    forwarded = clat_map(dns_servers=("2001:db8::53",), dns_forward=("169.254.1.1",))
    assert forwarded.to_host(ip("169.254.1.1"), 53) == ip("2001:db8::53")
    ipv4_resolver = clat_map(dns_servers=("127.0.0.53", "2001:db8::53"))
    assert ipv4_resolver.to_host(CLAT_GW4, 53) == LOOPBACK4    # the host's loopback, as without


def test_ipv6_peers_as_an_ipv4_guest_sees_them() -> None:
    m = clat_map()
    assert m.to_ipv4_guest(ip("64:ff9b::198.51.100.7")) == ip("198.51.100.7")
    assert m.to_ipv4_guest(ip("2001:db8:9::7")) == CLAT_GW4              # outside the prefix
    assert m.to_ipv4_guest(ip("64:ff9b::127.0.0.1")) == CLAT_GW4          # not a peer's
    assert m.to_ipv4_guest(LOOPBACK6) == CLAT_GW4
    assert amap().to_ipv4_guest(ip("64:ff9b::198.51.100.7")) is None      # no --clat


def test_only_a_peer_in_the_prefix_is_an_ipv4_host_behind_the_nat64() -> None:
    m = clat_map()
    assert m.behind_nat64(ip("64:ff9b::198.51.100.7")) == ip("198.51.100.7")
    for text in ("2001:db8:9::7", "64:ff9b::127.0.0.1", "64:ff9b::192.0.0.2", "::1"):
        assert m.behind_nat64(ip(text)) is None     # outside, not a peer's, the guest's own
    assert amap().behind_nat64(ip("64:ff9b::198.51.100.7")) is None      # no --clat
