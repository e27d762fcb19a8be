"""Command-line entry points: ``passt-sep``, ``pasta-sep`` (and a ``pasta``
symlink for Podman).  The mode follows the program name, as with passt."""

from __future__ import annotations

import os
import sys

from .config import ConfigError, ShowText, parse_args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    prog = os.path.basename(argv[0]) if argv else "passt-sep"
    try:
        config = parse_args(argv[1:], prog)
    except ShowText as shown:
        print(shown.text)
        return 0
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    from .broker.netlink import NetlinkHelper  # after parsing: --help stays fast
    netlink = NetlinkHelper.start(config)       # imports pyroute2 while we go on
    from .broker.main import run
    return run(config, netlink)


if __name__ == "__main__":
    sys.exit(main())
