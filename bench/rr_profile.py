"""Where a 1-byte TCP request/response's time goes: passt-sep's worker
beside the current upstream pasta (else the distro's), per exchange
through pasta mode (bench/run.py's topology, echo server and client).

Run as root from the checkout, after ``make install``::

    BENCH_PASTA_CURRENT=/path/to/passt .venv/bin/python bench/rr_profile.py \\
        [--exchanges N] [--rounds R] [--mtu 65520 --mtu 1500] [--family 4 --family 6]

For each round, MTU, family and implementation, one connection from the
namespace to the remote's echo server, gated after its warm-up, and three
passes of N exchanges each, the translator process measured around them:

1. timing: the client's wall median and p99 (as run.py measures them); the
   translator's CPU per exchange from /proc (schedstat's nanoseconds,
   split user/system in the proportion of stat's utime/stime), the time
   it waited for a CPU while runnable, its context switches;
2. counts: syscalls per exchange (``strace -c -f``; strace slows every
   syscall, so no time is taken from this pass);
3. perf (when ``perf`` works): ``perf stat`` task-clock, context switches
   and migrations, and ``perf record -e cpu-clock`` samples split by
   where they fell: the kernel, the interpreter (python), libc, others
   (sampling inflates the absolute figures: take the shares);
4. path (perf too): the syscall tracepoints of the client and the
   translator, cut into the exchange's critical path, medians in us:
   to_wake (the client's send until the translator's epoll_wait returns),
   request (from there until it sends to the socket), echo (until its
   epoll_wait returns with the answer), response (until its writev of it
   to the tap begins), deliver (until the client's recv returns); path is
   the median of their sums; post_send the translator's work after its
   send to the socket until it waits again (off the path while the echo
   is slower); idle% the exchanges whose request found it asleep in
   epoll_wait (else still busy with the previous one); traced the
   exchanges that showed every step.  Only the syscalls that mark the
   steps are recorded (a filter in the kernel drops the others), the same
   nine events an exchange in both; each still costs a few microseconds in a
   VM, so these absolute figures run high.

passt-sep's translator is its worker (the pid file names it); pasta's is
pasta.  The ratio rows are passt-sep / pasta; the summary gives each
figure's median and range over the rounds.  Not a test: nothing asserts.
The bytecodes behind the user time: bench/rr_count.py.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/run.py: topology, implementations, client)

from topology import REMOTE_ADDR4, REMOTE_ADDR6, Topology  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
FAMILIES = {4: REMOTE_ADDR4, 6: REMOTE_ADDR6}
COLUMNS = ("wall_med", "wall_p99", "cpu", "user", "sys", "wait", "ctxsw", "syscalls",
           "kernel%", "python%")
# the critical path of an exchange, from syscall tracepoints (pass 4)
PATH_COLUMNS = ("to_wake", "request", "echo", "response", "deliver", "path", "post_send",
                "idle%", "traced")
# x86_64 syscall numbers: the client's send and receive, the translator's
# wait, its send to the socket (sendto, sendmsg) and its write to the tap
SENDTO, RECVFROM, SENDMSG, WRITEV, EPOLL_WAIT, EPOLL_PWAIT = 44, 45, 46, 20, 232, 281
WIDTH = 10


def task_times(pid: int) -> tuple[float, float, float, float, int]:
    """Seconds on a CPU (schedstat), user and system ticks (stat), seconds
    runnable but waiting (schedstat), context switches: summed over the
    process's threads."""
    cpu = user = system = wait = switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        with open(f"{base}/schedstat", encoding="ascii") as handle:
            ran, waited, _ = handle.read().split()
        with open(f"{base}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open(f"{base}/status", encoding="ascii") as handle:
            switches += sum(int(line.split()[1]) for line in handle
                            if line.split(":")[0].endswith("ctxt_switches"))
        cpu += int(ran)
        wait += int(waited)
        user += int(fields[11])
        system += int(fields[12])
    return cpu / 1e9, user / TICK, system / TICK, wait / 1e9, switches


class Client:
    """The gated request/response client in ``served``'s namespace,
    connected and warmed up."""

    def __init__(self, served: run.Served, remote: str, exchanges: int) -> None:
        self.proc = subprocess.Popen(
            served.cmd(sys.executable, "-c", run.rr_client(remote, exchanges, gated=True)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"{served.name}: the client did not connect")

    def go(self) -> tuple[float, float]:
        """Runs the exchanges; their median and p99 microseconds."""
        out, _ = self.proc.communicate("go\n", timeout=600)
        return run.rr_figures(out)


def timing(served: run.Served, remote: str, n: int) -> dict[str, float]:
    """Pass 1: the wall and the translator's CPU, per exchange."""
    pid = served.pid()
    client = Client(served, remote, n)
    before = task_times(pid)
    median, p99 = client.go()
    cpu, user, system, wait, switches = (b - a for a, b in zip(before, task_times(pid),
                                                               strict=True))
    user_share = user / (user + system) if user + system else float("nan")
    return {"wall_med": median, "wall_p99": p99, "cpu": cpu / n * 1e6,
            "user": cpu * user_share / n * 1e6, "sys": cpu * (1 - user_share) / n * 1e6,
            "wait": wait / n * 1e6, "ctxsw": switches / n}


def traced(pid: int) -> bool:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in handle)


def syscall_counts(served: run.Served, remote: str, n: int,
                   tmp: str) -> tuple[float, dict[str, float]]:
    """Pass 2: syscalls per exchange, in all and by name."""
    pid, out = served.pid(), os.path.join(tmp, "strace")
    client = Client(served, remote, n)
    strace = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", out, "-p", str(pid)],
                              stderr=subprocess.DEVNULL)
    for _ in range(200):
        if traced(pid):
            break
        time.sleep(0.01)
    client.go()
    strace.send_signal(signal.SIGINT)
    strace.wait(timeout=30)
    by_name: dict[str, float] = {}
    with open(out, encoding="ascii") as handle:
        for line in handle:
            words = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(words) in (5, 6) and words[3].isdigit() and words[-1] != "total":
                by_name[words[-1]] = int(words[3]) / n
    return sum(by_name.values()), by_name


def perf_works() -> bool:
    """perf is installed and can count here (it may not match the kernel)."""
    return bool(shutil.which("perf")) and subprocess.run(
        ["perf", "stat", "-e", "task-clock", "true"], capture_output=True).returncode == 0


def load_average() -> str:
    with open("/proc/loadavg", encoding="ascii") as handle:
        return " ".join(handle.read().split()[:3])


def perf_profile(served: run.Served, remote: str, n: int, tmp: str) -> dict[str, float]:
    """Pass 3: perf stat's figures per exchange and the share of cpu-clock
    samples in the kernel and in the interpreter."""
    pid, data, stat = served.pid(), os.path.join(tmp, "perf.data"), os.path.join(tmp, "stat")
    client = Client(served, remote, n)
    perfs = [subprocess.Popen(["perf", "stat", "-x,", "-o", stat, "-e",
                               "task-clock,context-switches,cpu-migrations", "-p", str(pid)],
                              stderr=subprocess.DEVNULL),
             subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-o",
                               data, "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(0.5)                 # attached (an idle translator is not charged meanwhile)
    client.go()
    for perf in perfs:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
    figures = {}
    with open(stat, encoding="ascii") as handle:
        for line in handle:
            fields = line.split(",")
            if len(fields) > 2 and fields[0].replace(".", "").isdigit():
                figures[f"perf_{fields[2]}"] = float(fields[0]) / n * (
                    1e3 if fields[2] == "task-clock" else 1)   # task-clock: ms -> us
    figures.update(sample_shares(data))
    return figures


def sample_shares(data: str) -> dict[str, float]:
    """Percent of the samples in the kernel, in python (the interpreter,
    libpython), in libc, elsewhere."""
    report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "dso"],
                            capture_output=True, text=True).stdout
    shares = {"kernel%": 0.0, "python%": 0.0, "libc%": 0.0, "other%": 0.0}
    for line in report.splitlines():
        words = line.split()
        if len(words) != 2 or not words[0].endswith("%"):
            continue
        percent, dso = float(words[0].rstrip("%")), words[1]
        key = ("kernel%" if "kernel" in dso else "python%" if "python" in dso
               else "libc%" if dso.startswith("libc") else "other%")
        shares[key] += percent
    return shares


def critical_path(served: run.Served, remote: str, n: int, tmp: str) -> dict[str, float]:
    """Pass 4: the exchange's critical path, medians in microseconds."""
    pid, data = served.pid(), os.path.join(tmp, "path.data")
    client = Client(served, remote, n)
    mine, theirs = f"common_pid == {pid}", f"common_pid == {client.proc.pid}"
    enters = (f"({theirs} && id == {SENDTO}) || ({mine} && (id == {SENDTO} || "
              f"id == {SENDMSG} || id == {WRITEV} || id == {EPOLL_WAIT} || id == {EPOLL_PWAIT}))")
    exits = (f"({theirs} && id == {RECVFROM}) || ({mine} && (id == {EPOLL_WAIT} || "
             f"id == {EPOLL_PWAIT}))")
    record = subprocess.Popen(["perf", "record", "-q", "-e", "raw_syscalls:sys_enter",
                               "--filter", enters, "-e", "raw_syscalls:sys_exit", "--filter",
                               exits, "-o", data, "-p", f"{pid},{client.proc.pid}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    client.go()
    record.send_signal(signal.SIGINT)
    record.wait(timeout=60)
    script = subprocess.run(["perf", "script", "-i", data, "--ns", "-F", "pid,time,event,trace"],
                            capture_output=True, text=True).stdout
    cutter = PathCutter()
    for line in script.splitlines():
        # "<pid> <seconds>: raw_syscalls:sys_enter: NR <nr> (...)"
        words = line.split()
        if len(words) >= 5 and words[3] == "NR":
            side = cutter.translator if int(words[0]) == pid else cutter.client
            side(float(words[1].rstrip(":")), words[2].endswith("enter:"), int(words[4]))
    return cutter.figures()


class PathCutter:
    """Cuts the syscall events of a client and a translator into each
    exchange's critical path (see pass 4 in the module's docstring)."""

    def __init__(self) -> None:
        self.segments: dict[str, list[float]] = {c: [] for c in (*PATH_COLUMNS[:6],
                                                                 "post_send", "idle%")}
        self.start: float | None = None
        self.marks: list[float] = []
        self.waits: list[float] = []        # the translator's epoll_wait entries meanwhile
        self.last_wait = 0.0

    def client(self, at: float, enter: bool, nr: int) -> None:
        if enter and nr == SENDTO:
            self.start, self.marks, self.waits = at, [], []
        elif not enter and nr == RECVFROM and self.start is not None and len(self.marks) == 4:
            times = [self.start, *self.marks, at]
            for column, (a, b) in zip(PATH_COLUMNS[:5], itertools.pairwise(times), strict=True):
                self.segments[column].append((b - a) * 1e6)
            self.segments["path"].append((at - self.start) * 1e6)
            after_send = [w for w in self.waits if w > self.marks[1]]
            if after_send:
                self.segments["post_send"].append((after_send[0] - self.marks[1]) * 1e6)
            self.start = None

    def translator(self, at: float, enter: bool, nr: int) -> None:
        waits = nr in (EPOLL_WAIT, EPOLL_PWAIT)
        if enter and waits:
            self.last_wait = at
            self.waits.append(at)
        if self.start is None:
            return
        step = len(self.marks)
        if step in (0, 2) and waits and not enter:
            if step == 0:       # was it asleep when the request came, or still busy?
                self.segments["idle%"].append(100.0 * (self.last_wait < self.start))
            self.marks.append(at)
        elif step == 1 and enter and nr in (SENDTO, SENDMSG):
            self.marks.append(at)
        elif step >= 3 and enter and nr == WRITEV:
            self.marks[3:] = [at]        # the last write to the tap before the client's recv

    def figures(self) -> dict[str, float]:
        """Medians (idle%: the mean) of the exchanges that showed every step."""
        found = {c: statistics.median(v) if v else float("nan")
                 for c, v in self.segments.items()}
        idle = self.segments["idle%"]
        found["idle%"] = statistics.fmean(idle) if idle else float("nan")
        found["traced"] = len(self.segments["path"])
        return found


def kernel_symbols(data: str, top: int = 12) -> list[str]:
    """The kernel functions with the most samples in a perf.data."""
    report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "sym",
                             "--dsos", "[kernel.kallsyms]", "--percentage", "absolute"],
                            capture_output=True, text=True).stdout
    return [line.strip() for line in report.splitlines()
            if line.strip() and not line.startswith("#")][:top]


def fmt(value: float) -> str:
    return f"{value:>{WIDTH}.2f}" if value == value else f"{'-':>{WIDTH}}"


def show(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    names = list(rows)
    ours, theirs = rows[names[0]], rows[names[1]]
    for columns in (COLUMNS, PATH_COLUMNS):
        print(f"{'':<16}" + "".join(f"{c:>{WIDTH}}" for c in columns))
        for name in names:
            print(f"{name:<16}" + "".join(fmt(rows[name].get(c, float("nan")))
                                          for c in columns))
        print(f"{'ratio':<16}" + "".join(
            fmt(ours.get(c, float("nan")) / theirs[c] if theirs.get(c) else float("nan"))
            for c in columns))


def profile(topo: Topology, name: str, mtu: int, families: list[int], n: int,
            tmp: str, detail: bool, perf: bool) -> dict[int, dict[str, float]]:
    """Every pass through ``name`` at ``mtu``, per family; with ``detail``,
    the syscalls by name and the kernel's top functions too."""
    served = run.Served(topo, name, mtu)
    try:
        found = {}
        for family in families:
            remote = FAMILIES[family]
            figures = timing(served, remote, n)
            if shutil.which("strace"):
                figures["syscalls"], by_name = syscall_counts(served, remote, n, tmp)
                if detail:
                    print(f"{name} mtu {mtu} IPv{family}, syscalls per exchange: " + ", ".join(
                        f"{call} {count:.2f}" for call, count in
                        sorted(by_name.items(), key=lambda item: -item[1]) if count >= 0.01))
            if perf:
                figures.update(perf_profile(served, remote, n, tmp))
                figures.update(critical_path(served, remote, n, tmp))
                if detail:
                    print(f"{name} mtu {mtu} IPv{family}, kernel functions (% of all samples):")
                    for line in kernel_symbols(os.path.join(tmp, "perf.data")):
                        print(f"    {line}")
            found[family] = figures
        return found
    finally:
        served.close()


def summary(results: dict[tuple[int, int], list[dict[str, dict[str, float]]]]) -> None:
    """Each figure's median over the rounds, and its range in brackets."""
    print("\nsummary: median [min-max] over the rounds, per exchange")
    for (mtu, family), rounds in results.items():
        print(f"\nmtu {mtu} IPv{family}")
        names = list(rounds[0])
        for column in (*COLUMNS, *PATH_COLUMNS, "perf_task-clock", "perf_context-switches",
                       "perf_cpu-migrations", "libc%", "other%"):
            cells = []
            for name in [*names, "ratio"]:
                values = [
                    (r[names[0]].get(column, float("nan")) / r[names[1]][column]
                     if r[names[1]].get(column) else float("nan")) if name == "ratio"
                    else r[name].get(column, float("nan")) for r in rounds]
                values = [v for v in values if v == v]
                cells.append(f"{statistics.median(values):.2f} [{min(values):.2f}-"
                             f"{max(values):.2f}]" if values else "-")
            print(f"  {column:<22}" + "".join(f"{cell:>24}" for cell in cells))
        print(f"  {'':<22}" + "".join(f"{name:>24}" for name in [*names, "ratio"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mtu", type=int, action="append", choices=(65520, 1500))
    parser.add_argument("--family", type=int, action="append", choices=(4, 6))
    args = parser.parse_args()
    mtus, families = args.mtu or [65520, 1500], args.family or [4, 6]
    with tempfile.TemporaryDirectory(prefix="passt-sep-rr-profile-") as tmp:
        run.find_pastas(tmp)
        peer = next((name for name in (run.PASTA_CURRENT_NAME, "pasta") if name in run.PASTAS),
                    None)
        if peer is None:
            print("rr_profile: skipped, no pasta (BENCH_PASTA_CURRENT names upstream passt)")
            return 0
        names, perf = ["passt-sep", peer], perf_works()
        print(f"rr_profile: {args.exchanges} exchanges a pass, {args.rounds} rounds; per "
              "exchange: wall_med/p99 and cpu/user/sys/wait in us (wait: runnable, no CPU), "
              "ctxsw and syscalls in counts, kernel%/python% of the translator's cpu-clock "
              "samples; strace" + ("" if shutil.which("strace") else " missing") + ", perf "
              + ("works" if perf else "unusable"))
        results: dict[tuple[int, int], list[dict[str, dict[str, float]]]] = {
            (mtu, family): [] for mtu in mtus for family in families}
        with Topology("rrprof") as topo:
            topo.spawn_remote(sys.executable, "-c", run.ECHO_SERVER)
            topo.wait_listening(7001)
            for number in range(args.rounds):
                for mtu in mtus:
                    rows = {name: profile(topo, name, mtu, families, args.exchanges, tmp,
                                          detail=number == 0, perf=perf) for name in names}
                    for family in families:
                        by_name = {name: rows[name][family] for name in names}
                        results[(mtu, family)].append(by_name)
                        show(f"round {number + 1}, mtu {mtu} IPv{family} "
                             f"(load {load_average()})", by_name)
        summary(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
