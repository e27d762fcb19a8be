"""What every fuzz target shares: the data provider, the network the guest
services are configured with, seed builders, the mutator of the CI round,
and the atheris entry point.

A target is a module ``fuzz/fuzz_<name>.py`` with

* ``check(data: bytes) -> None``: run one input through the parser; the
  parser's documented exceptions are swallowed, anything else (or a broken
  invariant, as ``AssertionError``) propagates: that is a crash;
* ``seeds() -> list[tuple[str, bytes]]``: valid inputs, built with the
  project's own builders (``fuzz/make_corpus.py`` writes them to
  ``tests/corpus/<name>/``);
* ``DICTIONARY``: tokens worth inserting (libFuzzer ``-dict``, and the CI
  mutator).

``check`` never needs atheris: inputs are decoded with ``provider(data)``,
which is ``atheris.FuzzedDataProvider`` when atheris runs the target and
:class:`Provider`, a byte-for-byte equivalent of the few methods used,
otherwise, so a crash input found by atheris replays the same way in the
unit test.  The targets take their control values with
``ConsumeIntInRange``, which reads from the *end* of the input, and the
frame or message with ``ConsumeBytes``, which reads from its front: a seed
is a valid frame followed by its control bytes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import sys
import traceback
from collections.abc import Callable, Sequence

from passt_sep.netparams import IPv4Params, IPv6Params, Network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "tests", "corpus")
OUT = os.path.join(ROOT, "fuzz", "out")


# -- the data provider -----------------------------------------------------------

class Provider:
    """The subset of ``atheris.FuzzedDataProvider`` the targets use, with its
    exact semantics (mostly libFuzzer's FuzzedDataProvider.h): integers are
    taken from the end of the data, little end last; bytes and bools from
    the front; an exhausted provider yields the minimum."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._start = 0
        self._end = len(self._data)

    def remaining_bytes(self) -> int:
        return self._end - self._start

    def ConsumeIntInRange(self, low: int, high: int) -> int:
        if low > high:
            raise ValueError("low > high")
        span = high - low
        result = offset = 0
        while offset < 64 and span >> offset and self._end > self._start:
            self._end -= 1
            result = (result << 8) | self._data[self._end]
            offset += 8
        if span != (1 << 64) - 1:
            result %= span + 1
        return low + result

    def ConsumeBool(self) -> bool:
        """Unlike an integer, atheris takes a bool from the front."""
        byte = self.ConsumeBytes(1)
        return bool(byte and byte[0] & 1)

    def ConsumeBytes(self, count: int) -> bytes:
        count = max(0, min(count, self.remaining_bytes()))
        out = self._data[self._start:self._start + count]
        self._start += count
        return out

    def PickValueInList(self, values: Sequence):
        return values[self.ConsumeIntInRange(0, len(values) - 1)]


_ATHERIS = None   # the atheris module, once fuzz_main runs a target under it


def provider(data: bytes):
    """atheris' own provider under atheris, else the equivalent above."""
    if _ATHERIS is not None:
        return _ATHERIS.FuzzedDataProvider(data)
    return Provider(data)


def rest(fdp) -> bytes:
    """Everything the provider has not handed out yet."""
    return fdp.ConsumeBytes(fdp.remaining_bytes())


def control(*values: int) -> bytes:
    """The trailing bytes that make ``ConsumeIntInRange(0, 255)`` calls
    return ``values`` in order (each 0-255 control value takes one byte,
    from the end)."""
    return bytes(reversed(values))


# -- the network the guest is served --------------------------------------------------

def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


GUEST_MAC = bytes.fromhex("525400123456")
GUEST4, GATEWAY4, REMOTE4 = ip("198.51.100.2"), ip("198.51.100.1"), ip("203.0.113.1")
GUEST6, GATEWAY6, REMOTE6 = ip("2001:db8:1::2"), ip("2001:db8:1::1"), ip("2001:db8:2::1")
GUEST_LL = ip("fe80::5054:ff:fe12:3456")
DNS4, DNS6 = ip("203.0.113.53"), ip("2001:db8:2::53")

NET = Network(guest_mac=GUEST_MAC, mtu=65520,
              ipv4=IPv4Params(GUEST4, 24, GATEWAY4, dns=(DNS4, GATEWAY4)),
              ipv6=IPv6Params(GUEST6, 64, GATEWAY6, dns=(DNS6,)),
              search=("example.test", "lab.example.test"))
# the variants a control byte picks from: one family, no resolvers, a
# link-local gateway, a small or odd MTU
NETS: tuple[Network, ...] = (
    NET,
    Network(mtu=1500, ipv4=NET.ipv4),
    Network(mtu=1280, ipv6=NET.ipv6),
    Network(mtu=576, ipv4=IPv4Params(GUEST4, 32, GATEWAY4), ipv6=IPv6Params(
        GUEST6, 128, ip("fe80::1"))),
    Network(mtu=68, ipv4=IPv4Params(GUEST4, 0, GATEWAY4), ipv6=IPv6Params(GUEST6, 0, GATEWAY6),
            search=("a" * 63 + "." + "b" * 63, ".", "")),
    Network(),
)


def pick_net(fdp) -> Network:
    return NETS[fdp.ConsumeIntInRange(0, 255) % len(NETS)]


# -- running one input ------------------------------------------------------------

def guarded(allowed: tuple[type[BaseException], ...], func: Callable, *args, **kwargs):
    """``func(*args, **kwargs)``, or None when it raises one of ``allowed``."""
    try:
        return func(*args, **kwargs)
    except allowed:
        return None


def signature(exc: BaseException) -> str:
    """A crash's name: the exception's type and the innermost function of the
    project (or of the target) it went through; no line number, so that it
    stays the same while the code around it changes."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "?"
    for frame in reversed(frames):
        if f"{os.sep}passt_sep{os.sep}" in frame.filename or f"{os.sep}fuzz{os.sep}" in \
                frame.filename:
            where = f"{os.path.basename(frame.filename)}:{frame.name}"
            break
    return f"{type(exc).__name__} at {where}"


# -- the CI mutator -------------------------------------------------------------------

INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01", b"\x00\x00", b"\xff\xff",
               b"\x7f\xff", b"\x80\x00", b"\x00\x01", b"\xff\xfe", b"\x00\x00\x00\x00",
               b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00")


def mutate(rng: random.Random, data: bytes, dictionary: Sequence[bytes] = ()) -> bytes:
    """One to four random edits, as a plain mutational fuzzer makes them:
    bit flips, interesting values, truncation, insertion (random bytes or a
    dictionary token), deletion, duplication, and splicing in random junk."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(out)
        if op == 0 and n:                       # flip one bit
            i = rng.randrange(n)
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:                     # a random byte
            out[rng.randrange(n)] = rng.randrange(256)
        elif op == 2 and n:                     # an interesting value over a field
            value = rng.choice(INTERESTING)
            i = rng.randrange(n)
            out[i:i + len(value)] = value
        elif op == 3 and n:                     # truncate
            del out[rng.randrange(n):]
        elif op == 4:                           # insert random bytes
            i = rng.randrange(n + 1)
            out[i:i] = rng.randbytes(rng.choice((1, 2, 4, 8, rng.randrange(1, 64))))
        elif op == 5 and dictionary:            # insert or overwrite with a token
            token = rng.choice(dictionary)
            i = rng.randrange(n + 1)
            if rng.random() < 0.5:
                out[i:i] = token
            else:
                out[i:i + len(token)] = token
        elif op == 6 and n:                     # delete a range
            i = rng.randrange(n)
            del out[i:i + rng.randint(1, 16)]
        elif op == 7 and n:                     # duplicate a range
            i = rng.randrange(n)
            chunk = out[i:i + rng.randint(1, 32)]
            j = rng.randrange(len(out) + 1)
            out[j:j] = chunk
        elif op == 8:                           # a run of junk over the data
            i = rng.randrange(n + 1)
            junk = rng.randbytes(rng.randint(1, 16))
            out[i:i + len(junk)] = junk
    return bytes(out)


# -- corpus -------------------------------------------------------------------------------

def corpus_dir(name: str) -> str:
    return os.path.join(CORPUS, name)


def load_corpus(name: str, crashes: bool = False) -> list[tuple[str, bytes]]:
    """The checked-in seeds of a target (and, if asked, its known crashes:
    ``crash-*`` files), sorted by file name."""
    directory = corpus_dir(name)
    if not os.path.isdir(directory):
        return []
    entries = []
    for entry in sorted(os.listdir(directory)):
        if entry.startswith("crash-") != crashes:
            continue
        with open(os.path.join(directory, entry), "rb") as handle:
            entries.append((entry, handle.read()))
    return entries


def input_name(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


# -- the atheris entry point ----------------------------------------------------------------

def fuzz_main(name: str, check: Callable[[bytes], None], dictionary: Sequence[bytes] = (),
              argv: list[str] | None = None) -> None:
    """Run ``check`` under atheris (libFuzzer flags in ``argv``).

    A crash does not stop the run: its first input per signature is saved
    to ``fuzz/out/<name>/crash-<signature hash>-<input hash>`` with the
    traceback beside it (``.txt``), and fuzzing goes on, so one run reports
    every distinct crash it finds.  The number of inputs executed is printed
    by libFuzzer (``Done N runs``)."""
    import atheris  # only here: check() must import without it

    global _ATHERIS
    _ATHERIS = atheris
    argv = list(sys.argv if argv is None else argv)
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    if dictionary and not any(arg.startswith("-dict=") for arg in argv):
        path = os.path.join(out, "tokens.dict")
        with open(path, "w", encoding="ascii") as handle:
            for token in dictionary:
                handle.write('"' + "".join(f"\\x{b:02x}" for b in token) + '"\n')
        argv.append(f"-dict={path}")
    seen: set[str] = set()

    def one_input(data: bytes) -> None:
        try:
            check(data)
        except Exception as exc:  # every exception check() lets out is a crash
            sig = signature(exc)
            if sig in seen:
                return
            seen.add(sig)
            tag = hashlib.sha1(sig.encode()).hexdigest()[:8]
            path = os.path.join(out, f"crash-{tag}-{input_name(data)}")
            with open(path, "wb") as handle:
                handle.write(data)
            with open(path + ".txt", "w", encoding="utf-8") as handle:
                handle.write(f"{sig}\ninput: {data.hex()}\n\n{traceback.format_exc()}")
            print(f"FUZZ-CRASH {name} {sig} -> {path}", file=sys.stderr, flush=True)

    atheris.instrument_all()
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


# -- valid frames, built with the project's own builders ---------------------------------

def _icmp_frame(src: bytes, dst: bytes, message: bytes, hop_limit: int = 64,
                dst_mac: bytes = NET.our_mac) -> bytes:
    """An ICMP (IPv4) or ICMPv6 frame from the guest, checksum filled in."""
    from passt_sep import packet

    msg = bytearray(message)
    if len(src) == 4:
        msg[2:4] = packet.checksum(msg).to_bytes(2, "big")
        return packet.ip_frame(dst_mac, GUEST_MAC, src, dst, packet.IPPROTO_ICMP, msg,
                               ttl=hop_limit)
    msg[2:4] = packet.l4_checksum(src, dst, packet.IPPROTO_ICMPV6, msg).to_bytes(2, "big")
    return packet.ip_frame(dst_mac, GUEST_MAC, src, dst, packet.IPPROTO_ICMPV6, msg,
                           ttl=hop_limit)


def frames() -> dict[str, bytes]:
    """Named valid frames of every kind the guest sends."""
    import struct

    from passt_sep import arp, dhcp, dhcpv6, icmp, ndp, packet, tcp_wire

    out: dict[str, bytes] = {}
    bcast = packet.BROADCAST_MAC
    # ARP
    arp_fmt = struct.Struct("!HHBBH6s4s6s4s")
    for label, spa, tpa in (("arp-request", GUEST4, GATEWAY4), ("arp-probe", bytes(4), GUEST4),
                            ("arp-announce", GUEST4, GUEST4)):
        body = arp_fmt.pack(arp.HTYPE_ETHERNET, packet.ETH_P_IP, 6, 4, arp.ARP_REQUEST,
                            GUEST_MAC, spa, bytes(6), tpa)
        out[label] = packet.build_ethernet(bcast, GUEST_MAC, packet.ETH_P_ARP, body)
    # TCP
    linux_syn = (struct.pack("!BBH", tcp_wire.OPT_MSS, 4, 1460) + b"\x04\x02\x08\x0a"
                 + struct.pack("!II", 7, 0) + b"\x01\x03\x03\x07")
    for v, src, dst in (("4", GUEST4, REMOTE4), ("6", GUEST6, REMOTE6)):
        def seg(seq, ack, flags, payload=b"", options=b"", src=src, dst=dst):
            return bytes(tcp_wire.build_tcp_frame(NET.our_mac, GUEST_MAC, src, dst, 40000, 9000,
                                                  seq, ack, flags, 0xFFFF, payload, options))
        out[f"tcp{v}-syn"] = seg(1000, 0, tcp_wire.SYN, options=linux_syn)
        out[f"tcp{v}-ack-data"] = seg(1001, 0xFFFFFF01, tcp_wire.ACK | tcp_wire.PSH,
                                      b"hello, world\n")
        out[f"tcp{v}-fin"] = seg(1014, 0xFFFFFF01, tcp_wire.ACK | tcp_wire.FIN)
        out[f"tcp{v}-rst"] = seg(1015, 0, tcp_wire.RST)
    out["tcp4-synack"] = bytes(tcp_wire.build_tcp_frame(
        NET.our_mac, GUEST_MAC, GUEST4, REMOTE4, 20000, 45000, 5000, 0xFFFFFF01,
        tcp_wire.SYN | tcp_wire.ACK, 0xFFFF, b"", tcp_wire.syn_options(1460, 7)))
    # UDP
    out["udp4"] = packet.udp_frame(NET.our_mac, GUEST_MAC, GUEST4, REMOTE4, 40001, 53,
                                   b"\x12\x34\x01\x00\x00\x01" + bytes(6) + b"\x00\x00\x01\x00\x01")
    out["udp6"] = packet.udp_frame(NET.our_mac, GUEST_MAC, GUEST6, REMOTE6, 40001, 9002,
                                   b"datagram")
    # IPv6 with a hop-by-hop header in front of UDP (MLD reports carry one)
    udp = packet.build_udp(GUEST6, REMOTE6, 40002, 9002, b"behind an extension header")
    hbh = bytes([packet.IPPROTO_UDP, 0, 5, 2, 0, 0, 1, 0])   # router alert, PadN
    out["udp6-hbh"] = packet.build_ethernet(NET.our_mac, GUEST_MAC, packet.ETH_P_IPV6,
                                            packet.build_ipv6(GUEST6, REMOTE6, 0, hbh + udp))
    # ICMP echo
    for v, src, dst in (("4", GUEST4, REMOTE4), ("6", GUEST6, REMOTE6)):
        request = icmp.EchoRequest(dst, 0x1234, 1, bytes(range(56)), v == "6")
        out[f"icmp{v}-echo"] = _icmp_frame(src, dst, icmp.echo_request_payload(request))
    # NDP
    rs = bytes([ndp.ROUTER_SOLICIT, 0, 0, 0]) + bytes(4) + ndp.build_option(
        ndp.OPT_SOURCE_LL, GUEST_MAC)
    out["ndp-rs"] = _icmp_frame(GUEST_LL, ip("ff02::2"), rs, 255, ip_mac("ff02::2"))
    ns_body = bytes([ndp.NEIGHBOUR_SOLICIT, 0, 0, 0]) + bytes(4) + GATEWAY6
    out["ndp-ns"] = _icmp_frame(GUEST6, solicited_node(GATEWAY6),
                                ns_body + ndp.build_option(ndp.OPT_SOURCE_LL, GUEST_MAC), 255,
                                ip_mac(solicited_node(GATEWAY6)))
    out["ndp-ns-dad"] = _icmp_frame(bytes(16), solicited_node(GUEST6),
                                    bytes([ndp.NEIGHBOUR_SOLICIT, 0, 0, 0]) + bytes(4) + GUEST6,
                                    255, ip_mac(solicited_node(GUEST6)))
    out["ndp-ra"] = ndp.router_advertisement(NET)      # what a guest acting as router sends
    # DHCP
    client_id = b"\x01" + GUEST_MAC
    for label, kind, extra, ciaddr in (
            ("dhcp-discover", dhcp.DISCOVER, {55: bytes([1, 3, 6, 15, 26, 28, 119])}, bytes(4)),
            ("dhcp-request", dhcp.REQUEST, {dhcp.OPT_REQUESTED_IP: GUEST4,
                                            dhcp.OPT_SERVER_ID: GATEWAY4}, bytes(4)),
            ("dhcp-renew", dhcp.REQUEST, {}, GUEST4),
            ("dhcp-inform", dhcp.INFORM, {}, GUEST4),
            ("dhcp-release", dhcp.RELEASE, {dhcp.OPT_SERVER_ID: GATEWAY4}, GUEST4)):
        options = {dhcp.OPT_MESSAGE_TYPE: bytes([kind]), dhcp.OPT_CLIENT_ID: client_id, **extra}
        message = dhcp.DhcpMessage(dhcp.BOOTREQUEST, 0x3903F326, 0x8000, ciaddr, GUEST_MAC,
                                   options)
        src = ciaddr if ciaddr != bytes(4) else bytes(4)
        out[label] = packet.udp_frame(bcast, GUEST_MAC, src, b"\xff" * 4, dhcp.CLIENT_PORT,
                                      dhcp.SERVER_PORT, dhcp.build_dhcp(message))
    # DHCPv6
    duid = struct.pack("!HH", dhcpv6.DUID_LL, dhcpv6.HW_ETHERNET) + GUEST_MAC
    server = dhcpv6.server_duid(NET)
    iaaddr = struct.pack("!16sII", GUEST6, 0, 0)
    ia_na = b"\x00\x00\x00\x01" + bytes(8) + dhcpv6.build_options([(dhcpv6.OPT_IAADDR, iaaddr)])
    ia_pd = b"\x00\x00\x00\x02" + bytes(8)
    for label, kind, options in (
            ("dhcpv6-solicit", dhcpv6.SOLICIT, [(dhcpv6.OPT_CLIENTID, duid),
                                                (dhcpv6.OPT_IA_NA, ia_na[:12]),
                                                (dhcpv6.OPT_IA_PD, ia_pd),
                                                (dhcpv6.OPT_RAPID_COMMIT, b"")]),
            ("dhcpv6-request", dhcpv6.REQUEST, [(dhcpv6.OPT_CLIENTID, duid),
                                                (dhcpv6.OPT_SERVERID, server),
                                                (dhcpv6.OPT_IA_NA, ia_na)]),
            ("dhcpv6-renew", dhcpv6.RENEW, [(dhcpv6.OPT_CLIENTID, duid),
                                            (dhcpv6.OPT_SERVERID, server),
                                            (dhcpv6.OPT_IA_NA, ia_na[:12] + dhcpv6.build_options(
                                                [(dhcpv6.OPT_IAADDR, struct.pack(
                                                    "!16sII", REMOTE6, 0, 0))]))]),
            ("dhcpv6-confirm", dhcpv6.CONFIRM, [(dhcpv6.OPT_CLIENTID, duid),
                                                (dhcpv6.OPT_IA_NA, ia_na)]),
            ("dhcpv6-information", dhcpv6.INFORMATION_REQUEST, [(6, b"\x00\x17\x00\x18")])):
        payload = dhcpv6.build_dhcpv6(dhcpv6.Dhcpv6Message(kind, 0x123456, options))
        out[label] = packet.udp_frame(ip_mac("ff02::1:2"), GUEST_MAC, GUEST_LL, ip("ff02::1:2"),
                                      dhcpv6.CLIENT_PORT, dhcpv6.SERVER_PORT, payload)
    return out


def solicited_node(address: bytes) -> bytes:
    return ip("ff02::1:ff00:0")[:13] + address[13:]


def ip_mac(text_or_bytes: str | bytes) -> bytes:
    """The Ethernet multicast address of an IPv6 multicast group."""
    raw = ip(text_or_bytes) if isinstance(text_or_bytes, str) else text_or_bytes
    return b"\x33\x33" + raw[12:]


def pick_frames(*prefixes: str) -> list[tuple[str, bytes]]:
    """The named frames whose names start with one of ``prefixes``."""
    return [(label, frame) for label, frame in frames().items() if label.startswith(prefixes)]


def layers(frame: bytes):
    """``(Ethernet, Inbound)`` of a frame as the worker parses it; either is
    None where the frame is dropped (:class:`~passt_sep.packet.Drop`)."""
    from passt_sep import packet

    eth = guarded((packet.Drop,), packet.parse_ethernet, frame)
    if eth is None or eth.ethertype not in (packet.ETH_P_IP, packet.ETH_P_IPV6):
        return eth, None
    return eth, guarded((packet.Drop,), packet.parse_ip_frame, eth)


def reparse(frame: bytes | bytearray):
    """A frame *we* built, parsed back: it must parse (no Drop allowed)."""
    from passt_sep import packet

    eth = packet.parse_ethernet(bytes(frame))
    return eth, packet.parse_ip_frame(eth)


def udp_server_exchange(data: bytes, v6: bool, server_port: int, client_port: int,
                        parse: Callable, handle: Callable):
    """One of our UDP servers (DHCP, DHCPv6) fed the frame in ``data``:
    ``(net, request, answer payload)`` when it answered, else None.  Only
    ``Drop`` may come out of parsing and answering; the answer must parse
    back and go from the server port to the client port."""
    from passt_sep import packet

    fdp = provider(data)
    net = pick_net(fdp)
    flags = fdp.ConsumeIntInRange(0, 255)
    _, inb = layers(rest(fdp))
    if inb is None or inb.is_ipv6 != v6 or inb.proto != packet.IPPROTO_UDP:
        return None
    datagram = guarded((packet.Drop,), packet.parse_udp, inb.l4)
    if datagram is None:
        return None
    request = guarded((packet.Drop,), parse, datagram.payload)
    if datagram.dport != server_port:
        return None
    reply = guarded((packet.Drop,), handle, net, inb, datagram,
                    send_dns=bool(flags & 1), send_search=bool(flags & 2))
    if reply is None:
        return None
    assert request is not None
    _, back = reparse(reply)
    answer_udp = packet.parse_udp(back.l4)
    assert (answer_udp.sport, answer_udp.dport) == (server_port, client_port)
    return net, request, answer_udp.payload
