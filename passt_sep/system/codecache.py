"""The methods ``@dataclass`` writes, compiled at install time.

``dataclasses`` makes each class's ``__init__``, ``__repr__``, ``__eq__``,
``__hash__`` and, frozen, ``__setattr__`` and ``__delattr__`` by writing
their source text and compiling it when the class is made: some 300
compilations for the 60 classes a start imports, a fifth of the broker's
imports.  The text depends on the class alone, so it can be compiled
ahead: ``python -m passt_sep.system.codecache FILE`` imports every module
of the package, keeps each text that ``dataclasses`` compiles and writes
the code objects (``marshal``) keyed by that text; ``make install`` runs it.
``install`` (``cli.main``, before the first dataclass) reads them back and
has ``dataclasses`` run the code compiled from the very same text, which
it ``exec``s by that name; a text not in the file (an edited class) is
compiled as before, and a file that is missing, damaged or made by another
interpreter (marshal's format is the interpreter's own) is not used: a
missing cache only costs the time to compile.

``dataclasses`` also imports ``inspect`` (with ast, dis, tokenize and
linecache: a tenth of the broker's imports) for one call, the signature it
writes as the docstring of a class that has none; ``install`` leaves
``inspect`` to load when first used (``DeferredModule``), which no class
with a docstring does.  (The netlink helper defers ``traceback`` so,
which pyroute2 and logging import for their error paths.)
"""

from __future__ import annotations

import importlib
import marshal
import os
import sys
import types
from types import CodeType

MAGIC = b"PSDC"
# dataclasses compiles with exec(text), which names the code "<string>"
FILENAME = "<string>"


class CachedExec:
    """``exec`` for the ``dataclasses`` module: a text found in ``codes``
    runs its precompiled code, any other is compiled (``missed`` counts them)."""

    def __init__(self, codes: dict[str, CodeType]) -> None:
        self.codes = codes
        self.missed = 0

    def __call__(self, source: str, globals: dict | None = None,
                 locals: dict | None = None) -> None:
        code = self.codes.get(source)
        if code is None:
            self.missed += 1
        exec(source if code is None else code, globals, locals)  # noqa: S102


class RecordingExec:
    """``exec`` for ``dataclasses`` at build time: compiles and keeps each text."""

    def __init__(self) -> None:
        self.codes: dict[str, CodeType] = {}

    def __call__(self, source: str, globals: dict | None = None,
                 locals: dict | None = None) -> None:
        code = self.codes.get(source) or compile(source, FILENAME, "exec")
        self.codes[source] = code
        exec(code, globals, locals)  # noqa: S102


def default_path() -> str:
    """Beside the installed seccomp programs, named for this interpreter."""
    return os.path.join(sys.prefix, "share", "passt-sep",
                        f"dataclasses.{sys.implementation.cache_tag}")


def pack(codes: dict[str, CodeType]) -> bytes:
    version = sys.version.encode()
    return MAGIC + len(version).to_bytes(2, "big") + version + marshal.dumps(codes)


def unpack(data: bytes) -> dict[str, CodeType] | None:
    """The code objects in a cache file, or None for a file this
    interpreter did not write or cannot read."""
    version = sys.version.encode()
    header = MAGIC + len(version).to_bytes(2, "big") + version
    if not data.startswith(header):
        return None
    try:
        codes = marshal.loads(data[len(header):])
    except (EOFError, ValueError, TypeError):
        return None
    if not isinstance(codes, dict) or not all(
            isinstance(k, str) and isinstance(v, CodeType) for k, v in codes.items()):
        return None
    return codes


def install(path: str | None = None) -> CachedExec | None:
    """Have ``dataclasses`` use the code compiled at install time, if the
    file is there and this interpreter's; the hook, or None.  Imports
    ``dataclasses``, with ``inspect`` left for later."""
    defer("inspect")
    import dataclasses
    try:
        with open(path or default_path(), "rb") as handle:
            codes = unpack(handle.read())
    except OSError:
        return None
    if codes is None:
        return None
    hook = CachedExec(codes)
    dataclasses.exec = hook       # type: ignore[attr-defined]  # shadows the builtin there
    return hook


class DeferredModule(types.ModuleType):
    """Stands in ``sys.modules`` for a module not imported yet, which is
    imported when one of its attributes is first asked for.  (The stdlib's
    ``importlib.util.LazyLoader`` loads at the next ``import`` statement
    naming the module: the import system reads its ``__spec__``.)"""

    def __getattr__(self, name: str) -> object:   # any name the stand-in lacks
        real = self.__dict__.get("_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = self._real = importlib.import_module(self.__name__)
        return getattr(real, name)


def release() -> None:
    """Every class a start makes is made: ``dataclasses`` compiles again,
    and the cache (a megabyte) is not carried into the processes forked
    next."""
    dataclasses = sys.modules.get("dataclasses")
    if dataclasses is not None and isinstance(vars(dataclasses).get("exec"), CachedExec):
        del dataclasses.exec      # type: ignore[attr-defined]


def defer(name: str) -> None:
    """Module ``name`` imported on first use, not by an ``import``."""
    if name not in sys.modules:
        sys.modules[name] = DeferredModule(name)


def build(modules: list[str]) -> dict[str, CodeType]:
    """Import ``modules`` (none of them imported yet) and return the code
    of every text ``dataclasses`` compiled for them."""
    import dataclasses
    recorder = RecordingExec()
    dataclasses.exec = recorder   # type: ignore[attr-defined]
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        del dataclasses.exec      # type: ignore[attr-defined]
    return recorder.codes


def package_modules() -> list[str]:
    """Every module of the package but ``__main__`` (which would run)."""
    import pkgutil

    import passt_sep
    return [info.name for info in pkgutil.walk_packages(passt_sep.__path__, "passt_sep.")
            if not info.name.endswith(".__main__")]


def main(argv: list[str]) -> int:
    """``python -m passt_sep.system.codecache [FILE]``: write the cache
    (by default where ``install`` looks), whole or not at all."""
    path = argv[0] if argv else default_path()
    codes = build(package_modules())
    partial = f"{path}.partial"
    with open(partial, "wb") as handle:
        handle.write(pack(codes))
    os.replace(partial, path)
    print(f"{path}: {len(codes)} dataclass methods")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
