"""Random valid and invalid triggers against a few leave instances keep the store's invariants.

A Hypothesis state machine starts instances and fires every trigger (plus an unknown one)
with random actors, data, comments, expected versions and clock jumps. After each step it
checks what must always hold, whatever was refused.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sangkien import (
    Actor,
    ConcurrencyConflict,
    Engine,
    FrozenClock,
    InstanceNotFound,
    TransitionNotAllowed,
)

LEAVE = Path(__file__).resolve().parent / "workflows" / "leave.yaml"
T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
MAX_INSTANCES = 4

ACTORS = [
    Actor("alice", ["employee"], "hr"),
    Actor("bob", ["employee", "author"], "hr"),  # author role, but only starters hold it
    Actor("mo", ["manager"], "hr"),
    Actor("hana", ["hr"], "hr"),
    Actor("boss", ["employee", "manager"], "hr"),
    Actor("olga", ["employee", "manager", "hr"], "sales"),  # another unit: sees nothing in hr
]
DATA: list[dict[str, Any]] = [
    {},
    {},
    {"reason": "trip"},
    {"days": 3},
    {"days": 8},
    {"days": 40},
    {"days": "x"},
    {"days": None},
    {"urgent": True},
    {"kind": "sick"},
    {"bogus": 1},
    {"reason": ""},
    {"reason": "r", "days": 2},
]
COMMENTS = [None, "", "  ", "because"]
GOOD_DATA: dict[str, list[dict[str, Any]]] = {
    "submit": [{"reason": "trip"}, {}],
    "edit": [{"reason": "r"}, {"days": 2}, {"days": 9}, {"urgent": False}],
}


class LeaveStore(RuleBasedStateMachine):
    """Drives one SQLite store through random starts, fires and clock jumps."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="sk-stateful-")
        self.clock = FrozenClock(T0)
        self.engine = Engine(
            f"sqlite:///{self.tmp}/s.db", workflows=[LEAVE], clock=self.clock, migrate=True
        )
        model = self.engine.definition("leave").model
        self.declared = set(model.states)
        self.triggers = [*sorted({t.trigger for t in model.transitions}), "teleport"]
        self.ids: list[str] = []

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _snapshot(self, iid: str) -> tuple[Any, list[Any]]:
        return self.engine.get(iid), self.engine.history(iid)

    @initialize(days=st.integers(1, 10))
    def first(self, days: int) -> None:
        inst = self.engine.start("leave", actor=ACTORS[0], data={"days": days})
        self.ids.append(inst.id)

    @precondition(lambda self: len(self.ids) < MAX_INSTANCES)
    @rule(
        actor=st.sampled_from(ACTORS), days=st.one_of(st.integers(-1, 35), st.just("x"), st.none())
    )
    def start(self, actor: Actor, days: Any) -> None:
        count = len(self.engine.list())
        data = {} if days is None else {"days": days}
        try:
            inst = self.engine.start("leave", actor=actor, data=data)
        except TransitionNotAllowed as exc:
            assert exc.reasons, "a refused start carries no reason"
            assert len(self.engine.list()) == count
            return
        assert (inst.state, inst.version) == ("draft", 1)
        assert len(self.engine.history(inst.id)) == 1
        self.ids.append(inst.id)

    @rule(
        pick=st.integers(0, MAX_INSTANCES - 1),
        trigger=st.data(),
        actor=st.sampled_from(ACTORS),
        data=st.sampled_from(DATA),
        comment=st.sampled_from(COMMENTS),
        expect=st.sampled_from([None, None, "current", "stale"]),
    )
    def fire_anything(
        self,
        pick: int,
        trigger: st.DataObject,
        actor: Actor,
        data: dict[str, Any],
        comment: str | None,
        expect: str | None,
    ) -> None:
        iid = self.ids[pick % len(self.ids)]
        name = trigger.draw(st.sampled_from(self.triggers), label="trigger")
        self._attempt(iid, name, actor, data, comment, expect)

    @rule(pick=st.integers(0, MAX_INSTANCES - 1), choice=st.data())
    def fire_offered(self, pick: int, choice: st.DataObject) -> None:
        iid = self.ids[pick % len(self.ids)]
        unit = self.engine.get(iid).unit
        actor = choice.draw(st.sampled_from([a for a in ACTORS if a.unit == unit]), label="actor")
        # withdraw ends the instance at once; fire_anything still reaches it
        offered = sorted(
            o.trigger
            for o in self.engine.available(iid, actor=actor)
            if o.allowed and o.trigger != "withdraw"
        )
        if not offered:
            return
        name = choice.draw(st.sampled_from(offered), label="offered trigger")
        data = choice.draw(st.sampled_from(GOOD_DATA.get(name, [{}])), label="data")
        self._attempt(iid, name, actor, data, "because", None)

    def _attempt(
        self,
        iid: str,
        name: str,
        actor: Actor,
        data: dict[str, Any],
        comment: str | None,
        expect: str | None,
    ) -> None:
        before, events = self._snapshot(iid)
        expected = {None: None, "current": before.version, "stale": before.version - 1}[expect]
        try:
            after = self.engine.fire(
                iid, name, actor=actor, data=data, comment=comment, expected_version=expected
            )
        except (TransitionNotAllowed, InstanceNotFound, ConcurrencyConflict) as exc:
            event(f"refused: {type(exc).__name__}")
            if isinstance(exc, TransitionNotAllowed):
                assert exc.reasons and all(r.strip() for r in exc.reasons), exc
            if isinstance(exc, InstanceNotFound):
                assert actor.unit != before.unit
            if isinstance(exc, ConcurrencyConflict):
                assert expect == "stale" and exc.current_state == before.state
            assert self._snapshot(iid) == (before, events), "a refused fire changed the store"
            return
        event(f"fired: {name} -> {after.state}")
        assert expect != "stale"
        assert actor.unit == before.unit
        assert after.version == before.version + 1
        assert self.engine.get(iid) == after
        now_events = self.engine.history(iid)
        assert now_events[:-1] == events, "history is append-only"
        last = now_events[-1]
        assert (last.seq, last.trigger, last.from_state, last.to_state) == (
            len(events) + 1,
            name,
            before.state,
            after.state,
        )
        assert last.actor_id == actor.id and last.at == self.clock.now()
        if last.kind == "action":
            assert after.state == before.state
            assert after.state_entered_at == before.state_entered_at
        else:
            assert last.kind == "transition"
            assert after.state_entered_at == self.clock.now()

    @rule(hours=st.integers(0, 30))
    def wait(self, hours: int) -> None:
        self.clock.advance(hours=hours)

    @invariant()
    def store_is_consistent(self) -> None:
        for iid in self.ids:
            inst, events = self._snapshot(iid)
            assert inst.state in self.declared
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert len(events) == inst.version
            assert events[0].kind == "started" and events[0].to_state == "draft"
            assert events[-1].to_state == inst.state
            for prev, ev in itertools.pairwise(events):
                assert ev.from_state == prev.to_state
                assert ev.prev_hash == prev.hash
        assert self.engine.verify() == []


class TestLeaveStore(LeaveStore.TestCase):
    """Random valid and invalid fires never break state, version, history or chain invariants."""

    settings = settings(
        max_examples=30,
        stateful_step_count=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
