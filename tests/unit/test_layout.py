"""The package's layout states its rule: the modules directly under
``passt_sep/`` (the entry point ``cli`` aside) are sans-IO, and what does
I/O lives in ``passt_sep/system/``, ``broker/`` or ``worker/``."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "passt_sep"
IO_CALLS = {("socket", "socket"), ("socket", "socketpair"), ("os", "open"), ("os", "read"),
            ("os", "write"), ("os", "fork"), ("os", "pipe2"), ("os", "close"),
            ("os", "unlink"), ("os", "splice"), ("select", "epoll")}
IO_METHODS = {"recv", "recv_into", "recvfrom", "recvmsg", "send", "sendall", "sendto",
              "sendmsg", "connect", "bind", "listen", "accept", "setsockopt"}
PROTOCOL_MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name not in ("cli.py",))


def _io_in(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] in ("system", "broker", "worker") and node.level:
            found.append(f"line {node.lineno}: imports {node.module}")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id == "open":
                found.append(f"line {node.lineno}: open()")
            continue
        owner = node.func.value
        if isinstance(owner, ast.Name) and (owner.id, node.func.attr) in IO_CALLS:
            found.append(f"line {node.lineno}: {owner.id}.{node.func.attr}()")
        elif node.func.attr in IO_METHODS:
            found.append(f"line {node.lineno}: .{node.func.attr}()")
    return found


@pytest.mark.parametrize("path", PROTOCOL_MODULES, ids=lambda p: p.name)
def test_protocol_modules_do_no_io(path: pathlib.Path) -> None:
    assert _io_in(path) == []


def test_the_check_sees_io() -> None:
    """The rule above would see a module that does I/O: the ones that do."""
    assert _io_in(PACKAGE / "system" / "fdpass.py")
    assert _io_in(PACKAGE / "worker" / "tcp_io.py")
