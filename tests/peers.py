"""Real peers for the end-to-end tests: plain kernel sockets, nothing mocked.

Servers (run in a namespace, until killed):
  sink PORT [ADDR]          TCP: read until EOF, answer "<sha256> <bytes>\\n", close
  source PORT [ADDR]        TCP: read "SIZE SEED\\n", send SIZE pseudo-random bytes, close
  udp-echo PORT [ADDR]      UDP: send every datagram back
Clients (print one line, exit 0 on success):
  send HOST PORT SIZE SEED  send, half-close, print the sink's answer and ours
  recv HOST PORT SIZE SEED  ask a source, print "<sha256> <bytes>" of what came
  many HOST PORT N SIZE     N concurrent sends to a sink, print "ok N" if all match

Data is deterministic per seed, so both ends can compute its sha256.
"""

from __future__ import annotations

import hashlib
import random
import socket
import sys
import threading

CHUNK = 1 << 20


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


def handle_sink(conn: socket.socket) -> None:
    h = hashlib.sha256()
    total = 0
    with conn:
        while True:
            data = conn.recv(CHUNK)
            if not data:
                break
            h.update(data)
            total += len(data)
        conn.sendall(f"{h.hexdigest()} {total}\n".encode())


def handle_source(conn: socket.socket) -> None:
    with conn:
        line = b""
        while not line.endswith(b"\n"):
            more = conn.recv(100)
            if not more:
                return
            line += more
        size, seed = (int(x) for x in line.split())
        for chunk in data_chunks(size, seed):
            conn.sendall(chunk)


def udp_echo(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


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
    h = hashlib.sha256()
    total = 0
    with connect(host, port) as sock:
        sock.sendall(f"{size} {seed}\n".encode())
        while True:
            data = sock.recv(CHUNK)
            if not data:
                break
            h.update(data)
            total += len(data)
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


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command in ("sink", "source"):
        addr = args[1] if len(args) > 1 else "::"
        serve(listener(int(args[0]), addr), handle_sink if command == "sink" else handle_source)
    elif command == "udp-echo":
        udp_echo(listener(int(args[0]), args[1] if len(args) > 1 else "::", socket.SOCK_DGRAM))
    elif command == "send":
        print(send(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif command == "recv":
        print(recv(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif command == "many":
        print(many(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif command == "digest":
        print(f"{digest_of(int(args[0]), int(args[1]))} {args[0]}")
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
