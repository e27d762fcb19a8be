"""The fuzz targets, by name: ``fuzz/fuzz_<name>.py``."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = tuple(sorted(entry[len("fuzz_"):-len(".py")] for entry in os.listdir(HERE)
                       if entry.startswith("fuzz_") and entry.endswith(".py")))


def load(name: str) -> ModuleType:
    """The target module (importable without atheris)."""
    if name not in TARGETS:
        raise KeyError(f"no fuzz target {name!r} (have: {', '.join(TARGETS)})")
    return importlib.import_module(f"fuzz.fuzz_{name}")


def path(name: str) -> str:
    return os.path.join(HERE, f"fuzz_{name}.py")
