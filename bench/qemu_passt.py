"""passt mode with a QEMU guest: guest <-> remote TCP throughput through
passt-sep and through distro passt (/usr/bin/passt) on the stream socket,
and through passt-sep and the reference current passt
(BENCH_PASTA_CURRENT, its passt binary) in vhost-user mode, same guest, same topology; and
the CPU time the back-end spent per gigabyte moved (passt-sep: broker and
worker together, the broker only waits).

The guest is the QEMU test's (tests/qemu_guest.py): Debian's kernel and a
busybox initramfs, no iperf3, so the guest times its own transfers of
BENCH_QEMU_MIB MiB with busybox nc against tests/peers.py's source and sink
in the "remote" namespace (the guest's uptime around each).  Under TCG the
figures are low: the ratio is what counts.  Run by bench/run.py; alone:
``python bench/qemu_passt.py``.  To compare two builds in one run (the VM's
speed drifts between runs): BENCH_QEMU_BASELINE, another .venv whose passt-sep
runs too in vhost-user mode ("base-vhost"), and BENCH_QEMU_ONLY, the names
to run (comma-separated); each round takes them in a rotated order.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import qemu_guest  # noqa: E402

from topology import Topology  # noqa: E402

VENV = os.environ.get("PASST_SEP_VENV") or sys.prefix
PASST_SEP = os.path.join(VENV, "bin", "passt-sep")
MIB = int(os.environ.get("BENCH_QEMU_MIB", "64"))
GUEST_TIMEOUT = 600
REFERENCE = os.environ.get("BENCH_PASTA_CURRENT", "")   # the current upstream build
BASELINE = os.environ.get("BENCH_QEMU_BASELINE", "")    # another build's .venv
ONLY = [name for name in os.environ.get("BENCH_QEMU_ONLY", "").split(",") if name]
CLK_TCK = os.sysconf("SC_CLK_TCK")
# remote -> guest, then guest -> remote (the guest makes the file first)
CHECKS = "benchdown,benchup"


def backends() -> dict[str, tuple[str, bool]]:
    """name -> (binary, vhost-user) of what is installed (passt: `make bench`
    installs it)."""
    found = {"passt-sep": (PASST_SEP, False), "sep-vhost": (PASST_SEP, True)}
    if shutil.which("passt"):
        found["passt"] = (shutil.which("passt") or "passt", False)
    if os.access(REFERENCE, os.X_OK):
        found["ref-vhost"] = (REFERENCE, True)
    baseline = os.path.join(BASELINE, "bin", "passt-sep")
    if BASELINE and os.access(baseline, os.X_OK):
        found["base-vhost"] = (baseline, True)
    return {name: found[name] for name in ONLY if name in found} if ONLY else found


def tree_cpu_seconds(pid: int) -> float:
    """User and system time of ``pid`` and its descendants so far."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += [child for child, parent in parents.items() if parent == current]
    return total


def available() -> str | None:
    """Why this benchmark cannot run here, or None."""
    if qemu_guest.find_kernel() is None or shutil.which(qemu_guest.QEMU) is None:
        return "no QEMU or guest kernel (make install)"
    return None


def one_run(topo: Topology, image: qemu_guest.GuestImage, binary: str, vhost: bool,
            workdir: str) -> dict[str, float]:
    """Mbit/s both ways for one guest booted on ``binary`` (one-off, as
    libvirt runs it; ``vhost``: in vhost-user mode), 0 for a transfer that
    came out wrong, and the back-end's CPU seconds per GB moved."""
    size = MIB << 20
    params = qemu_guest.check_params(CHECKS, size)
    cpu = {"start": 0.0, "end": 0.0}

    def attempt(accel: str) -> qemu_guest.GuestRun:
        socket_path = os.path.join(workdir, "passt.socket")
        if os.path.exists(socket_path):  # the last run's: not to be waited for
            os.unlink(socket_path)
        mode = ["--vhost-user"] if vhost else []
        daemon = topo.spawn_host(binary, "-f", "-q", "-1", *mode, "-s", socket_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        qemu_guest.wait_for_socket(socket_path, daemon)
        build = qemu_guest.qemu_vhost_user_command if vhost else qemu_guest.qemu_command
        command = build(image, accel, socket_path, params)
        # from the guest's lease (start-up and DHCP left out) to its last
        # check (a one-off back-end is gone once the guest powers off)
        samples = {"mtu": lambda _: cpu.update(start=tree_cpu_seconds(daemon.pid)),
                   "done": lambda _: cpu.update(end=tree_cpu_seconds(daemon.pid))}
        run = qemu_guest.run_guest(topo.spawn_host, command, os.path.join(workdir, "console"),
                                   qemu_guest.BOOT_TIMEOUT[accel], GUEST_TIMEOUT,
                                   on_result=samples)
        daemon.kill()
        daemon.wait()
        return run

    run = qemu_guest.boot(attempt)
    results = run.results
    if "done" not in results:
        raise RuntimeError(f"{binary}: the guest did not finish{run.describe()}")
    mbit = size * 8 / 1e6
    down = mbit / run.seconds("benchdown") if results.get("bench-down") == str(size) else 0.0
    digest, got, start, end = (results.get("bench-up", "").split() + ["", "", "0", "0"])[:4]
    up_ok = f"{digest} {got}" == results.get("tcp-up-sent") and got == str(size)
    return {"qemu_tcp_in_mbps": down,
            "qemu_tcp_out_mbps": mbit / (float(end) - float(start)) if up_ok else 0.0,
            "cpu_s_per_gb": (cpu["end"] - cpu["start"]) / (2 * size / 1e9)}


def measure(rounds: int) -> dict[str, dict[str, float]]:
    """name -> metric -> median over ``rounds`` guests each."""
    samples = measure_samples(rounds)
    return {n: {k: statistics.median(v) for k, v in m.items()} for n, m in samples.items()}


def measure_samples(rounds: int) -> dict[str, dict[str, list[float]]]:
    """name -> metric -> the figure of each of ``rounds`` guests."""
    samples: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="passt-sep-bench-qemu-") as workdir, \
            Topology("bq") as topo:
        os.chmod(workdir, 0o777)  # both passts drop to nobody and make their socket here
        image = qemu_guest.prepare_image(workdir)
        qemu_guest.start_remote_peers(topo)
        for number in range(rounds):
            chosen = list(backends().items())
            for name, (binary, vhost) in chosen[number % len(chosen):] + \
                    chosen[:number % len(chosen)]:
                for key, value in one_run(topo, image, binary, vhost, workdir).items():
                    samples.setdefault(name, {}).setdefault(key, []).append(value)
    return samples


if __name__ == "__main__":
    every = measure_samples(int(os.environ.get("BENCH_ROUNDS", "3")))
    print(every)
    print({n: {k: statistics.median(v) for k, v in m.items()} for n, m in every.items()})
