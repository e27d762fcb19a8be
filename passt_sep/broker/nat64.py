"""``--clat`` without ``--nat64-prefix``: find the network's NAT64 prefix as
RFC 7050 says, asking the host's resolvers for ``ipv4only.arpa``.

Run by the netlink helper in the host's namespaces, before the jail (it is
set-up: the worker never learns where the resolvers are for this).  The
query and its answer are ``clat``'s; this module only sends and waits.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import time

from ..clat import DnsError, Nat64Prefix, discovery_query, prefixes_from_answer

TIMEOUT = 1.5               # per resolver; an answering resolver takes milliseconds
RESEND = 0.3                # the query again, until the timeout
MAX_RESOLVERS = 3           # as many as a resolv.conf uses
DNS_PORT = 53


def discover(resolvers: tuple[str, ...], timeout: float = TIMEOUT,
             port: int = DNS_PORT) -> Nat64Prefix | None:
    """The first prefix a resolver's answer reveals, None if none does."""
    for resolver in resolvers[:MAX_RESOLVERS]:
        try:
            prefixes = _ask(resolver, timeout, port)
        except OSError:
            continue
        if prefixes:
            return prefixes[0]
    return None


def _ask(resolver: str, timeout: float, port: int) -> list[Nat64Prefix]:
    family = socket.AF_INET6 if ipaddress.ip_address(resolver).version == 6 else socket.AF_INET
    ident = int.from_bytes(os.urandom(2), "big")
    with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect((resolver, port))      # answers from anyone else are not read
        query = discovery_query(ident)
        deadline = time.monotonic() + timeout
        resend = 0.0
        while (now := time.monotonic()) < deadline:
            if now >= resend:                   # lost on the way (a fresh link's first)
                sock.send(query)
                resend = now + RESEND
            if not select.select([sock], [], [], min(resend, deadline) - now)[0]:
                continue
            answer = sock.recv(4096)
            try:
                return prefixes_from_answer(answer, ident)
            except DnsError:
                continue                        # not our answer, or garbage: wait on
    return []
