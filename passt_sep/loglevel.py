"""Log levels, as syslog numbers them, and which one the options select:
shared by the handoff (the worker's level travels in it) and the logger
(``system/log.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

ERROR, WARNING, INFO, DEBUG, TRACE = 3, 4, 6, 7, 8


def level_for(config: Config) -> int:
    """The most verbose level ``-q``, ``-d`` and ``--trace`` let through."""
    if config.trace:
        return TRACE
    if config.debug:
        return DEBUG
    return WARNING if config.quiet else INFO
