"""List the options of a passt(1) man page, one option a line, for
tests/data/passt-2025-01-options.txt.

Each line is the section the option is documented in (``both``, ``passt``
or ``pasta``; an option documented in both mode sections is ``both``)
followed by its names as the page spells them.  Made once with
``python contrib/passt_man_options.py passt.1 > tests/data/passt-2025-01-options.txt``
from the man page of passt 2024_12_11.09478d5-7-g2c174f1 (2025-01).
"""

from __future__ import annotations

import re
import sys

NAME = re.compile(r"\\-(\\-[a-z0-9][a-z0-9-]*|[A-Za-z0-9])(?![A-Za-z0-9-])")


def options(page: str) -> dict[tuple[str, ...], str]:
    found: dict[tuple[str, ...], str] = {}
    section, in_options, depth, lines = "both", False, 0, page.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(".SH"):
            in_options = line.split(None, 1)[1].strip('"') == "OPTIONS"
            continue
        if not in_options:
            continue
        if line.startswith(".SS"):
            section = "passt" if "passt" in line else "pasta" if "pasta" in line else "both"
        depth += line.startswith(".RS") - line.startswith(".RE")
        if line.startswith(".TP") and depth == 0 and index + 1 < len(lines):
            names = tuple("-" + n.replace("\\-", "-") for n in NAME.findall(lines[index + 1]))
            if names:
                previous = found.get(names)
                found[names] = "both" if previous not in (None, section) else section
    return found


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        for names, section in options(handle.read()).items():
            print(section, *names)


if __name__ == "__main__":
    main()
