"""pasta's ``auto`` forwarding: which ports a side listens on, from its
``/proc/net/{tcp,tcp6,udp,udp6}`` text, and what to change to follow it.

The worker re-reads the tables of both sides every second (fds opened by
the broker, one per table and side) and asks :func:`plan` what to bind and
what to close.  No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable

TCP_LISTEN = 0x0A
UDP_UNCONNECTED = 0x07       # TCP_CLOSE: a bound UDP socket with no peer
MAX_PORT = 65535


def listening_ports(table: bytes, udp: bool = False) -> set[int]:
    """Local ports in the listening state (TCP) or bound without a peer
    (UDP); header and malformed lines are skipped."""
    wanted = UDP_UNCONNECTED if udp else TCP_LISTEN
    ports: set[int] = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        local, _, state = fields[1], fields[2], fields[3]
        try:
            if int(state, 16) != wanted:
                continue
            port = int(local.rpartition(b":")[2], 16)
        except ValueError:
            continue
        if 0 < port <= MAX_PORT:
            ports.add(port)
    return ports


def plan(current: Iterable[int], seen: Iterable[int], ours: Iterable[int],
         excluded: Iterable[int] = ()) -> tuple[set[int], set[int]]:
    """(ports to start forwarding, ports to stop forwarding).

    ``current``: what is forwarded now; ``seen``: what the other side
    listens on; ``ours``: ports that side holds because we bound them there
    (our own listeners for the opposite direction), which must never be
    forwarded back; ``excluded``: ports the user ruled out."""
    wanted = set(seen) - set(ours) - set(excluded)
    current = set(current)
    return wanted - current, current - wanted
