"""The distribution installs under the single import name ``sangkien``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("sangkien-*.whl")
    return whl


def test_wheel_exposes_only_sangkien(wheel: Path) -> None:
    """Every module in the wheel lives under sangkien/, never engine/, adapters/ or config/."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"sangkien"}
    top_level = [n for n in names if n.endswith("top_level.txt")]
    if top_level:
        text = zipfile.ZipFile(wheel).read(top_level[0]).decode().split()
        assert text == ["sangkien"]


def test_wheel_ships_data_and_typing_marker(wheel: Path) -> None:
    """Shipped workflows, migrations and py.typed are inside the package."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "sangkien/py.typed",
        "sangkien/workflows/campaign.yaml",
        "sangkien/workflows/initiative.yaml",
        "sangkien/store/migrations/env.py",
        "sangkien/store/migrations/script.py.mako",
        "sangkien/adapters/__init__.py",
        "sangkien/config/__init__.py",
        "sangkien/config/data/directory.yaml",
        "sangkien/config/data/calendars/vn.yaml",
        "sangkien/workflows/templates/vi/transition.txt",
        "sangkien/workflows/templates/en/transition.txt",
    ):
        assert needed in names, needed
    assert any(n.startswith("sangkien/store/migrations/versions/0001") for n in names)


def test_console_script_declared(wheel: Path) -> None:
    """The wheel declares the `sangkien` console script."""
    zf = zipfile.ZipFile(wheel)
    (ep,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
    assert "sangkien = sangkien.cli:main" in zf.read(ep).decode()
