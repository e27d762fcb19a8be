"""The package's compiled modules in one file, written at install time.

A start imports some 60 modules of this package, and for each the import
system asks four finders, stats the directory, the source and the
``.pyc``, opens, reads and closes it and checks its header: some 40-60 us
of importlib's own work a module, before the code is unmarshalled and
run, all of it on the broker's critical path.  ``python -m
passt_sep.system.bundle`` (``make install``) compiles every module of the
installed package into one file, beside the seccomp programs, with each
source's size and modification time; ``install`` (``cli.main``, first)
reads it and puts a finder first in ``sys.meta_path`` that serves this
package's modules from it, with the same ``__file__``, ``__path__`` and
``__spec__`` as the import system would give them.  A module whose source
changed since (its size or time differs), or the package imported from
elsewhere (a checkout), or a file missing, damaged or written by another
interpreter: the import system as usual.  ``release`` (``broker.main``,
after the last import) takes the finder out and frees the file's bytes
(one block: freeing it writes no page a fork shares).
"""

from __future__ import annotations

import marshal
import os
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType

MAGIC = b"PSMB"
PACKAGE = "passt_sep"
_LENGTH = 4


class BundleFinder:
    """Finder and loader of this package's modules from the bundle's bytes."""

    def __init__(self, root: str, index: dict[str, tuple], data: memoryview) -> None:
        self.root = root        # the directory holding the package
        self.index = index      # name -> (is package, path, mtime_ns, size, offset, length)
        self.data = data

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        entry = self.index.get(name)
        if entry is None:
            return None
        is_package, relative, mtime_ns, size, offset, length = entry
        origin = os.path.join(self.root, relative)
        try:
            found = os.stat(origin)
        except OSError:
            return None
        if (found.st_mtime_ns, found.st_size) != (mtime_ns, size):
            return None         # edited since install: compiled as usual
        spec = ModuleSpec(name, self, origin=origin, is_package=is_package)
        if is_package:
            spec.submodule_search_locations = [os.path.dirname(origin)]
        spec.has_location = True        # so the module gets its __file__
        spec.loader_state = (offset, length)
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        return None             # the default module object

    def exec_module(self, module: ModuleType) -> None:
        offset, length = module.__spec__.loader_state
        exec(marshal.loads(self.data[offset:offset + length]), module.__dict__)  # noqa: S102


def default_path() -> str:
    """Beside the installed seccomp programs, named for this interpreter."""
    return os.path.join(sys.prefix, "share", "passt-sep",
                        f"modules.{sys.implementation.cache_tag}")


def _header() -> bytes:
    version = sys.version.encode()
    return MAGIC + len(version).to_bytes(2, "big") + version


def build(root: str) -> bytes:
    """The bundle of the package in directory ``root``: the header, the
    index's length and the index (marshal), then the code of each module."""
    index: dict[str, tuple] = {}
    codes = bytearray()
    base = os.path.join(root, PACKAGE)
    for directory, subdirectories, files in os.walk(base):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            module = relative[:-3].replace(os.sep, ".")
            is_package = name == "__init__.py"
            if is_package:
                module = module.rpartition(".")[0]
            with open(path, "rb") as handle:
                source = handle.read()
                found = os.fstat(handle.fileno())
            code = marshal.dumps(compile(source, path, "exec", dont_inherit=True))
            index[module] = (is_package, relative, found.st_mtime_ns, found.st_size,
                             len(codes), len(code))
            codes += code
    packed = marshal.dumps((os.path.abspath(root), index))
    return _header() + len(packed).to_bytes(_LENGTH, "big") + packed + bytes(codes)


def load(data: bytes, root: str) -> BundleFinder | None:
    """The finder for a bundle's bytes, or None for one this interpreter
    did not write or cannot read, or written for the package elsewhere
    than in directory ``root``."""
    header = _header()
    if not data.startswith(header):
        return None
    start = len(header) + _LENGTH
    length = int.from_bytes(data[len(header):start], "big")
    try:
        built_for, index = marshal.loads(data[start:start + length])
    except (EOFError, ValueError, TypeError):
        return None
    if built_for != os.path.abspath(root) or not isinstance(index, dict):
        return None
    codes = memoryview(data)[start + length:]
    if any(not isinstance(entry, tuple) or len(entry) != 6 or entry[4] + entry[5] > len(codes)
           for entry in index.values()):
        return None
    return BundleFinder(root, index, codes)


def install(path: str | None = None) -> BundleFinder | None:
    """Serve the package's modules from the bundle, if there is one for
    the package as imported (the installed one, not a checkout); the
    finder, or None."""
    try:
        with open(path or default_path(), "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    finder = load(data, _root())
    if finder is not None:
        sys.meta_path.insert(0, finder)
    return finder


def _root() -> str:
    """The directory holding the package as imported."""
    return os.path.dirname(os.path.dirname(os.path.abspath(sys.modules[PACKAGE].__file__)))


def release() -> None:
    """The last import is done: the finder out and the file's bytes freed
    (each module it loaded keeps it as its ``__loader__``)."""
    for finder in [f for f in sys.meta_path if isinstance(f, BundleFinder)]:
        sys.meta_path.remove(finder)
        finder.index, finder.data = {}, memoryview(b"")


def main(argv: list[str]) -> int:
    """``python -m passt_sep.system.bundle [FILE]``: write the bundle of the
    package as this interpreter imports it, whole or not at all."""
    path = argv[0] if argv else default_path()
    __import__(PACKAGE)
    root = _root()
    data = build(root)
    partial = f"{path}.partial"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)
    print(f"{path}: {len(load(data, root).index)} modules, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
