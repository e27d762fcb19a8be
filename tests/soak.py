"""`make soak`: a bounded mixed load through pasta-sep in the test topology
(tests/topology.py), with the real peers of tests/peers.py, while the
worker's RSS and fd count are sampled from /proc.

Load, for ``--seconds`` (SOAK_SECONDS, default 600):

* TCP: 1000 connections open at any time, each sending its own data in
  two halves a pause apart and checking the sink's digest, then closing,
  another one taking its place: 375 from the namespace to the remote over
  IPv4, 375 over IPv6, 250 from the remote to a forwarded port (``-t``).
* UDP echo over IPv4 and IPv6, each datagram checked;
* DNS (A and AAAA, over UDP and TCP) to the remote's server, each answer
  checked byte for byte;
* ping and ping -6.

Reported: connection and request counts, integrity failures (data that
came back different), failures (connections that did not complete,
answers that never came), the worker's RSS and fd count at the start,
peak and end with their least-squares slope per minute over the steady
part (after the first UDP flows expired: ``STEADY_AFTER``), and whether
the worker was the same process throughout.  Exit status 1 if any byte
was wrong, a TCP connection failed, the worker died or changed, or (in a
run long enough to tell) its RSS or fd count kept growing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import PATH as PEERS  # noqa: E402
from procstat import Sampler, logged_counters, slope_per_minute  # noqa: E402

from topology import HOST_ADDR4, REMOTE_ADDR4, REMOTE_ADDR6, Topology  # noqa: E402

VENV = os.environ.get("PASST_SEP_VENV") or sys.prefix
PASTA_SEP = os.path.join(VENV, "bin", "pasta-sep")
PY = sys.executable
SINK, ECHO, INBOUND = 9000, 7000, 9100
OUTBOUND_EACH, INBOUND_CONNS = 375, 250        # 1000 connections open at once
MAX_SIZE = 64 << 10
RATE = 20                                      # UDP echoes a second, each family
DNS_RATE = 5                                   # DNS queries a second, each family
PING_INTERVAL = 0.2
UDP_FLOW_TIMEOUT = 180                         # passt_sep.udp.DEFAULT_TIMEOUT
STEADY_AFTER = UDP_FLOW_TIMEOUT + 20           # the first DNS flows have expired by then
FLAT_RSS_KIB, FLAT_FDS = 256, 5                # per minute, at most, in the steady part
SAMPLE_EVERY = 1.0
PORT_RANGE = "1024 65000"                      # many closed connections wait in TIME_WAIT


def guest_script(seconds: int) -> str:
    """What runs inside pasta-sep's namespace: the sink for inbound
    connections, then every client at once; each prints one line."""
    peers = f"{PY} {PEERS}"
    clients = [
        f"{peers} churn {REMOTE_ADDR4} {SINK} {OUTBOUND_EACH} {seconds} {MAX_SIZE} 4"
        " | sed 's/^/tcp4 /'",
        f"{peers} churn {REMOTE_ADDR6} {SINK} {OUTBOUND_EACH} {seconds} {MAX_SIZE} 6"
        " | sed 's/^/tcp6 /'",
        f"{peers} echo-check {REMOTE_ADDR4} {ECHO} {seconds} {RATE} | sed 's/^/udp4 /'",
        f"{peers} echo-check {REMOTE_ADDR6} {ECHO} {seconds} {RATE} | sed 's/^/udp6 /'",
        f"{peers} dns-check {REMOTE_ADDR4} {seconds} {DNS_RATE} | sed 's/^/dns4 /'",
        f"{peers} dns-check {REMOTE_ADDR6} {seconds} {DNS_RATE} | sed 's/^/dns6 /'",
    ] + [f"{ping} -q -i {PING_INTERVAL} -w {seconds} {address} "
         f"| sed -n 's/^\\(.*\\) packets transmitted, \\(.*\\) received.*/{name} \\1 \\2/p'"
         for name, ping, address in (("ping4", "ping", REMOTE_ADDR4),
                                     ("ping6", "ping -6", REMOTE_ADDR6))]
    return "\n".join([
        f"sysctl -qw net.ipv4.ip_local_port_range='{PORT_RANGE}'",
        f"{peers} sink {INBOUND} &",
        "sink=$!",
        f"until ss -Htln 'sport = :{INBOUND}' | grep -q .; do sleep 0.05; done",
        "echo ready",
        *(f"{client} &\npids=\"$pids $!\"" for client in clients),
        "wait $pids",
        "echo done",
        "read finish",          # the worker must live until its counters are logged
        "kill $sink",
    ])


def steady_slope(name: str, samples: list, what: str, warmup: float) -> float:
    """Print how ``what`` went; its slope per minute after ``warmup``."""
    values = [getattr(sample, what) for sample in samples]
    whole = slope_per_minute([(sample.at, getattr(sample, what)) for sample in samples])
    steady = slope_per_minute([(sample.at, getattr(sample, what)) for sample in samples
                               if sample.at >= warmup])
    print(f"  worker {name}: start {values[0]}, peak {max(values)}, end {values[-1]}; slope "
          f"{steady:+.1f}/min after {warmup:.0f} s ({whole:+.1f}/min over the whole run)")
    return steady


def soak(seconds: int) -> int:
    failures: list[str] = []
    with Topology("soak") as topo, tempfile.TemporaryDirectory(prefix="passt-sep-soak-") as tmp:
        for run in (topo.in_host, topo.in_remote):
            run("sysctl", "-qw", f"net.ipv4.ip_local_port_range={PORT_RANGE}")
        topo.spawn_remote(PY, PEERS, "sink", str(SINK))
        for address in (REMOTE_ADDR4, REMOTE_ADDR6):   # answers from the address asked
            topo.spawn_remote(PY, PEERS, "udp-echo", str(ECHO), address)
            topo.spawn_remote(PY, PEERS, "dns", "53", address)
        topo.wait_listening(SINK)
        topo.wait_listening(ECHO, "udp")
        topo.wait_listening(53, "udp")
        pidfile = os.path.join(tmp, "pid")
        guest = topo.spawn_host(PASTA_SEP, "--config-net", "-t", str(INBOUND), "-P", pidfile,
                                "--", "sh", "-c", guest_script(seconds), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = guest.stdout.readline().strip()
        if ready != "ready":
            print(f"pasta-sep did not start: {ready} {guest.communicate()}", file=sys.stderr)
            return 1
        with open(pidfile, encoding="ascii") as handle:
            worker = int(handle.read())
        sampler = Sampler(lambda: worker, SAMPLE_EVERY).start()
        start = time.monotonic()
        inbound = topo.spawn_remote(PY, PEERS, "churn", HOST_ADDR4, str(INBOUND),
                                    str(INBOUND_CONNS), str(seconds), str(MAX_SIZE), "1",
                                    stdout=subprocess.PIPE, text=True)
        out = "".join(iter(guest.stdout.readline, "done\n"))
        inbound_out = inbound.communicate(timeout=300)[0].strip()
        try:
            os.kill(worker, signal.SIGUSR1)
            time.sleep(0.5)
        except ProcessLookupError:
            failures.append("the worker was gone before the end")
        log = guest.communicate("\n", timeout=60)[1]
        elapsed = time.monotonic() - start
        samples = [s for s in sampler.stop() if s.at <= seconds]     # under load

    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    lines["tcp-in"] = inbound_out
    print(f"soak: {elapsed:.0f} s of load through pasta-sep (worker pid {worker})")
    for name, wrong in (("tcp4", 5), ("tcp6", 5), ("tcp-in", 5), ("tcp4", 7), ("tcp6", 7),
                        ("tcp-in", 7), ("udp4", 5), ("udp6", 5), ("dns4", 5), ("dns6", 5)):
        fields = lines.get(name, "missing").split()
        if len(fields) != 8 or fields[wrong] != "0":
            failures.append(f"{name}: {lines.get(name, 'missing')}")
    for name in ("tcp4", "tcp6", "tcp-in", "udp4", "udp6", "dns4", "dns6"):
        print(f"  {name}: {lines.get(name, 'missing')}")
    for name in ("ping4", "ping6"):
        sent, got = (lines.get(name) or "0 0").split()
        print(f"  {name}: {got} of {sent} echoed")
        if got == "0":
            failures.append(f"{name}: no answer")
    warmup = min(STEADY_AFTER, seconds / 2)
    if samples:
        rss = steady_slope("RSS KiB", samples, "rss_kib", warmup)
        fds = steady_slope("fds", samples, "fds", warmup)
        # flat, once the steady part is long enough to tell (a full run)
        if warmup == STEADY_AFTER and (rss > FLAT_RSS_KIB or fds > FLAT_FDS):
            failures.append(f"growing: RSS {rss:+.1f} KiB/min, {fds:+.1f} fds/min")
    seen = logged_counters(log)
    print(f"  worker counters: {seen}")
    if sampler.gone or len(samples) < elapsed / SAMPLE_EVERY / 2:
        failures.append("the worker was not there all along")
    if seen.get("internal_error"):
        failures.append(f"{seen['internal_error']} internal errors")
    if guest.returncode != 0:
        failures.append(f"pasta-sep exited {guest.returncode}: {log[-2000:]}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("soak: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", 600)),
                        help="how long the load runs (SOAK_SECONDS, default 600)")
    sys.exit(soak(parser.parse_args().seconds))


if __name__ == "__main__":
    main()
