"""auto forwarding decisions from /proc/net table text, without I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from passt_sep import procnet

TCP = (b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
       b"   uid  timeout inode\n"
       b"   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
       b"     0        0 1076 1 0000000073b6d6ea 100 0 0 10 0\n"
       b"   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
       b"     0        0 1077 1 0000000073b6d6ea 100 0 0 10 0\n"
       b"   2: 0100007F:9C40 0100007F:0CEA 01 00000000:00000000 00:00000000 00000000"
       b"     0        0 1078 1 0000000073b6d6ea 100 0 0 10 0\n")
TCP6 = (b"  sl  local_address                         remote_address"
        b"                        st tx_queue rx_queue\n"
        b"   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000"
        b" 0A 00000000:00000000 00:00000000 00000000     0        0 20 1\n")
UDP = (b"   sl  local_address rem_address   st tx_queue rx_queue tr tm->when\n"
       b"  0: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000\n"
       b"  1: 0100007F:A000 0100007F:0035 01 00000000:00000000 00:00000000 00000000\n")


def test_tcp_listening_ports_only() -> None:
    assert procnet.listening_ports(TCP) == {2024, 3306}      # not the established one
    assert procnet.listening_ports(TCP6) == {22}


def test_udp_bound_without_peer_only() -> None:
    assert procnet.listening_ports(UDP, udp=True) == {53}


def test_malformed_lines_skipped() -> None:
    table = TCP.splitlines(keepends=True)[0] + b"garbage\n   9: zz:zz 0:0 0A\n   8: 0:0000 0:0 0A\n"
    assert procnet.listening_ports(table) == set()


@given(st.binary(max_size=2000))
def test_any_bytes_parse_to_ports_in_range(table: bytes) -> None:
    assert all(0 < port < 65536 for port in procnet.listening_ports(table))


def test_plan_follows_the_other_side_but_never_our_own_listeners() -> None:
    start, stop = procnet.plan(current={80, 443}, seen={443, 8080, 5000}, ours={5000})
    assert (start, stop) == ({8080}, {80})


def test_plan_honours_exclusions() -> None:
    assert procnet.plan(current=(), seen={22, 80}, ours=(), excluded={22}) == ({80}, set())
