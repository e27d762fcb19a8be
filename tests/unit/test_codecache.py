"""The dataclass methods compiled at install (``passt_sep/system/codecache.py``):
the file format, that ``dataclasses`` runs the cached code for a text it
holds, and that a cache built by the module covers every dataclass a start
makes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from passt_sep.system import codecache

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def restore_exec():
    yield
    if "exec" in vars(dataclasses):
        del dataclasses.exec


def _point() -> type:
    @dataclasses.dataclass(frozen=True)
    class Point:
        """A test record."""

        x: int
        y: int = 0
    return Point


def test_pack_unpack_round_trip() -> None:
    code = compile("a = 1", codecache.FILENAME, "exec")
    assert codecache.unpack(codecache.pack({"a = 1": code})) == {"a = 1": code}


@pytest.mark.parametrize("damage", [
    lambda data: b"XXXX" + data[4:],                      # not ours
    lambda data: data.replace(sys.version.encode(), b"3.0.0" + b" " * (len(sys.version) - 5)),
    lambda data: data[:-7],                               # cut short
    lambda data: data[:data.index(sys.version.encode()) + len(sys.version)] + b"\x00garbage",
])
def test_a_foreign_or_damaged_file_is_not_used(damage) -> None:
    code = compile("a = 1", codecache.FILENAME, "exec")
    assert codecache.unpack(damage(codecache.pack({"a = 1": code}))) is None


def test_not_code_is_not_used() -> None:
    import marshal
    data = codecache.pack({})
    data = data[:-len(marshal.dumps({}))] + marshal.dumps({"a": "not code"})
    assert codecache.unpack(data) is None


def test_dataclasses_run_the_cached_code(tmp_path, restore_exec) -> None:
    """The code found for a text is what runs: a cache whose ``__repr__``
    text maps to other code changes the class's repr."""
    recorder = codecache.RecordingExec()
    dataclasses.exec = recorder
    _point()
    del dataclasses.exec
    [text] = [t for t in recorder.codes if "__repr__" in t]
    other = text.replace("return ", "return 'cached' or ", 1)
    assert other != text
    codes = dict(recorder.codes, **{text: compile(other, codecache.FILENAME, "exec")})
    path = tmp_path / "cache"
    path.write_bytes(codecache.pack(codes))
    hook = codecache.install(str(path))
    assert hook is not None
    point = _point()
    assert repr(point(1, 2)) == "cached"
    assert point(1, 2) == point(1, 2) and hash(point(1, 2)) == hash(point(1, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        point(1, 2).x = 3
    codecache.release()
    assert "exec" not in vars(dataclasses)
    assert hook.missed == 0


def test_a_missing_file_changes_nothing(tmp_path, restore_exec) -> None:
    assert codecache.install(str(tmp_path / "none")) is None
    assert "exec" not in vars(dataclasses)
    assert repr(_point()(1)).endswith("Point(x=1, y=0)")


def test_the_built_cache_covers_a_start(tmp_path) -> None:
    """Built by ``python -m`` in one interpreter, it leaves nothing to
    compile for what a start imports, in another."""
    path = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    subprocess.run([sys.executable, "-m", "passt_sep.system.codecache", str(path)],
                   check=True, env=env, capture_output=True)
    check = (
        "import sys; from passt_sep.system import codecache\n"
        f"hook = codecache.install({str(path)!r})\n"
        "from passt_sep.broker.netlink import _without_package_init\n"
        "_without_package_init('pyroute2')\n"
        "import passt_sep.config, passt_sep.broker.main, passt_sep.broker.netconf\n"
        "print(len(hook.codes), hook.missed, 'ast' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", check], check=True, env=env,
                         capture_output=True, text=True).stdout.split()
    assert int(out[0]) > 100 and out[1] == "0"
    assert out[2] == "False", "inspect was imported: a dataclass without a docstring?"


def test_a_deferred_module_loads_on_first_use(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    stand_in = codecache.DeferredModule("colorsys")
    monkeypatch.setitem(sys.modules, "colorsys", stand_in)
    import colorsys
    assert colorsys is stand_in                      # an import does not load it
    assert colorsys.rgb_to_hsv(1, 0, 0) == (0, 1, 1)
    assert sys.modules["colorsys"] is not stand_in   # the real one, from now on
    assert colorsys.hsv_to_rgb(0, 0, 0) == (0, 0, 0)
