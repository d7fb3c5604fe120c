"""The hot-path dispatch table agrees with the ``transitions`` Machine's own dispatch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sangkien.definition import TransitionSpec, load_definition
from sangkien.machine import machine_for

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "workflows").glob("*.yaml")) + sorted(
    (ROOT / "tests" / "workflows").glob("*.yaml")
)


class _Ctx:
    """Accepts a transition when a seeded hash of it says so; records the order tried."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.tried: list[tuple[str, tuple[str, ...], str | None]] = []

    def check(self, spec: TransitionSpec) -> bool:
        self.tried.append((spec.trigger, tuple(spec.sources), spec.to))
        digest = hashlib.sha256(f"{self.seed}:{spec.trigger}:{spec.to}:{spec.sources}".encode())
        return digest.digest()[0] % 3 != 0


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_table_dispatch_matches_the_machine(path: Path) -> None:
    definition = load_definition(path)
    machine = machine_for(definition)
    states = list(definition.model.states)
    triggers = [*sorted(machine.triggers), "no_such_trigger"]
    compared = 0
    for seed in range(4):
        for state in states:
            for trigger in triggers:
                fast, slow = _Ctx(seed), _Ctx(seed)
                assert machine.fire(state, trigger, fast) == machine.dispatch(
                    state, trigger, slow
                ), (state, trigger, seed)
                assert fast.tried == slow.tried
                compared += bool(fast.tried)
    assert compared > 0  # some (state, trigger) pairs had candidates to check
