"""Fixtures of the I/O glue tests (tests/glue.py): a loop and frame sink
per test, closed after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from glue import Rig


@pytest.fixture
def rig() -> Iterator[Rig]:
    built = Rig()
    yield built
    built.close()
