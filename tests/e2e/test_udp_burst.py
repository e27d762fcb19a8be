"""A burst of 10,000 datagrams, sent as fast as a program can, each way
through pasta-sep: at least 99% arrive, and what did not is counted where
it was lost.

Where a datagram can be lost, and who counts it:
  namespace -> remote: the tap's queue (the kernel's tx_dropped of the tap,
    ``ip -s link`` in the namespace), the flow table's cap and the host
    socket's send buffer (the worker's ``drop_udp_flows_full``,
    ``udp_send_full``, ``udp_send_error``), the receiver's socket (the
    remote kernel's UDP RcvbufErrors);
  remote -> namespace: the forwarded port's socket (the worker's
    ``udp_rcvbuf_drops``, which the host kernel's RcvbufErrors must match),
    the tap write (``tap_full``, ``tap_write_error``), the receiver's socket
    in the namespace (its kernel's RcvbufErrors).
The worker's counters are read the way a user reads them: SIGUSR1 logs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from procstat import logged_counters

from topology import HOST_ADDR4, HOST_ADDR6, REMOTE_ADDR4, REMOTE_ADDR6, Topology

PEERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers.py")
PY = sys.executable
COUNT = 10_000
DELIVERED = 0.99
QUIET = 3                      # the receiver stops after so many seconds without a datagram
STATS = "echo stats; ip -s -j link; cat /proc/net/snmp /proc/net/snmp6"
SENDER_LOSSES = ("drop_udp_flows_full", "udp_send_full", "udp_send_error")
RECEIVER_LOSSES = ("udp_rcvbuf_drops", "tap_full", "tap_write_error")


def rcvbuf_errors(snmp: str) -> int:
    """UDP datagrams a namespace's kernel dropped at full receive buffers,
    both families (``/proc/net/snmp`` then ``/proc/net/snmp6``)."""
    lines = snmp.splitlines()
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    total = int(udp[1][udp[0].index("RcvbufErrors")])
    return total + sum(int(line.split()[1]) for line in lines
                       if line.startswith("Udp6RcvbufErrors"))


def tap_stats(stats: str) -> tuple[int, int]:
    """The tap's (tx_dropped, UDP RcvbufErrors) in the namespace, from
    what ``STATS`` printed there."""
    links, snmp = stats.split("\n", 1)
    tap = next(link for link in json.loads(links) if link["ifname"] != "lo")
    return tap["stats64"]["tx"]["dropped"], rcvbuf_errors(snmp)


ICMP6_OUT = "awk '/^Icmp6OutMsgs/ {print $2}' /proc/net/snmp6"


def icmp6_out(snmp: str) -> int:
    """ICMPv6 messages a namespace's kernel has sent (``Icmp6OutMsgs``)."""
    return next(int(line.split()[1]) for line in snmp.splitlines()
                if line.startswith("Icmp6OutMsgs"))


class Served:
    """pasta-sep running ``script`` in its namespace; after the script, the
    namespace's statistics, then it waits until ``finish``."""

    def __init__(self, topo: Topology, pasta: str, tmp: str, script: str, *options: str) -> None:
        self.pidfile = os.path.join(tmp, "pid")
        self.proc = topo.spawn_host(pasta, "--config-net", "-P", self.pidfile, *options, "--",
                                    "sh", "-c", f"{script}; {STATS}; read finish",
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)

    def worker(self, signum: int) -> None:
        with open(self.pidfile, encoding="ascii") as handle:
            os.kill(int(handle.read()), signum)

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> tuple[str, dict[str, int]]:
        """The namespace's statistics as printed there, and the worker's
        counters at the end."""
        self.worker(signal.SIGUSR1)
        time.sleep(0.5)
        out, log = self.proc.communicate("\n", timeout=30)
        return out.split("stats\n", 1)[1], logged_counters(log)


def tally(line: str) -> int:
    """Datagrams a ``udp-tally`` line says arrived (none corrupt)."""
    words = line.split()
    assert words[0] == "got" and words[5] == "0", line
    return int(words[1])


def report(direction: str, count: int, got: int, counted: dict[str, int]) -> None:
    print(f"{direction}: {got} of {count} delivered, lost {count - got}, counted {counted}")


# A worker stopped during the burst (SIGSTOP) drains nothing: a burst of
# 20,000 overflows the tap queue or the socket, and the counters must say
# by exactly how much.
CASES = [pytest.param(COUNT, False, id="burst"), pytest.param(20_000, True, id="stalled")]


@pytest.mark.parametrize("count, stalled", CASES)
@pytest.mark.parametrize("remote", [REMOTE_ADDR4, REMOTE_ADDR6])
def test_burst_from_the_namespace(topo: Topology, pasta: str, shared_tmp, remote: str,
                                  count: int, stalled: bool) -> None:
    receiver = topo.spawn_remote(PY, PEERS, "udp-tally", "7500", str(QUIET),
                                 stdout=subprocess.PIPE, text=True)
    topo.wait_listening(7500, "udp")
    burst = f"{PY} {PEERS} udp-burst {remote} 7500"
    served = Served(topo, pasta, str(shared_tmp),      # neighbours resolved, then the burst
                    f"{burst} 0 >/dev/null; {ICMP6_OUT}; echo ready; read go; {burst} {count}")
    icmp6_before = int(served.line())
    assert served.line() == "ready"
    if stalled:
        served.worker(signal.SIGSTOP)
    served.say("go")
    assert served.line() == f"sent {count}"
    served.worker(signal.SIGCONT)
    got = tally(receiver.communicate(timeout=60)[0])
    stats, counters = served.finish()
    remote_snmp = topo.in_remote("cat", "/proc/net/snmp", "/proc/net/snmp6").stdout
    counted = {"tap_tx_dropped": tap_stats(stats)[0],
               "remote_rcvbuf_errors": rcvbuf_errors(remote_snmp),
               **{name: counters.get(name, 0) for name in SENDER_LOSSES}}
    report("namespace -> remote", count, got, counted)
    if not stalled:
        assert got >= count * DELIVERED
    # the tap's tx_dropped also counts the namespace's own frames that met
    # the full queue meanwhile (its IPv6 neighbour probes): at most as many
    # as the ICMPv6 messages it sent since the burst began
    others = icmp6_out(stats) - icmp6_before
    assert count - got <= sum(counted.values()) <= count - got + others, others


@pytest.mark.parametrize("count, stalled", CASES)
@pytest.mark.parametrize("host", [HOST_ADDR4, HOST_ADDR6])
def test_burst_to_the_namespace(topo: Topology, pasta: str, shared_tmp, host: str,
                                count: int, stalled: bool) -> None:
    served = Served(topo, pasta, str(shared_tmp),
                    f"{PY} {PEERS} udp-tally 7510 {QUIET} & "
                    "until ss -Huln 'sport = :7510' | grep -q .; do sleep 0.05; done; "
                    "echo ready; wait", "-u", "7510")
    assert served.line() == "ready"
    if stalled:
        served.worker(signal.SIGSTOP)
    sent = topo.run_remote(PY, PEERS, "udp-burst", host, "7510", str(count))
    served.worker(signal.SIGCONT)
    assert sent.stdout.split() == ["sent", str(count)], sent.stderr
    got = tally(served.line())
    stats, counters = served.finish()
    host_snmp = topo.in_host("cat", "/proc/net/snmp", "/proc/net/snmp6").stdout
    counted = {"namespace_rcvbuf_errors": tap_stats(stats)[1],
               **{name: counters.get(name, 0) for name in RECEIVER_LOSSES}}
    report("remote -> namespace", count, got, counted)
    if not stalled:
        assert got >= count * DELIVERED
    assert counters.get("udp_rcvbuf_drops", 0) == rcvbuf_errors(host_snmp)
    assert sum(counted.values()) == count - got
