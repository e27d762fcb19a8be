"""Write the seed corpus of every fuzz target: ``tests/corpus/<name>/seed-<label>``,
built by each target's ``seeds()`` with the project's own builders.

    python fuzz/make_corpus.py          # all targets
    python fuzz/make_corpus.py --check  # exit 1 if the checked-in corpus is stale

Stale ``seed-*`` files are removed; ``crash-*`` files (inputs that once
crashed a parser, kept as regression tests) are left alone.  Every seed is
run through its target's ``check`` first: a seed must be a valid input.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/make_corpus.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from fuzz.targets import TARGETS, load  # noqa: E402


def build(name: str) -> dict[str, bytes]:
    module = load(name)
    files = {}
    for label, data in module.seeds():
        module.check(data)
        files[f"seed-{label}"] = data
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare with the checked-in corpus")
    parser.add_argument("targets", nargs="*", default=list(TARGETS))
    args = parser.parse_args(argv)
    stale = 0
    for name in args.targets:
        files = build(name)
        directory = common.corpus_dir(name)
        present = {entry for entry in os.listdir(directory)
                   if entry.startswith("seed-")} if os.path.isdir(directory) else set()
        for entry, data in files.items():
            path = os.path.join(directory, entry)
            current = open(path, "rb").read() if entry in present else None
            if current == data:
                continue
            stale += 1
            if not args.check:
                os.makedirs(directory, exist_ok=True)
                with open(path, "wb") as handle:
                    handle.write(data)
        for entry in present - set(files):
            stale += 1
            if not args.check:
                os.remove(os.path.join(directory, entry))
        print(f"{name:10} {len(files)} seeds")
    if args.check and stale:
        print(f"{stale} corpus files differ: run python fuzz/make_corpus.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
