"""Command-line entry points: ``passt-sep``, ``pasta-sep`` (and a ``pasta``
symlink for Podman).  The mode follows the program name, as with passt."""

from __future__ import annotations

import gc
import os
import sys

from .system import bundle, codecache


def main(argv: list[str] | None = None) -> int:
    gc.disable()    # start-up makes no garbage worth collecting: see Broker._run
    bundle.install()        # the package's modules from one file: see its docstring
    _open_standard_fds()
    argv = sys.argv if argv is None else argv
    prog = os.path.basename(argv[0]) if argv else "passt-sep"
    codecache.install()     # before the first dataclass: see its docstring
    codecache.defer("selectors")    # socket's, for sendfile() alone: 0.5-1 ms
    from .config import ConfigError, ShowText, parse_args
    try:
        config = parse_args(argv[1:], prog)
    except ShowText as shown:
        _show(shown.text)
        return 0
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    from .broker.netlink import NetlinkHelper
    netlink = NetlinkHelper.start(config)   # first: it works while the broker imports
    from .broker.namespaces import prelude
    made = prelude(config)                  # the command's namespaces, as early
    from .broker.main import run
    return run(config, netlink, made)


def _open_standard_fds() -> None:
    """A caller may start us with stdin, stdout or stderr closed (``2>&-``):
    put /dev/null there first, or the first socket or file we open would
    land on that number, where the worker later puts /dev/null."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


def _show(text: str) -> None:
    """Print ``--help`` or ``--version``; a reader that stopped early
    (``| head``) is no error, and the exit's flush must not fail again."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
