"""Fixtures of the I/O glue tests (tests/glue.py): a loop and frame sink
per test, closed after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from glue import Rig

from passt_sep import tcp


@pytest.fixture
def rig() -> Iterator[Rig]:
    built = Rig()
    yield built
    built.close()


UNUSUAL_DEFAULTS = {"drop": None, "window_clamp": None, "retransmit": False,
                    "shutdown_write": False, "reset": False, "closed": False, "forget": False}


@pytest.fixture(autouse=True)
def unusual_actions_are_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TcpConn answer of every test, checked as the next input clears
    it: one that sets a field the I/O layer looks at only when ``unusual``
    (tcp.Actions) has ``unusual`` set."""
    clear = tcp.Actions.clear

    def checked(actions: tcp.Actions) -> None:
        unmarked = [name for name, default in UNUSUAL_DEFAULTS.items()
                    if getattr(actions, name) != default and not actions.unusual]
        assert not unmarked, f"Actions sets {unmarked} without unusual"
        clear(actions)

    monkeypatch.setattr(tcp.Actions, "clear", checked)
