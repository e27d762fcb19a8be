"""Command-line entry points: ``passt-sep``, ``pasta-sep`` (and a ``pasta``
symlink for Podman).  The mode follows the program name, as with passt."""

from __future__ import annotations

import os
import sys

from .broker.netlink import NetlinkHelper


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    prog = os.path.basename(argv[0]) if argv else "passt-sep"
    netlink = NetlinkHelper.start(argv[1:], prog)   # before any other import: see its docstring
    from .config import ConfigError, ShowText, parse_args
    try:
        config = parse_args(argv[1:], prog)
    except ShowText as shown:
        netlink.close(kill=True)
        _show(shown.text)
        return 0
    except ConfigError as exc:
        netlink.close(kill=True)
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    from .broker.main import run
    return run(config, netlink)


def _show(text: str) -> None:
    """Print ``--help`` or ``--version``; a reader that stopped early
    (``| head``) is no error, and the exit's flush must not fail again."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
