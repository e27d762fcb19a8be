"""`make bench`: passt-sep beside distro pasta, the current upstream pasta
(BENCH_PASTA_CURRENT: its passt binary) and slirp4netns, same run, same
topology (tests/topology.py), printed as ratios.

Each implementation serves a named network namespace; iperf3 inside it
talks to a server in the "remote" namespace; passt mode: a QEMU guest on
passt-sep and on distro passt (bench/qemu_passt.py), a table of its own.
Figures are medians of ROUNDS rounds.  Results go to stdout as a table and
to bench/results/<date>.json with the machine and kernel noted.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import peers  # noqa: E402
import procstat  # noqa: E402
import qemu_passt  # noqa: E402

from topology import HOST_ADDR4, REMOTE_ADDR4, REMOTE_ADDR6, Topology  # noqa: E402

VENV = os.environ.get("PASST_SEP_VENV") or sys.prefix
PASTA_SEP = os.path.join(VENV, "bin", "pasta-sep")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
SPLICE_PORT = 5202
SPLICE_OUT_PORT = 5203
UDP_PORT = 5301
# --clat: the guest's IPv4 to the remote leaves as IPv6 to the remote's
# address in this prefix, which the remote holds itself (no NAT64: the
# figure is passt-sep's translation path alone, beside the plain IPv6 one)
CLAT_PREFIX = "2001:db8:64::/96"
CLAT_REMOTE6 = f"2001:db8:64::{REMOTE_ADDR4}"
BURST_PORT = 5302                       # forwarded into the namespace (-u)
BURST = 10_000                          # datagrams in a burst
LOSSY_PORTS = (5400, 5401)              # a source (downloads) and a sink (uploads)
# MiB moved at each loss rate: at 20%, 64 MiB take minutes through any
# implementation (the sender's retransmission timer backs off, up to a
# minute while retransmissions are lost); BENCH_LOSSY_MIB sets them all
LOSSY_MIB = {1: 64, 5: 64, 20: 16}
if os.environ.get("BENCH_LOSSY_MIB"):
    LOSSY_MIB = dict.fromkeys(LOSSY_MIB, int(os.environ["BENCH_LOSSY_MIB"]))
LOSS_PERCENTS = tuple(LOSSY_MIB)
LOSSY_PATIENCE = 120                    # seconds a lossy transfer's socket may wait (distro
                                        # pasta never completes an upload: its sink's answer
                                        # after the half-close does not come back)
# the current upstream build beside the distro's: its passt binary runs as
# pasta under that name (a symlink made at start)
PASTA_CURRENT = os.environ.get("BENCH_PASTA_CURRENT", "")   # `make bench` names it
PASTA_CURRENT_NAME = "pasta-2025-01"
PEERS = peers.PATH


class Served:
    """One implementation serving namespace ``ns`` from the host namespace."""

    def __init__(self, topo: Topology, name: str, mtu: int, extra: tuple[str, ...] = ()) -> None:
        self.topo, self.name, self.mtu = topo, name, mtu
        self.proc: subprocess.Popen | None = None
        self.ns = f"{topo.host}-b"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        path = f"/run/netns/{self.ns}"
        self.pidfile = f"/tmp/{self.ns}.pid"
        forwards = ["-t", str(SPLICE_PORT), "-u", str(BURST_PORT)]
        if name == "passt-sep":
            self._start([PASTA_SEP, "--config-net", "-q", "-m", str(mtu), *forwards,
                         "-P", self.pidfile, *extra, "--netns", path])
        elif name in PASTAS:
            # as root, pasta drops to nobody and cannot join: keep root
            self._start([PASTAS[name], "--config-net", "-q", "--runas", "0:0", "-m", str(mtu),
                         *forwards, "-P", self.pidfile, "--netns", path])
        else:
            self.proc = topo.spawn_host("slirp4netns", "--configure", "--enable-ipv6",
                                        f"--mtu={mtu}",
                                        "--netns-type=path", path, "tap0",
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    def pid(self) -> int:
        """The long-lived process: passt-sep's worker, pasta, slirp4netns
        (its child under `ip netns exec`)."""
        if self.name == "slirp4netns":
            children = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                                      capture_output=True, text=True).stdout.split()
            return int(children[0]) if children else self.proc.pid
        with open(self.pidfile, encoding="ascii") as handle:
            return int(handle.read())

    def rss_mib(self) -> float:
        return procstat.rss_kib(self.pid()) / 1024

    def _start(self, argv: list[str]) -> None:
        result = self.topo.run_host(*argv)
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: {result.stderr.strip()}")

    def _wait_ready(self) -> None:
        for _ in range(200):
            out = subprocess.run(self.cmd("ip", "-4", "route"),
                                 capture_output=True, text=True).stdout
            if "default" in out:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: namespace not configured")

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, *argv: str, timeout: float = 60) -> str:
        return subprocess.run(self.cmd(*argv), capture_output=True, text=True,
                              timeout=timeout).stdout

    def close(self) -> None:
        if self.proc is not None:   # slirp4netns outlives its namespace: its process group
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], check=False)
        time.sleep(0.3)  # netns-watching implementations exit on their own


def iperf(served: Served, reverse: bool, remote: str = REMOTE_ADDR4) -> float:
    """Gbit/s received, guest -> remote (or remote -> guest with -R)."""
    out = served.run("iperf3", "-c", remote, "-t", str(SECONDS), "-J",
                     *(["-R"] if reverse else []), timeout=SECONDS + 30)
    return _received_gbps(out)


def _received_gbps(iperf_json: str) -> float:
    try:
        return json.loads(iperf_json)["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError):
        return 0.0


def udp_out(served: Served) -> float:
    """Gbit/s of 1400-byte datagrams the remote received, the guest sending
    as fast as socat can for SECONDS (iperf3 3.12's UDP mode fails its
    set-up through every implementation here, so socat does it)."""
    sink = served.topo.spawn_remote("sh", "-c", f"timeout {SECONDS + 2} socat -u -b 65536 "
                                    f"UDP-RECV:{UDP_PORT} - | wc -c", stdout=subprocess.PIPE,
                                    text=True)
    time.sleep(0.3)
    served.run("timeout", str(SECONDS), "socat", "-u", "-b", "1400", "/dev/zero",
               f"UDP:{REMOTE_ADDR4}:{UDP_PORT}", timeout=SECONDS + 10)
    received = int(sink.communicate(timeout=SECONDS + 10)[0].strip() or 0)
    return received * 8 / SECONDS / 1e9


def udp_in(served: Served) -> float:
    """Gbit/s of 1400-byte datagrams from the remote, sent as fast as socat
    can for SECONDS to a port forwarded into the namespace (-u), that the
    program there received."""
    if served.name == "slirp4netns":
        return float("nan")
    sink = subprocess.Popen(served.cmd("sh", "-c", f"timeout {SECONDS + 2} socat -u -b 65536 "
                                       f"UDP-RECV:{BURST_PORT} - | wc -c"),
                            stdout=subprocess.PIPE, text=True)
    _wait_bound(served, BURST_PORT)
    served.topo.run_remote("timeout", str(SECONDS), "socat", "-u", "-b", "1400", "/dev/zero",
                           f"UDP:{HOST_ADDR4}:{BURST_PORT}", timeout=SECONDS + 10)
    received = int(sink.communicate(timeout=SECONDS + 10)[0].strip() or 0)
    return received * 8 / SECONDS / 1e9


def _wait_bound(served: Served, port: int) -> None:
    """Until a UDP socket in the namespace is bound to ``port``."""
    for _ in range(200):
        if served.run("ss", "-Huln", f"sport = :{port}").strip():
            return
        time.sleep(0.05)


def udp_burst_out(served: Served) -> float:
    """Datagrams of a BURST of 1000-byte ones, sent back to back from the
    namespace as fast as a program can, that reached the remote."""
    tally = served.topo.spawn_remote(sys.executable, PEERS, "udp-tally", str(UDP_PORT), "2",
                                     stdout=subprocess.PIPE, text=True)
    served.topo.wait_listening(UDP_PORT, "udp")
    served.run(sys.executable, PEERS, "udp-burst", REMOTE_ADDR4, str(UDP_PORT), str(BURST))
    return _tallied(tally)


def udp_burst_in(served: Served) -> float:
    """Datagrams of a BURST from the remote to a port forwarded into the
    namespace (-u) that reached the program there."""
    if served.name == "slirp4netns":
        return float("nan")
    tally = subprocess.Popen(served.cmd(sys.executable, PEERS, "udp-tally", str(BURST_PORT), "2"),
                             stdout=subprocess.PIPE, text=True)
    _wait_bound(served, BURST_PORT)
    served.topo.run_remote(sys.executable, PEERS, "udp-burst", HOST_ADDR4, str(BURST_PORT),
                           str(BURST))
    return _tallied(tally)


def _tallied(tally: subprocess.Popen) -> float:
    try:
        words = tally.communicate(timeout=60)[0].split()
    except subprocess.TimeoutExpired:
        tally.kill()
        return float("nan")
    return float(words[1]) if words[:1] == ["got"] else float("nan")


LOSS_RULES = """table inet bench_loss {{
  chain input {{ type filter hook input priority 0; policy accept;
    tcp dport {{ {ports} }} numgen random mod 100 < {percent} drop; }}
  chain output {{ type filter hook output priority 0; policy accept;
    tcp sport {{ {ports} }} numgen random mod 100 < {percent} drop; }}
}}
"""


def lossy(served: Served, percent: int, upload: bool) -> tuple[float, float, float]:
    """Seconds to move LOSSY_MIB[percent] MiB from the remote (or,
    ``upload``, to it) while the remote drops ``percent``% of that
    connection's packets each way (nftables: netem is not on every
    kernel), how many retransmission timeouts the sender's TCP had
    meanwhile (TCPTimeouts of the remote's, or for uploads the host's,
    namespace), and for uploads the percentage of the time the
    translator's socket had nothing left to send (NaN for downloads): at
    high loss the time is mostly those timeouts, each doubling the next
    while retransmissions are lost, and only a socket that runs dry makes
    it the translator's."""
    topo, size = served.topo, LOSSY_MIB[percent] << 20
    ports = ", ".join(map(str, LOSSY_PORTS))
    subprocess.run(topo.remote_cmd("nft", "-f", "-"), check=True, text=True,
                   input=LOSS_RULES.format(ports=ports, percent=percent))
    sender = topo.host if upload else topo.remote
    timeouts = _timeouts(sender)
    queue = SendQueue(served.pid(), LOSSY_PORTS[1]) if upload else None
    try:
        start = time.monotonic()
        try:
            out = served.run("env", f"PEERS_TIMEOUT={LOSSY_PATIENCE}", sys.executable, PEERS,
                             "send" if upload else "recv", REMOTE_ADDR4,
                             str(LOSSY_PORTS[1] if upload else LOSSY_PORTS[0]), str(size),
                             "1", timeout=2 * LOSSY_PATIENCE)
        except subprocess.TimeoutExpired:
            out = ""            # still crawling at the deadline: never done, like a give-up
        elapsed = time.monotonic() - start
    finally:
        dry = queue.stop() if queue else float("nan")
        topo.in_remote("nft", "delete", "table", "inet", "bench_loss")
    timeouts = _timeouts(sender) - timeouts
    return (elapsed if out.strip() == peers.expected(size, 1) else float("nan")), timeouts, dry


class SendQueue:
    """Samples, every SAMPLE_EVERY seconds, the unacknowledged bytes of the
    translator's established IPv4 connection to ``port`` (its Send-Q, from
    ``/proc/PID/net/tcp`` of the translator's process, in the host's
    namespace) until ``stop``, which returns the percentage of samples,
    from the first with data queued, in which nothing was."""

    SAMPLE_EVERY = 0.02

    def __init__(self, pid: int, port: int) -> None:
        self.path, self.port = f"/proc/{pid}/net/tcp", f"{port:04X}"
        self.samples: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(self.SAMPLE_EVERY):
            queued = self._queued()
            if queued is not None and (queued or self.samples):
                self.samples.append(queued)

    def _queued(self) -> int | None:
        try:
            with open(self.path, encoding="ascii") as table:
                for line in table:
                    fields = line.split()     # sl local remote st tx_queue:rx_queue ...
                    if fields[2].endswith(f":{self.port}") and fields[3] == "01":
                        return int(fields[4].split(":")[0], 16)
        except OSError:
            pass
        return None

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        if not self.samples:
            return float("nan")
        return 100 * self.samples.count(0) / len(self.samples)


def _timeouts(ns: str) -> int:
    lines = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/netstat"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    names, values = next((a.split(), b.split()) for a, b in
                         zip(lines[::2], lines[1::2], strict=True) if a.startswith("TcpExt:"))
    return int(values[names.index("TCPTimeouts")])


def splice_out(served: Served) -> float:
    """Gbit/s from the namespace's loopback to a server on the host's
    loopback (pasta's -T, here by auto: the host listens first)."""
    if served.name == "slirp4netns":
        return float("nan")
    return _loopback_iperf(served.topo.host_cmd("iperf3", "-B", "127.0.0.1"),
                           served.cmd("iperf3"), SPLICE_OUT_PORT,
                           settle=1.5)             # auto forwarding rescans every second


def splice(served: Served) -> float:
    """Gbit/s from the host's loopback to a forwarded port served inside
    the namespace (pasta's splice path; slirp4netns forwards only through
    its API socket, so it has no figure here)."""
    if served.name == "slirp4netns":
        return float("nan")
    return _loopback_iperf(served.cmd("iperf3"), served.topo.host_cmd("iperf3"), SPLICE_PORT,
                           settle=0.5)


def _loopback_iperf(server: list[str], client: list[str], port: int, settle: float) -> float:
    """Gbit/s from ``client`` to a one-shot ``server`` at 127.0.0.1:``port``
    (each argv runs iperf3 where its prefix says)."""
    proc = subprocess.Popen([*server, "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle)
        out = subprocess.run([*client, "-c", "127.0.0.1", "-p", str(port), "-t", str(SECONDS),
                              "-J"], capture_output=True, text=True, timeout=SECONDS + 30).stdout
        return _received_gbps(out)
    except subprocess.TimeoutExpired:
        return 0.0
    finally:
        proc.kill()
        proc.wait()


def latency(served: Served, remote: str = REMOTE_ADDR4) -> tuple[float, float]:
    """Median and 99th percentile microseconds of a 1-byte TCP
    request/response to the remote's echo server at ``remote``."""
    return rr_figures(served.run(sys.executable, "-c", rr_client(remote)))


def rr_client(remote: str, exchanges: int = 2000, gated: bool = False) -> str:
    """The request/response client, run inside the namespace: ``exchanges``
    1-byte requests and responses on one connection to the remote's echo
    server at ``remote``, then the median and 99th percentile microseconds.
    ``gated`` (bench/rr_profile.py, which measures the translator around the
    exchanges alone): after connecting and 200 exchanges to warm up, it
    prints ``ready`` and waits for a line on stdin before the measured ones."""
    gate = ("for _ in range(200):\n    c.sendall(b'x'); c.recv(1)\n"
            "print('ready', flush=True); input()\n") if gated else ""
    return ("import socket, time, statistics\n"
            f"c = socket.create_connection(('{remote}', 7001), 5)\n"
            "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
            f"{gate}"
            "samples = []\n"
            f"for _ in range({exchanges}):\n"
            "    t = time.perf_counter(); c.sendall(b'x'); c.recv(1)\n"
            "    samples.append(time.perf_counter() - t)\n"
            "samples.sort()\n"
            "print(statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6)")


def rr_figures(out: str) -> tuple[float, float]:
    """The median and p99 the client printed (NaN if it printed none)."""
    words = out.split()
    return (float(words[0]), float(words[1])) if len(words) == 2 else (float("nan"),
                                                                        float("nan"))


def connection_rate(served: Served) -> float:
    """Connect, 1-byte request, response, close: per second, for SECONDS."""
    script = ("import socket, time\n"
              f"end = time.monotonic() + {SECONDS}; count = 0\n"
              "while time.monotonic() < end:\n"
              f"    c = socket.create_connection(('{REMOTE_ADDR4}', 7001), 5)\n"
              "    c.sendall(b'x'); c.recv(1); c.close(); count += 1\n"
              f"print(count / {SECONDS})")
    out = served.run(sys.executable, "-c", script, timeout=SECONDS + 60).strip()
    return float(out or "nan")


def rss_with_connections(served: Served, count: int = 1000) -> float:
    """MiB of the long-lived process while ``count`` connections are open."""
    script = ("import socket, sys, time\n"
              f"held = [socket.create_connection(('{REMOTE_ADDR4}', 7001), 10)"
              f" for _ in range({count})]\n"
              "print('open', flush=True); sys.stdin.readline()\n")
    proc = subprocess.Popen(served.cmd(sys.executable, "-c", script),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout is None or proc.stdout.readline().strip() != "open":
            return float("nan")
        time.sleep(0.5)
        return served.rss_mib()
    finally:
        proc.kill()
        proc.wait()


def startup(topo: Topology, name: str) -> float:
    """Seconds from exec to a configured namespace running `true`."""
    argv = {"passt-sep": [PASTA_SEP, "--config-net", "-q", "--", "true"],
            **{peer: [binary, "--config-net", "-q", "--runas", "0:0", "--", "true"]
               for peer, binary in PASTAS.items()}}.get(name)
    if argv is None:
        return float("nan")
    start = time.monotonic()
    topo.run_host(*argv)
    return time.monotonic() - start


ECHO_SERVER = ("import socket, threading\n"
               "s = socket.create_server(('::', 7001), family=socket.AF_INET6, backlog=2048,\n"
               "                         dualstack_ipv6=True)\n"
               "def echo(c):\n"
               "    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
               "    while (d := c.recv(1)):\n        c.sendall(d)\n"
               "    c.close()\n"
               "while True:\n"
               "    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()\n")


CASES = [c for c in os.environ.get("BENCH_CASES", "").split(",") if c]
# BENCH_PEERS=pasta-2025-01: only those peers beside passt-sep (all by default)
PEERS_WANTED = [p for p in os.environ.get("BENCH_PEERS", "").split(",") if p]


def wanted(key: str) -> bool:
    """``BENCH_CASES=udp_out_gbps,startup_s``: only those figures (any
    prefix of a key works: ``tcp_out`` is both MTUs' TCP-out figures)."""
    return not CASES or any(key.startswith(case) for case in CASES)


def wanted_any(keys: list[str]) -> bool:
    return any(wanted(key) for key in keys)


def measure(names: list[str]) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, list[float]]] = {n: {} for n in names}

    def add(name: str, key: str, figure, *args) -> None:
        if wanted(key):
            results[name].setdefault(key, []).append(figure(*args))

    with Topology("bench") as topo:
        topo.spawn_remote("iperf3", "-s", stdout=subprocess.DEVNULL)
        topo.spawn_remote(sys.executable, "-c", ECHO_SERVER)
        if wanted_any(LOSSY_KEYS):
            topo.spawn_remote(sys.executable, PEERS, "source", str(LOSSY_PORTS[0]))
            topo.spawn_remote(sys.executable, PEERS, "sink", str(LOSSY_PORTS[1]))
            topo.wait_listening(LOSSY_PORTS[1])
        topo.wait_listening(5201)
        topo.wait_listening(7001)
        topo.in_remote("ip", "-6", "addr", "add", f"{CLAT_REMOTE6}/128", "dev", "lo")
        for _ in range(ROUNDS):
            for name in names:
                for mtu in (65520, 1500):
                    if not wanted_any(SERVED_KEYS[mtu]):
                        continue
                    served = Served(topo, name, mtu)
                    try:
                        add(name, f"tcp_out_gbps_mtu{mtu}", iperf, served, False)
                        add(name, f"tcp_in_gbps_mtu{mtu}", iperf, served, True)
                        for family, remote in (("", REMOTE_ADDR4), ("6", REMOTE_ADDR6)):
                            if wanted_any([key for key in RR_KEYS[mtu]
                                           if key.startswith(f"rr_latency{family}_")]):
                                median, p99 = latency(served, remote)
                                add(name, f"rr_latency{family}_us_mtu{mtu}", float, median)
                                add(name, f"rr_latency{family}_p99_us_mtu{mtu}", float, p99)
                        if mtu == 65520:
                            add(name, "rss_idle_mib", served.rss_mib)
                            # before the connection rate: its thousands of
                            # lingering flows would set the peak measured here
                            add(name, "rss_1000_conns_mib", rss_with_connections, served)
                            add(name, "connections_per_s", connection_rate, served)
                            add(name, "splice_host_lo_to_ns_gbps", splice, served)
                            add(name, "splice_ns_lo_to_host_gbps", splice_out, served)
                            add(name, "tcp6_out_gbps_mtu65520", iperf, served, False,
                                REMOTE_ADDR6)
                            add(name, "tcp6_in_gbps_mtu65520", iperf, served, True, REMOTE_ADDR6)
                            add(name, "udp_out_gbps", udp_out, served)
                            add(name, "udp_in_gbps", udp_in, served)
                            add(name, "udp_burst_out_of_10000", udp_burst_out, served)
                            add(name, "udp_burst_in_of_10000", udp_burst_in, served)
                            for percent in LOSS_PERCENTS:
                                for way in ("down", "up"):
                                    key = f"tcp_lossy{percent}_{way}"
                                    if wanted_any([k for k in LOSSY_KEYS
                                                   if k.startswith(f"{key}_")]):
                                        seconds, timeouts, dry = lossy(served, percent,
                                                                       way == "up")
                                        add(name, f"{key}_s", float, seconds)
                                        add(name, f"{key}_rto", float, timeouts)
                                        if way == "up":
                                            add(name, f"{key}_dry_pct", float, dry)
                    finally:
                        served.close()
                if name == "passt-sep" and wanted_any(CLAT_KEYS):
                    clat(topo, add)
                add(name, "startup_s", startup, topo, name)
    return {n: {k: statistics.median(v) for k, v in m.items()} for n, m in results.items()}


def clat(topo: Topology, add) -> None:
    """TCP through --clat (IPv4 in the guest, IPv6 on the host), to compare
    with tcp6_*: the same host sockets, only the guest's family differs."""
    served = Served(topo, "passt-sep", 65520, ("--nat64-prefix", CLAT_PREFIX))
    try:
        add("passt-sep", "tcp_clat_out_gbps_mtu65520", iperf, served, False)
        add("passt-sep", "tcp_clat_in_gbps_mtu65520", iperf, served, True)
    finally:
        served.close()


LOSSY_KEYS = [f"tcp_lossy{percent}_{way}_{what}" for percent in LOSS_PERCENTS
              for way in ("down", "up") for what in ("s", "rto", "dry_pct")
              if way == "up" or what != "dry_pct"]
RR_KEYS = {mtu: [f"rr_latency{family}{p99}_us_mtu{mtu}" for family in ("", "6")
                for p99 in ("", "_p99")] for mtu in (65520, 1500)}
SERVED_KEYS = {
    65520: ["tcp_out_gbps_mtu65520", "tcp_in_gbps_mtu65520", *RR_KEYS[65520], "rss_idle_mib",
            "connections_per_s", "rss_1000_conns_mib",
            "splice_host_lo_to_ns_gbps", "splice_ns_lo_to_host_gbps", "tcp6_out_gbps_mtu65520",
            "tcp6_in_gbps_mtu65520", "udp_out_gbps", "udp_in_gbps", "udp_burst_out_of_10000",
            "udp_burst_in_of_10000",
            *LOSSY_KEYS],
    1500: ["tcp_out_gbps_mtu1500", "tcp_in_gbps_mtu1500", *RR_KEYS[1500]],
}
CLAT_KEYS = ["tcp_clat_out_gbps_mtu65520", "tcp_clat_in_gbps_mtu65520"]
KEYS = [*SERVED_KEYS[65520], *SERVED_KEYS[1500], *CLAT_KEYS, "startup_s", "qemu"]


def table(figures: dict[str, dict[str, float]]) -> str:
    peers = [n for n in figures if n != "passt-sep"]
    keys = list(figures["passt-sep"])
    widths = {p: max(12, len(p) + 2) for p in peers}
    head = f"{'metric':<30}{'passt-sep':>12}" + "".join(
        f"{p:>{widths[p]}}{'ratio':>8}" for p in peers)
    lines = [head, "-" * len(head)]
    for key in keys:
        ours = figures["passt-sep"][key]
        row = f"{key:<30}{ours:>12.3f}"
        for peer in peers:
            theirs = figures[peer].get(key, float("nan"))
            ratio = ours / theirs if theirs and theirs == theirs else float("nan")
            row += f"{theirs:>{widths[peer]}.3f}{ratio:>8.2f}"
        lines.append(row)
    return "\n".join(lines)


PASTAS: dict[str, str] = {}             # pasta name -> binary


def find_pastas(tmp: str) -> None:
    """The distro's pasta and the current upstream build, where installed."""
    if shutil.which("pasta"):
        PASTAS["pasta"] = "pasta"
    if os.access(PASTA_CURRENT, os.X_OK):
        link = os.path.join(tmp, "pasta")
        os.symlink(PASTA_CURRENT, link)
        PASTAS[PASTA_CURRENT_NAME] = link


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="passt-sep-bench-") as tmp:
        find_pastas(tmp)
        return run()


def run() -> int:
    unknown = [case for case in CASES if not any(key.startswith(case) for key in KEYS)]
    if unknown:
        print(f"BENCH_CASES: {', '.join(unknown)} names no figure; the figures are "
              f"{', '.join(KEYS)}", file=sys.stderr)
        return 2
    names = ["passt-sep", *PASTAS] + (["slirp4netns"] if shutil.which("slirp4netns") else [])
    if PEERS_WANTED:
        names = ["passt-sep", *(name for name in names[1:] if name in PEERS_WANTED)]
    figures = measure(names)
    skip_qemu = qemu_passt.available() or (None if wanted("qemu") else "not in BENCH_CASES")
    passt_mode = {} if skip_qemu else qemu_passt.measure(ROUNDS)
    print(f"passt-sep benchmark, {time.strftime('%Y-%m-%d')}, {platform.node()}, "
          f"kernel {platform.release()}, {os.cpu_count()} cpus, {ROUNDS} rounds of {SECONDS}s")
    print("ratio = passt-sep / peer (throughput and burst datagrams delivered: higher is "
          "better; latency, start-up and lossy transfer seconds: lower is better)")
    print(f"tcp_lossyN: MiB moved at N% loss {LOSSY_MIB}, N% of the connection's packets "
          "dropped by the remote each way; _s: seconds, _rto: the sender's retransmission "
          "timeouts meanwhile, _dry_pct: % of the upload's samples in which the "
          "translator's socket had nothing to send (the time is then the translator's)")
    print(table(figures))
    print(f"\npasst mode, QEMU guest, {qemu_passt.MIB} MiB each way, Mbit/s:")
    print(table(passt_mode) if passt_mode else f"skipped: {skip_qemu}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(HERE, "results", f"{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "kernel": platform.release(),
                   "machine": platform.machine(), "cpus": os.cpu_count(),
                   "figures": figures, "passt_mode_qemu": passt_mode}, handle, indent=2)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
