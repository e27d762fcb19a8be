"""Start-up and footprint of pasta-sep beside the current pasta and distro
pasta, all run as an unprivileged user (uid 65534) in a namespace of the
test topology (tests/topology.py), never the host's own network.

* start-up: ``--config-net -q -- true``, wall time and CPU time (user +
  system of every process the run made, orphans included: this process is
  their child subreaper and reaps them all with ``wait4``), median of
  ``BENCH_STARTUP_RUNS`` (default 15) runs interleaved between the
  implementations, after one warm-up run each;
* footprint: a daemon serving a rootless container's namespace (a user and
  network namespace made by uid 65534, as rootless Podman's), once with
  the default options (``--config-net``: every forwarding ``auto``) and
  once with Podman's argv (every forwarding ``none``); the Rss, Pss and
  private (Uss) memory of each process the daemon leaves running, from
  /proc/PID/smaps_rollup, summed.  Pss shares a page among every process
  mapping it, other Python processes on the machine too: Uss is the figure
  no other process lowers.

Printed as a table with ratios to the current pasta (``BENCH_PASTA_CURRENT``,
its passt binary, which ``make bench`` names); written to
bench/results/startup.json.  Run as
root: ``python bench/startup.py`` (the venv from ``make install``);
``BENCH_BASELINE_VENV=/path/to/venv`` adds another passt-sep install to the
same interleaved runs, to measure a change against what it replaces;
``BENCH_NICE=-10`` runs everything at that niceness, on a machine that
other work keeps busy.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from topology import Topology  # noqa: E402

VENV = os.environ.get("PASST_SEP_VENV") or sys.prefix
RUNS = int(os.environ.get("BENCH_STARTUP_RUNS", "15"))
# a negative niceness (root may set one; the runs inherit it) keeps other
# work on a shared machine from stretching every implementation's wall time
NICE = int(os.environ.get("BENCH_NICE", "0"))
NOBODY = 65534
CLONE_NEWNET = 0x40000000
PR_SET_CHILD_SUBREAPER = 36
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME": "/nonexistent", "LANG": "C.UTF-8"}
PODMAN_ARGV = ["--dns-forward", "169.254.1.1", "-t", "none", "-u", "none", "-T", "none",
               "-U", "none", "--no-map-gw", "--quiet"]
READY_SECONDS = 10.0
SETTLE_SECONDS = 0.5

_libc = ctypes.CDLL(None, use_errno=True)


def implementations(tmp: str) -> dict[str, str]:
    """Name -> program: passt-sep first, the current pasta second (the
    ratios' reference: its passt binary runs as pasta under that name, a
    link made in ``tmp``), distro pasta if installed, and another passt-sep
    install to compare with (``BENCH_BASELINE_VENV``: a change's before)."""
    found = {"passt-sep": os.path.join(VENV, "bin", "pasta-sep")}
    current = os.environ.get("BENCH_PASTA_CURRENT", "")
    if os.access(current, os.X_OK):
        found["pasta"] = os.path.join(tmp, "pasta")
        os.symlink(current, found["pasta"])
    baseline = os.environ.get("BENCH_BASELINE_VENV")
    if baseline:
        found["passt-sep-base"] = os.path.join(baseline, "bin", "pasta-sep")
    distro = shutil.which("pasta", path="/usr/bin:/bin")
    if distro:
        found["distro-pasta"] = distro
    return {name: path for name, path in found.items() if os.access(path, os.X_OK)}


# -- running as nobody in the topology's host namespace ---------------------------------

@dataclass
class Finished:
    status: int
    wall: float
    cpu: float        # user + system of every process reaped, seconds
    stderr: str


def spawn(netns: str, argv: list[str], stderr: int) -> int:
    """Fork a child that enters ``netns`` as uid/gid 65534 with no groups,
    then execs ``argv``; its pid."""
    netns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            if _libc.setns(netns_fd, CLONE_NEWNET) != 0:
                os._exit(126)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(stderr, 2)
            for signum in (signal.SIGPIPE, signal.SIGXFSZ):   # as Python left them: ignored
                signal.signal(signum, signal.SIG_DFL)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            os.execve(argv[0], argv, ENV)
        finally:
            os._exit(127)
    os.close(netns_fd)
    return pid


def timed(netns: str, argv: list[str]) -> Finished:
    """Run ``argv`` to its end: wall time until it exits, CPU time of it
    and of every process it left (reaped here, as their subreaper)."""
    with tempfile.TemporaryFile() as err:
        start = time.monotonic()
        pid = spawn(netns, argv, err.fileno())
        _, status, usage = os.wait4(pid, 0)
        wall = time.monotonic() - start
        cpu = usage.ru_utime + usage.ru_stime + reap_all(deadline=5.0)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Finished(os.waitstatus_to_exitcode(status), wall, cpu, text)


def reap_all(deadline: float) -> float:
    """Reap every child left (orphans reparented here); their CPU time."""
    cpu = 0.0
    end = time.monotonic() + deadline
    while True:
        try:
            pid, _status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return cpu
        if pid == 0:
            if time.monotonic() > end:
                raise TimeoutError("a process the run left did not exit")
            time.sleep(0.002)
            continue
        cpu += usage.ru_utime + usage.ru_stime


# -- start-up -------------------------------------------------------------------------------

def startup(netns: str, programs: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {n: {"wall_ms": [], "cpu_ms": []}
                                                 for n in programs}
    for round_ in range(RUNS + 1):          # round 0 warms the caches, not counted
        for name, program in programs.items():
            done = timed(netns, [program, "--config-net", "-q", "--", "/bin/true"])
            if done.status != 0:
                raise RuntimeError(f"{name} exited with {done.status}: {done.stderr}")
            if round_:
                samples[name]["wall_ms"].append(done.wall * 1000)
                samples[name]["cpu_ms"].append(done.cpu * 1000)
    return samples


# -- footprint ------------------------------------------------------------------------------

def memory_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and Uss (private clean + dirty) of ``pid``, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                fields[key] = int(rest.split()[0])
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (this process: the daemons' subreaper)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                    stat = handle.read()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def footprint(netns: str, program: str, options: list[str]) -> dict[str, object]:
    """Start the daemon for a fresh rootless container namespace, wait
    until it serves (its pid file), measure what it left running, end it."""
    null = os.open(os.devnull, os.O_WRONLY)
    holder = spawn(netns, ["/usr/bin/unshare", "--user", "--map-root-user", "--net",
                           "/bin/sleep", "600"], null)
    pidfile = os.path.join(tempfile.mkdtemp(prefix="startup-"), "pid")
    os.chown(os.path.dirname(pidfile), NOBODY, NOBODY)
    try:
        _wait_for_namespace(holder)
        argv = [program, "--config-net", *options, "-P", pidfile,
                "--userns", f"/proc/{holder}/ns/user", "--netns", f"/proc/{holder}/ns/net"]
        with tempfile.TemporaryFile() as err:
            starter = spawn(netns, argv, err.fileno())
            _, status, _ = os.wait4(starter, 0)
            err.seek(0)
            if status != 0:
                raise RuntimeError(f"{argv} failed: {err.read().decode(errors='replace')}")
        _wait_for_pidfile(pidfile)
        time.sleep(SETTLE_SECONDS)
        left = [pid for pid in descendants(os.getpid()) if pid != holder]
        per_process = {str(pid): memory_kib(pid) for pid in left}
        total = {key: sum(m[key] for m in per_process.values()) for key in ("rss", "pss", "uss")}
        return {"processes": len(left), "per_process_kib": per_process, "total_kib": total}
    finally:
        for pid in [p for p in descendants(os.getpid()) if p != holder] + [holder]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reap_all(deadline=5.0)
        os.close(null)
        shutil.rmtree(os.path.dirname(pidfile), ignore_errors=True)


def _wait_for_namespace(holder: int) -> None:
    mine = os.stat("/proc/self/ns/user").st_ino
    end = time.monotonic() + READY_SECONDS
    while os.stat(f"/proc/{holder}/ns/user").st_ino == mine or \
            not os.readlink(f"/proc/{holder}/exe").endswith("sleep"):
        if time.monotonic() > end:
            raise TimeoutError("the container namespace was not made")
        time.sleep(0.005)


def _wait_for_pidfile(path: str) -> None:
    end = time.monotonic() + READY_SECONDS
    while True:
        try:
            with open(path, encoding="ascii") as handle:
                if handle.read().strip():
                    return
        except FileNotFoundError:
            pass
        if time.monotonic() > end:
            raise TimeoutError(f"no pid file {path}")
        time.sleep(0.01)


# -- report -----------------------------------------------------------------------------------

def summary(samples: dict, memory: dict) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for name, series in samples.items():
        figures[name] = {key: statistics.median(values) for key, values in series.items()}
    for case, by_name in memory.items():
        for name, found in by_name.items():
            total = found["total_kib"]
            figures[name][f"{case}_processes"] = found["processes"]
            for key in ("rss", "pss", "uss"):
                figures[name][f"{case}_{key}_mib"] = total[key] / 1024
    return figures


def table(figures: dict[str, dict[str, float]]) -> str:
    names = list(figures)
    reference = figures.get("pasta", {})
    head = f"{'metric':<22}" + "".join(f"{n:>16}" for n in names) + f"{'ratio':>8}"
    lines = [head, "-" * len(head)]
    for key in figures[names[0]]:
        row = f"{key:<22}" + "".join(f"{figures[n].get(key, float('nan')):>16.1f}"
                                     for n in names)
        ours, theirs = figures[names[0]][key], reference.get(key)
        row += f"{ours / theirs:>8.2f}" if theirs else f"{'':>8}"
        lines.append(row)
    return "\n".join(lines)


def targets(figures: dict[str, dict[str, float]]) -> dict[str, dict[str, float | bool]]:
    """The issue's targets: wall <= 1.5x, CPU <= 3x, each footprint case's
    summed Pss <= 1.5x pasta's Rss."""
    ours, ref = figures["passt-sep"], figures["pasta"]
    checks = {"wall": (ours["wall_ms"] / ref["wall_ms"], 1.5),
              "cpu": (ours["cpu_ms"] / ref["cpu_ms"], 3.0)}
    for case in ("default", "podman"):
        if f"{case}_pss_mib" in ours:
            checks[f"{case}_pss_vs_rss"] = (ours[f"{case}_pss_mib"] / ref[f"{case}_rss_mib"], 1.5)
    return {name: {"ratio": round(ratio, 2), "target": limit, "met": ratio <= limit}
            for name, (ratio, limit) in checks.items()}


def main() -> int:
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")
    os.nice(NICE)
    with tempfile.TemporaryDirectory(prefix="passt-sep-startup-", dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)                # the runs are uid 65534's
        return measure(implementations(tmp))


def measure(programs: dict[str, str]) -> int:
    with Topology("st") as topo:
        netns = f"/run/netns/{topo.host}"
        samples = startup(netns, programs)
        memory = {case: {name: footprint(netns, program, options)
                         for name, program in programs.items()}
                  for case, options in (("default", []), ("podman", PODMAN_ARGV))}
    figures = summary(samples, memory)
    print(f"start-up and footprint, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
          f"kernel {platform.release()}, {os.cpu_count()} cpus, load "
          f"{os.getloadavg()[0]:.2f}, median of {RUNS} interleaved runs, uid {NOBODY}, "
          f"nice {NICE}")
    print("ratio = passt-sep / pasta (the current one); memory: sum over the daemon's "
          "processes")
    print(table(figures))
    met = targets(figures)
    for name, check in met.items():
        print(f"target {name}: {check['ratio']:.2f} <= {check['target']}: "
              f"{'met' if check['met'] else 'NOT met'}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", "startup.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.node(),
                   "kernel": platform.release(), "cpus": os.cpu_count(),
                   "load": os.getloadavg()[0], "runs": RUNS, "nice": NICE,
                   "programs": programs,
                   "figures": figures, "targets": met, "samples": samples,
                   "memory": memory}, handle, indent=1)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
