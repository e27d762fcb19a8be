"""Shared fixtures: the namespace topology and the installed binaries."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import qemu_guest  # noqa: E402

from topology import Topology  # noqa: E402

VENV = os.environ.get("PASST_SEP_VENV") or sys.prefix


def binary(name: str) -> str:
    """An installed console script of the venv the suite runs with."""
    return os.path.join(VENV, "bin", name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/e2e/ are end-to-end: they need root to build namespaces."""
    skip = pytest.mark.skip(reason="end-to-end tests build namespaces: run as root")
    for item in items:
        if f"{os.sep}e2e{os.sep}" in str(item.path):
            item.add_marker(pytest.mark.e2e)
            if os.geteuid() != 0:
                item.add_marker(skip)


@pytest.fixture
def topo(request: pytest.FixtureRequest):
    tag = "".join(c for c in request.node.name if c.isalnum())[-6:] or "t"
    with Topology(tag) as topology:
        yield topology


@pytest.fixture
def shared_tmp():
    """A temporary directory every uid can use (rootless passt-sep writes
    its pid file there); pytest's own tmp_path is private to root."""
    path = tempfile.mkdtemp(prefix="passt-sep-test-", dir="/tmp")
    os.chmod(path, 0o777)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pasta() -> str:
    return binary("pasta-sep")


@pytest.fixture
def passt() -> str:
    return binary("passt-sep")


@pytest.fixture(scope="session")
def guest_image(tmp_path_factory: pytest.TempPathFactory) -> qemu_guest.GuestImage:
    """QEMU, kernel and initramfs for the passt-mode guests, built once per
    session; skipped where there is no QEMU or no guest kernel."""
    try:
        return qemu_guest.prepare_image(str(tmp_path_factory.mktemp("qemu-guest")))
    except qemu_guest.GuestImageError as exc:
        pytest.skip(str(exc))
