"""Real peers for the end-to-end tests: plain kernel sockets, nothing mocked.

Servers (run in a namespace, until killed):
  sink PORT [ADDR]          TCP: read until EOF, answer "<sha256> <bytes>\\n", close
  source PORT [ADDR]        TCP: read "SIZE SEED\\n", send SIZE pseudo-random bytes, close
  udp-echo PORT [ADDR]      UDP: send every datagram back
  dns PORT [ADDR]           DNS over UDP and TCP: A -> 203.0.113.53, AAAA -> 2001:db8:2::53
Clients (print one line, exit 0 on success):
  send HOST PORT SIZE SEED  send, half-close, print the sink's answer and ours
  recv HOST PORT SIZE SEED  ask a source, print "<sha256> <bytes>" of what came
  drain HOST PORT           print "<sha256> <bytes>" of what a server sends unasked
  many HOST PORT N SIZE     N concurrent sends to a sink, print "ok N" if all match
  udp-stream HOST PORT N [RATE]  send N numbered 1000-byte datagrams to a
                            udp-count, at most RATE per second (default: no limit)
  udp-count PORT SECONDS    count numbered datagrams, print "got N missing M corrupt C"

Data is deterministic per seed, so both ends can compute its sha256.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import sys
import threading
import time

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


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=60)


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


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command in ("sink", "source"):
        addr = args[1] if len(args) > 1 else "::"
        serve(listener(int(args[0]), addr), handle_sink if command == "sink" else handle_source)
    elif command == "dns":
        dns_server(int(args[0]), args[1] if len(args) > 1 else "::")
    elif command == "udp-stream":
        rate = float(args[3]) if len(args) > 3 else 0.0
        print(udp_stream(args[0], int(args[1]), int(args[2]), rate))
    elif command == "udp-count":
        print(udp_count(int(args[0]), float(args[1])))
    elif command == "udp-echo":
        udp_echo(listener(int(args[0]), args[1] if len(args) > 1 else "::", socket.SOCK_DGRAM))
    elif command == "send":
        print(send(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif command == "recv":
        print(recv(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif command == "drain":
        print(drain(args[0], int(args[1])))
    elif command == "many":
        print(many(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif command == "digest":
        print(f"{digest_of(int(args[0]), int(args[1]))} {args[0]}")
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
