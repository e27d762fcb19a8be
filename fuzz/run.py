"""Run the atheris fuzz targets, bounded, and report per target the inputs
executed and the crashes found.

    python fuzz/run.py --seconds 60            # every target, 60 s each
    python fuzz/run.py --runs 100000 tcp dhcp  # two targets, 100000 inputs each

Each target runs in a process of its own (libFuzzer runs once per process),
``--jobs`` at a time, starting from its seed corpus ``tests/corpus/<name>/``
(read only: new inputs go to ``fuzz/out/<name>/corpus/``).  A crash is an
exception the target's ``check`` lets out: the first input of each distinct
signature is saved as ``fuzz/out/<name>/crash-*`` with its traceback beside
it (``.txt``), and fuzzing goes on.  A crash whose signature is that of a
known bug, a ``crash-*`` file kept in ``tests/corpus/<name>/``, is reported
as known; the exit status is 1 when a new crash was found (or a target
failed to run), else 0.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a script: python fuzz/run.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from fuzz.targets import TARGETS, load, path  # noqa: E402

CRASH_LINE = re.compile(r"^FUZZ-CRASH (\S+) (.+) -> (\S+)$")
DONE_LINE = re.compile(r"^Done (\d+) runs in (\d+) second")
STAT_LINE = re.compile(r"^stat::number_of_executed_units: (\d+)")
PROGRESS_LINE = re.compile(r"^#(\d+)\s")


@dataclass
class Result:
    name: str
    runs: int = 0
    seconds: float = 0.0
    crashes: list[tuple[str, str]] = field(default_factory=list)   # (signature, file)
    known: set[str] = field(default_factory=set)
    failed: str | None = None          # the target itself did not run to its end

    @property
    def new(self) -> list[tuple[str, str]]:
        return [(sig, where) for sig, where in self.crashes if sig not in self.known]


def known_signatures(name: str) -> set[str]:
    """The signatures of the crash inputs kept in the seed corpus."""
    module = load(name)
    known = set()
    for _, data in common.load_corpus(name, crashes=True):
        try:
            module.check(data)
        except Exception as exc:
            known.add(common.signature(exc))
    return known


def run_target(name: str, seconds: float | None, runs: int | None, max_len: int) -> Result:
    result = Result(name, known=known_signatures(name))
    out = os.path.join(common.OUT, name)
    work = os.path.join(out, "corpus")
    os.makedirs(work, exist_ok=True)
    args = [sys.executable, path(name), work, common.corpus_dir(name),
            f"-artifact_prefix={out}{os.sep}", f"-max_len={max_len}", "-timeout=10",
            "-rss_limit_mb=2048", "-print_final_stats=1"]
    if seconds is not None:
        args.append(f"-max_total_time={max(1, int(seconds))}")
    if runs is not None:
        args.append(f"-runs={runs}")
    log_path = os.path.join(out, "log.txt")
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        proc = subprocess.run(args, cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT,
                              timeout=(seconds or 0) + 600)
    result.seconds = time.monotonic() - start
    with open(log_path, encoding="utf-8", errors="replace") as log:
        lines = log.read().splitlines()
    progress = 0
    for line in lines:
        if match := CRASH_LINE.match(line):
            result.crashes.append((match.group(2), match.group(3)))
        elif match := DONE_LINE.match(line):
            result.runs = int(match.group(1))
        elif match := STAT_LINE.match(line):
            result.runs = max(result.runs, int(match.group(1)))
        elif match := PROGRESS_LINE.match(line):
            progress = int(match.group(1))
    result.runs = result.runs or progress
    if proc.returncode != 0:
        # libFuzzer stopped on its own: a deadly signal, a timeout, out of memory
        result.failed = f"exit status {proc.returncode}, see {os.path.relpath(log_path)}"
        result.crashes.append((f"libFuzzer stop ({proc.returncode})", log_path))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"default: all ({', '.join(TARGETS)})")
    parser.add_argument("--seconds", type=float, help="time per target (default: 60)")
    parser.add_argument("--runs", type=int, help="inputs per target")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="targets fuzzed at once (default: the number of CPUs)")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input, in bytes")
    args = parser.parse_args(argv)
    names = args.targets or list(TARGETS)
    for name in names:
        if name not in TARGETS:
            parser.error(f"no target {name!r}; have: {', '.join(TARGETS)}")
    seconds = args.seconds if args.seconds is not None or args.runs else 60.0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda n: run_target(n, seconds, args.runs, args.max_len),
                                names))
    print(f"{'target':10} {'inputs':>10} {'seconds':>8} {'crashes':>7} {'new':>4}")
    for result in results:
        print(f"{result.name:10} {result.runs:>10} {result.seconds:>8.1f} "
              f"{len(result.crashes):>7} {len(result.new):>4}")
        for sig, where in result.crashes:
            tag = "known" if sig in result.known else "NEW"
            print(f"    {tag}: {sig}: {os.path.relpath(where, common.ROOT)}")
    total_new = sum(len(r.new) for r in results)
    total = sum(len(r.crashes) for r in results)
    print(f"total: {sum(r.runs for r in results)} inputs, {total} crashes, {total_new} new")
    return 1 if total_new or any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
