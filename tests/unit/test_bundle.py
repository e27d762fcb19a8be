"""The package's modules compiled into one file at install
(``passt_sep/system/bundle.py``): the finder serves a module as the import
system would, and steps aside for a source edited since, a bundle built
for the package elsewhere, or a file it cannot read."""

from __future__ import annotations

import importlib.util
import os
import sys

from passt_sep import ports
from passt_sep.system import bundle

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _package(root, modules: dict[str, str]) -> None:
    package = root / bundle.PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in modules.items():
        (package / f"{name}.py").write_text(text)


def test_a_module_from_the_bundle_is_the_module_from_its_source() -> None:
    finder = bundle.load(bundle.build(CHECKOUT), CHECKOUT)
    assert finder is not None
    spec = finder.find_spec("passt_sep.ports")
    assert spec is not None and spec.origin == ports.__file__
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__file__ == ports.__file__ and module.MAX_PORT == ports.MAX_PORT
    package = finder.find_spec("passt_sep.broker")
    assert package.submodule_search_locations == [os.path.join(CHECKOUT, "passt_sep", "broker")]


def test_an_edited_source_is_left_to_the_import_system(tmp_path) -> None:
    _package(tmp_path, {"mod": "VALUE = 1\n"})
    finder = bundle.load(bundle.build(str(tmp_path)), str(tmp_path))
    assert finder is not None and finder.find_spec("passt_sep.mod") is not None
    (tmp_path / bundle.PACKAGE / "mod.py").write_text("VALUE = 22\n")
    assert finder.find_spec("passt_sep.mod") is None
    assert finder.find_spec("passt_sep.other") is None


def test_a_bundle_for_another_place_or_damaged_is_not_used(tmp_path) -> None:
    _package(tmp_path, {"mod": "VALUE = 1\n"})
    data = bundle.build(str(tmp_path))
    assert bundle.load(data, CHECKOUT) is None
    assert bundle.load(data[:len(data) // 3], str(tmp_path)) is None
    assert bundle.load(b"PSMB" + data[4:].replace(sys.version.encode(), b"x" * 5, 1),
                       str(tmp_path)) is None


def test_install_without_a_bundle_changes_nothing(tmp_path) -> None:
    before = list(sys.meta_path)
    assert bundle.install(str(tmp_path / "missing")) is None
    assert sys.meta_path == before


def test_install_and_release(tmp_path) -> None:
    path = tmp_path / "modules"
    path.write_bytes(bundle.build(CHECKOUT))    # this checkout is the package imported here
    finder = bundle.install(str(path))
    try:
        assert finder is not None and sys.meta_path[0] is finder
    finally:
        bundle.release()
    assert finder not in sys.meta_path and finder.index == {} and len(finder.data) == 0
