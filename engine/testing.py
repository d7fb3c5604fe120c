"""Test doubles for hosts testing their own workflows with sangkien.

from sangkien.testing import FrozenClock, engine_for_tests

def test_my_workflow(tmp_path):
    engine = engine_for_tests(tmp_path, workflows=["workflows/my.yaml"])
    ...
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sangkien.clock import FrozenClock
from sangkien.definition import Definition
from sangkien.runtime import Engine
from sangkien.units import UnitTree

__all__ = ["FrozenClock", "engine_for_tests"]


def engine_for_tests(
    tmp_path: Path,
    *,
    workflows: Iterable[Definition | str | Path] = (),
    clock: FrozenClock | None = None,
    units: UnitTree | None = None,
) -> Engine:
    """Return an Engine on a fresh SQLite file under *tmp_path* with a frozen clock."""
    return Engine(
        f"sqlite:///{tmp_path / 'sangkien-test.db'}",
        workflows=workflows,
        clock=clock or FrozenClock(),
        units=units,
        migrate=True,
    )
