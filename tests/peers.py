"""Real peers for the end-to-end tests: plain kernel sockets, nothing mocked.

Servers (run in a namespace, until killed; PORTS is one port or a comma list):
  sink PORTS [ADDR]         TCP: read until EOF, answer "<sha256> <bytes>\\n", close
  source PORTS [ADDR]       TCP: read "SIZE SEED\\n", send SIZE pseudo-random bytes, close
  udp-echo PORTS [ADDR]     UDP: send every datagram back
  tcp-echo PORTS [ADDR]     TCP: send every byte back but "q" (left unanswered)
  dns PORT [ADDR]           DNS over UDP and TCP: A -> 203.0.113.53, AAAA -> 2001:db8:2::53
Clients (print one line, exit 0 on success):
  send HOST PORT SIZE SEED  send, half-close, print the sink's answer and ours
  recv HOST PORT SIZE SEED  ask a source, print "<sha256> <bytes>" of what came
  udp-send HOST PORT SIZE SEED  send over UDP, through a udp-echo: one datagram at a
                            time, each sent again until its echo comes back;
                            print "<sha256> <bytes>" of what came back
  drain HOST PORT           print "<sha256> <bytes>" of what a server sends unasked
  ack-check HOST PORT N     N one-byte exchanges with a tcp-echo (TCP_NODELAY),
                            then one byte it leaves unanswered; print "echoed E
                            retrans R unacked U ack_ms M": the kernel's count of
                            retransmissions and of unacknowledged segments, and
                            how long the last byte waited for its ACK
  paced HOST PORT N GAP PIDFILE  N one-byte exchanges with a tcp-echo, GAP
                            seconds apart; print "echoed E cpu C wall W": the
                            CPU seconds of the process PIDFILE names (the
                            worker) over the W seconds they took
  many HOST PORT N SIZE     N concurrent sends to a sink, print "ok N" if all match
  connect-flood HOST PORT N RATE PATIENCE  open N connections, RATE per second,
                            and hold each until the server ends it; print
                            "opened O ended E failed F open S", S counted
                            PATIENCE seconds after the last connect
  churn HOST PORT N SECONDS MAXSIZE SEED  keep N connections to a sink open
                            for SECONDS, each sending up to MAXSIZE bytes in
                            two halves a pause apart; print "opened O ok K
                            failed F corrupt C"
  echo-check HOST PORT SECONDS RATE  RATE datagrams a second to a udp-echo,
                            each checked; print "asked A right R wrong W lost L"
  dns-check HOST SECONDS RATE  RATE queries a second (A and AAAA, over UDP and
                            TCP) to a dns server, each checked; same line
  udp-stream HOST PORT N [RATE]  send N numbered 1000-byte datagrams to a
                            udp-count, at most RATE per second (default: no limit)
  udp-count PORT SECONDS    count numbered datagrams, print "got N missing M corrupt C"
  udp-burst HOST PORT N     send N numbered 1000-byte datagrams back to back, as
                            fast as the socket takes them, after one warm-up
                            datagram (neighbours resolved first); print "sent N"
  udp-tally PORT SECONDS    count udp-burst's datagrams until SECONDS pass without
                            one, print "got N missing M corrupt C"

Data is deterministic per seed, so both ends can compute its sha256.
"""

from __future__ import annotations

import errno
import hashlib
import heapq
import os
import random
import resource
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

CHUNK = 1 << 20
PATH = os.path.abspath(__file__)


def data_chunks(size: int, seed: int):
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def digest_of(size: int, seed: int) -> str:
    h = hashlib.sha256()
    for chunk in data_chunks(size, seed):
        h.update(chunk)
    return h.hexdigest()


def expected(size: int, seed: int) -> str:
    """What ``send`` prints when the sink got every byte: digest and size."""
    return f"{digest_of(size, seed)} {size}"


def listener(port: int, addr: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(512)
    return sock


def serve(sock: socket.socket, handler) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def digest_until_eof(conn: socket.socket) -> str:
    """"<sha256> <bytes>" of everything ``conn`` receives until EOF."""
    h = hashlib.sha256()
    total = 0
    while True:
        data = conn.recv(CHUNK)
        if not data:
            break
        h.update(data)
        total += len(data)
    return f"{h.hexdigest()} {total}"


def handle_sink(conn: socket.socket) -> None:
    with conn:
        conn.sendall(f"{digest_until_eof(conn)}\n".encode())


def handle_source(conn: socket.socket) -> None:
    with conn:
        line = b""
        while not line.endswith(b"\n"):
            more = conn.recv(100)
            if not more:
                return
            line += more
        size, seed = (int(x) for x in line.split())
        try:
            for chunk in data_chunks(size, seed):
                conn.sendall(chunk)
        except ConnectionError:  # reset by the other end: what fault tests do
            pass


def udp_echo(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


def handle_tcp_echo(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(4096):
            if data.replace(b"q", b""):
                conn.sendall(data.replace(b"q", b""))


def serve_ports(command: str, ports: str, addr: str) -> None:
    """A server on each of a comma-separated list of ports, one thread each."""
    threads = []
    for port in ports.split(","):
        if command == "udp-echo":
            target, args = udp_echo, (listener(int(port), addr, socket.SOCK_DGRAM),)
        else:
            handler = {"sink": handle_sink, "source": handle_source,
                       "tcp-echo": handle_tcp_echo}[command]
            target, args = serve, (listener(int(port), addr), handler)
        threads.append(threading.Thread(target=target, args=args, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


DNS_A = socket.inet_pton(socket.AF_INET, "203.0.113.53")
DNS_AAAA = socket.inet_pton(socket.AF_INET6, "2001:db8:2::53")


def dns_answer(query: bytes) -> bytes:
    """A minimal authoritative answer for any name: one A or AAAA record."""
    end = 12
    while query[end]:
        end += query[end] + 1
    qtype = int.from_bytes(query[end + 1:end + 3], "big")
    question = query[12:end + 5]
    rdata = {1: DNS_A, 28: DNS_AAAA}.get(qtype)
    header = query[:2] + b"\x84\x00" + b"\x00\x01" + (b"\x00\x01" if rdata else b"\x00\x00")
    header += b"\x00\x00\x00\x00"
    answer = b""
    if rdata:
        answer = b"\xc0\x0c" + qtype.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x3c"
        answer += len(rdata).to_bytes(2, "big") + rdata
    return header + question + answer


def dns_server(port: int, addr: str) -> None:
    udp = listener(port, addr, socket.SOCK_DGRAM)
    tcp = listener(port, addr)

    def handle_tcp(conn: socket.socket) -> None:
        with conn:
            length = int.from_bytes(conn.recv(2), "big")
            query = b""
            while len(query) < length:
                query += conn.recv(length - len(query))
            reply = dns_answer(query)
            conn.sendall(len(reply).to_bytes(2, "big") + reply)

    threading.Thread(target=serve, args=(tcp, handle_tcp), daemon=True).start()
    while True:
        query, peer = udp.recvfrom(4096)
        udp.sendto(dns_answer(query), peer)


def udp_stream(host: str, port: int, count: int, rate: float = 0.0) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    start = time.monotonic()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for number in range(count):
            if rate and number % 100 == 0:
                ahead = start + number / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            payload = number.to_bytes(8, "big") + random.Random(number).randbytes(992)
            while True:
                try:
                    sock.sendto(payload, (host, port))
                    break
                except BlockingIOError:
                    continue
    return f"sent {count}"


def udp_count(port: int, seconds: float) -> str:
    sock = listener(port, "::", socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.settimeout(seconds)
    seen: set[int] = set()
    corrupt = 0
    top = -1
    try:
        while True:
            data = sock.recv(2000)
            number = int.from_bytes(data[:8], "big")
            if data[8:] != random.Random(number).randbytes(992):
                corrupt += 1
                continue
            seen.add(number)
            top = max(top, number)
    except TimeoutError:
        pass
    return f"got {len(seen)} missing {top + 1 - len(seen)} corrupt {corrupt}"


BURST_SIZE = 1000
WARM_UP = b"warm-up"


def burst_payload(number: int) -> bytes:
    """A burst datagram: cheap to build, so the sender is as fast as it can be."""
    return number.to_bytes(8, "big") + bytes([number % 251]) * (BURST_SIZE - 8)


def udp_burst(host: str, port: int, count: int) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        sock.send(WARM_UP)
        time.sleep(0.3)
        fill = [bytes([n]) * (BURST_SIZE - 8) for n in range(251)]
        send = sock.send
        for number in range(count):
            send(number.to_bytes(8, "big") + fill[number % 251])
    return f"sent {count}"


def udp_tally(port: int, seconds: float) -> str:
    sock = listener(port, "::", socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.settimeout(seconds)
    seen: set[int] = set()
    corrupt = 0
    try:
        while True:
            data = sock.recv(2000)
            if data == WARM_UP:
                continue
            number = int.from_bytes(data[:8], "big")
            if data != burst_payload(number):
                corrupt += 1
                continue
            seen.add(number)
    except TimeoutError:
        pass
    top = max(seen, default=-1)
    return f"got {len(seen)} missing {top + 1 - len(seen)} corrupt {corrupt}"


# how long a client waits for its peer (PEERS_TIMEOUT: longer on a lossy path,
# where retransmission timers back off)
TIMEOUT = float(os.environ.get("PEERS_TIMEOUT", "60"))


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=TIMEOUT)


def send(host: str, port: int, size: int, seed: int) -> str:
    with connect(host, port) as sock:
        for chunk in data_chunks(size, seed):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            more = sock.recv(200)
            if not more:
                break
            answer += more
    return answer.decode().strip()


def recv(host: str, port: int, size: int, seed: int) -> str:
    with connect(host, port) as sock:
        sock.sendall(f"{size} {seed}\n".encode())
        return digest_until_eof(sock)


def drain(host: str, port: int) -> str:
    with connect(host, port) as sock:
        return digest_until_eof(sock)


TCP_INFO = "8B24I"                    # struct tcp_info's head: its u8s, then u32s
TCPI_UNACKED, TCPI_TOTAL_RETRANS = 8 + 4, 8 + 23


def ack_check(host: str, port: int, count: int) -> str:
    with connect(host, port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        echoed = 0
        for _ in range(count):
            sock.sendall(b"x")
            echoed += sock.recv(1) == b"x"
        sock.sendall(b"q")
        start = time.monotonic()
        while True:
            info = struct.unpack(TCP_INFO, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO,
                                                          struct.calcsize(TCP_INFO)))
            waited = time.monotonic() - start
            if not info[TCPI_UNACKED] or waited > 5:
                break
            time.sleep(0.0005)
    return (f"echoed {echoed} retrans {info[TCPI_TOTAL_RETRANS]} "
            f"unacked {info[TCPI_UNACKED]} ack_ms {waited * 1000:.0f}")


def cpu_seconds(pid: int) -> float:
    """User and system time of ``pid`` so far (/proc's clock ticks)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paced(host: str, port: int, count: int, gap: float, pidfile: str) -> str:
    with open(pidfile, encoding="ascii") as handle:
        pid = int(handle.read())
    with connect(host, port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        echoed, cpu, start = 0, cpu_seconds(pid), time.monotonic()
        for _ in range(count):
            sock.sendall(b"x")
            echoed += sock.recv(1) == b"x"
            time.sleep(gap)
        cpu, wall = cpu_seconds(pid) - cpu, time.monotonic() - start
    return f"echoed {echoed} cpu {cpu:.3f} wall {wall:.3f}"


def echo_of(sock: socket.socket, packet: bytes, peer: tuple, deadline: float) -> bytes:
    """Send until the echo of this packet (its first 8 bytes) comes back;
    late echoes of earlier ones are skipped."""
    while time.monotonic() < deadline:
        sock.sendto(packet, peer)
        try:
            while True:
                echo = sock.recv(65535)
                if echo[:8] == packet[:8]:
                    return echo
        except TimeoutError:
            continue
    raise TimeoutError(f"no echo from {peer[0]} port {peer[1]}")


def udp_send(host: str, port: int, size: int, seed: int, datagram: int = 32768) -> str:
    """``send`` over UDP: numbered datagrams through a udp-echo, each one
    sent again until its echo comes (UDP may drop, never corrupt), so what
    comes back must be the data whole and in order."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    h = hashlib.sha256()
    total = 0
    number = 0
    deadline = time.monotonic() + 60
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for chunk in data_chunks(size, seed):
            for offset in range(0, len(chunk), datagram):
                packet = number.to_bytes(8, "big") + chunk[offset:offset + datagram]
                echo = echo_of(sock, packet, (host, port), deadline)[8:]
                h.update(echo)
                total += len(echo)
                number += 1
    return f"{h.hexdigest()} {total}"


def many(host: str, port: int, count: int, size: int) -> str:
    results: list[bool] = [False] * count

    def one(index: int) -> None:
        try:
            results[index] = send(host, port, size, index) == f"{digest_of(size, index)} {size}"
        except OSError:
            results[index] = False

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    good = sum(results)
    return f"ok {good}" if good == count else f"failed {count - good} of {count}"


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))


class ConnectFlood:
    """Connections opened at a pace and held, each until the server ends it
    (a reset or EOF): none is closed from this side."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.epoll = select.epoll()
        self.connecting: dict[int, socket.socket] = {}
        self.held: dict[int, socket.socket] = {}
        self.opened = self.ended = self.failed = 0

    def open_one(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self.failed += 1
            sock.close()
            return
        self.connecting[sock.fileno()] = sock
        self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def poll(self, timeout: float) -> None:
        for fd, _ in self.epoll.poll(max(timeout, 0)):
            if fd in self.connecting:
                self._connected(self.connecting.pop(fd))
            elif fd in self.held:
                self._end(self.held.pop(fd))

    def _connected(self, sock: socket.socket) -> None:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == errno.ECONNRESET:             # opened, and reset before we looked
            self.opened += 1
            self.ended += 1
        elif code:
            self.failed += 1
        else:
            self.opened += 1
            self.held[sock.fileno()] = sock
            self.epoll.modify(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            return
        self.epoll.unregister(sock.fileno())
        sock.close()

    def _end(self, sock: socket.socket) -> None:
        self.ended += 1
        self.epoll.unregister(sock.fileno())
        sock.close()

    def run(self, count: int, rate: float, patience: float) -> str:
        raise_fd_limit(count + 100)
        start = time.monotonic()
        for number in range(count):
            self.poll(start + number / rate - time.monotonic())
            self.open_one()
        deadline = time.monotonic() + patience
        while (self.connecting or self.held) and time.monotonic() < deadline:
            self.poll(deadline - time.monotonic())
        return (f"opened {self.opened} ended {self.ended} failed {self.failed} "
                f"open {len(self.connecting) + len(self.held)}")


class ChurnConn:
    """One connection of a churn: its data, how much is sent, the answer."""

    __slots__ = ("sock", "data", "sent", "paused", "answer", "expected", "deadline")

    def __init__(self, sock: socket.socket, size: int, seed: int, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.data = b"".join(data_chunks(size, seed))
        self.expected = expected(size, seed).encode()
        self.sent = 0
        self.paused = False
        self.answer = b""


class Churn:
    """Connections to a sink, ``concurrency`` of them open at any time: each
    sends its own data in two halves a pause apart, half-closes and checks
    the sink's digest; as one ends, another starts."""

    PAUSE = (0.5, 4.5)              # seconds between the halves: lifetimes of a few seconds
    STALL = 60.0                    # a connection not done by then has failed
    FINISH = 90.0                   # after the last one opened, give up on the rest

    def __init__(self, host: str, port: int, max_size: int, seed: int) -> None:
        self.address = (host, port)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.max_size = max_size
        self.rng = random.Random(seed)
        self.seed = seed << 32
        self.epoll = select.epoll()
        self.conns: dict[int, ChurnConn] = {}
        self.resume: list[tuple[float, int]] = []           # (when, fd) of paused ones
        self.opened = self.ok = self.failed = self.corrupt = 0

    def run(self, concurrency: int, seconds: float) -> str:
        raise_fd_limit(concurrency + 100)
        start = time.monotonic()
        checked = start
        while True:
            now = time.monotonic()
            if now < start + seconds:
                while len(self.conns) < concurrency:
                    self._open(now)
            elif not self.conns or now > start + seconds + self.FINISH:
                break
            if now - checked > 1.0:
                self._stalled(now)
                checked = now
            while self.resume and self.resume[0][0] <= now:
                self._resume(heapq.heappop(self.resume)[1])
            wait = min(self.resume[0][0] - now if self.resume else 0.5, 0.5)
            for fd, events in self.epoll.poll(max(wait, 0)):
                conn = self.conns.get(fd)
                if conn is not None:
                    self._event(fd, conn, events)
        self.failed += len(self.conns)
        return (f"opened {self.opened} ok {self.ok} failed {self.failed} "
                f"corrupt {self.corrupt}")

    def _open(self, now: float) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.opened += 1
        size = self.rng.randrange(1, self.max_size + 1)
        conn = ChurnConn(sock, size, self.seed + self.opened, now + self.STALL)
        if sock.connect_ex(self.address) not in (0, errno.EINPROGRESS):
            self.failed += 1
            sock.close()
            return
        self.conns[sock.fileno()] = conn
        self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def _event(self, fd: int, conn: ChurnConn, events: int) -> None:
        try:
            if conn.sent == len(conn.data):
                self._read(fd, conn)
            else:
                self._send(fd, conn)
        except OSError:
            self._end(fd, ok=False)

    def _send(self, fd: int, conn: ChurnConn) -> None:
        half = len(conn.data) // 2
        limit = half if not conn.paused else len(conn.data)
        if conn.sent < limit:
            conn.sent += conn.sock.send(conn.data[conn.sent:limit])
        if conn.sent == half and not conn.paused:
            conn.paused = True
            self.epoll.modify(fd, 0)
            heapq.heappush(self.resume, (time.monotonic() + self.rng.uniform(*self.PAUSE), fd))
        elif conn.sent == len(conn.data):
            conn.sock.shutdown(socket.SHUT_WR)
            self.epoll.modify(fd, select.EPOLLIN)

    def _resume(self, fd: int) -> None:
        if fd in self.conns:
            self.epoll.modify(fd, select.EPOLLOUT)

    def _read(self, fd: int, conn: ChurnConn) -> None:
        more = conn.sock.recv(200)
        if more:
            conn.answer += more
            return
        right = conn.answer.strip() == conn.expected
        if not right:
            self.corrupt += 1
        self._end(fd, ok=right, counted=not right)

    def _end(self, fd: int, ok: bool, counted: bool = False) -> None:
        conn = self.conns.pop(fd)
        if ok:
            self.ok += 1
        elif not counted:
            self.failed += 1
        self.epoll.unregister(fd)
        conn.sock.close()

    def _stalled(self, now: float) -> None:
        for fd, conn in list(self.conns.items()):
            if now > conn.deadline:
                self._end(fd, ok=False)


def exchanges(seconds: float, rate: float, one: Callable[[int], bool | None]) -> str:
    """Call ``one`` ``rate`` times a second for ``seconds``; it says whether
    the answer was right (True), wrong (False) or never came (None)."""
    counts = {True: 0, False: 0, None: 0}
    start = time.monotonic()
    number = 0
    while (now := time.monotonic()) < start + seconds:
        ahead = start + number / rate - now
        if ahead > 0:
            time.sleep(ahead)
        counts[one(number)] += 1
        number += 1
    return f"asked {number} right {counts[True]} wrong {counts[False]} lost {counts[None]}"


def echo_check(host: str, port: int, seconds: float, rate: float) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.connect((host, port))

        def one(number: int) -> bool | None:
            payload = number.to_bytes(8, "big") + random.Random(number).randbytes(number % 1400)
            sock.send(payload)
            try:
                while True:               # a late answer to an earlier one is skipped
                    answer = sock.recv(2000)
                    if answer[:8] == payload[:8]:
                        return answer == payload
            except (TimeoutError, ConnectionRefusedError):
                return None

        return exchanges(seconds, rate, one)


def dns_query(ident: int, name: str, qtype: int) -> bytes:
    labels = b"".join(len(part).to_bytes(1, "big") + part.encode() for part in name.split("."))
    return (ident.to_bytes(2, "big") + b"\x01\x00\x00\x01" + bytes(6) + labels + b"\x00"
            + qtype.to_bytes(2, "big") + b"\x00\x01")


def dns_check(host: str, seconds: float, rate: float) -> str:
    """A and AAAA by turns, every other pair over TCP: the answer must be
    the server's, byte for byte."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def one(number: int) -> bool | None:
        qtype = 1 if number % 2 == 0 else 28
        query = dns_query(number & 0xFFFF, f"q{number}.example.test", qtype)
        try:
            if number % 4 < 2:
                with socket.socket(family, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(1.0)
                    sock.connect((host, 53))            # an answer from elsewhere is not one
                    sock.send(query)
                    answer = sock.recv(4096)
            else:
                with socket.create_connection((host, 53), timeout=5.0) as sock:
                    sock.sendall(len(query).to_bytes(2, "big") + query)
                    answer = b""
                    while len(answer) < 2 or len(answer) < 2 + int.from_bytes(answer[:2], "big"):
                        more = sock.recv(4096)
                        if not more:
                            return None
                        answer += more
                    answer = answer[2:]
        except OSError:
            return None
        return answer == dns_answer(query)

    return exchanges(seconds, rate, one)


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command in ("sink", "source", "udp-echo", "tcp-echo"):
        serve_ports(command, args[0], args[1] if len(args) > 1 else "::")
    elif command == "dns":
        dns_server(int(args[0]), args[1] if len(args) > 1 else "::")
    elif command == "udp-stream":
        rate = float(args[3]) if len(args) > 3 else 0.0
        print(udp_stream(args[0], int(args[1]), int(args[2]), rate))
    elif command == "udp-count":
        print(udp_count(int(args[0]), float(args[1])))
    elif command == "udp-burst":
        print(udp_burst(args[0], int(args[1]), int(args[2])))
    elif command == "udp-tally":
        print(udp_tally(int(args[0]), float(args[1])))
    elif command == "send":
        print(send(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif command == "udp-send":
        print(udp_send(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif command == "recv":
        print(recv(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif command == "drain":
        print(drain(args[0], int(args[1])))
    elif command == "ack-check":
        print(ack_check(args[0], int(args[1]), int(args[2])))
    elif command == "paced":
        print(paced(args[0], int(args[1]), int(args[2]), float(args[3]), args[4]))
    elif command == "many":
        print(many(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif command == "connect-flood":
        flood = ConnectFlood(args[0], int(args[1]))
        print(flood.run(int(args[2]), float(args[3]), float(args[4])))
    elif command == "churn":
        churn = Churn(args[0], int(args[1]), int(args[4]), int(args[5]))
        print(churn.run(int(args[2]), float(args[3])))
    elif command == "echo-check":
        print(echo_check(args[0], int(args[1]), float(args[2]), float(args[3])))
    elif command == "dns-check":
        print(dns_check(args[0], float(args[1]), float(args[2])))
    elif command == "digest":
        print(f"{digest_of(int(args[0]), int(args[1]))} {args[0]}")
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
