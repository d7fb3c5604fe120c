"""The store contract: the Engine behaves the same on SQLite and PostgreSQL.

Every test here takes the ``db_url`` fixture, so it runs once per backend. The workflows
are the small test workflows under tests/workflows/ (leave, project -> task).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from sangkien import (
    Actor,
    ConcurrencyConflict,
    DefinitionConflict,
    Engine,
    FrozenClock,
    IdempotencyKeyReused,
    Instance,
    InstanceNotFound,
    InvalidData,
    StaticUnitTree,
    StoreError,
    TransitionNotAllowed,
    WorkflowNotFound,
    parse_definition,
)
from sangkien.store import schema as t
from sangkien.store.db import create_db_engine

WORKFLOWS = Path(__file__).resolve().parent / "workflows"
LEAVE = WORKFLOWS / "leave.yaml"
PROJECT = WORKFLOWS / "project.yaml"
TASK = WORKFLOWS / "task.yaml"
ALL = [LEAVE, PROJECT, TASK]
LEAVE_STATES = {"draft", "submitted", "escalated", "approved", "rejected", "withdrawn"}

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)

ALICE = Actor("alice", ["employee"], "hr")
# holds the starter-held role 'author' in her unit, but starts nothing here
BOB = Actor("bob", ["employee", "author"], "hr")
MO = Actor("mo", ["manager"], "hr")
MAX = Actor("max", ["manager"], "hr")
HANA = Actor("hana", ["hr"], "hr")
OLGA = Actor("olga", ["employee", "manager", "hr"], "sales")  # everything, elsewhere
LEAD = Actor("lee", ["lead"], "hr")
WORKER = Actor("wu", ["worker"], "hr")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def engine(db_url: str, clock: FrozenClock) -> Iterator[Engine]:
    with Engine(db_url, workflows=ALL, clock=clock, migrate=True) as e:
        yield e


@pytest.fixture
def raw(db_url: str) -> Iterator[sa.Engine]:
    """A plain SQLAlchemy engine on the same database, for tampering behind the Engine's back."""
    eng = create_db_engine(db_url)
    yield eng
    eng.dispose()


def _submitted(engine: Engine, days: int = 3, actor: Actor = ALICE) -> Instance:
    inst = engine.start("leave", actor=actor, data={"days": days})
    return engine.fire(inst.id, "submit", actor=actor, data={"reason": "family"})


def _snapshot(engine: Engine, iid: str) -> tuple[int, str, int, datetime]:
    inst = engine.get(iid)
    return inst.version, inst.state, len(engine.history(iid)), inst.updated_at


def _json_sql(raw: sa.Engine) -> str:
    return "CAST(:d AS JSONB)" if raw.dialect.name == "postgresql" else ":d"


# --------------------------------------------------------------------------- start / fire / read


def test_start_creates_instance_in_initial_state_with_defaults(engine: Engine) -> None:
    """start() puts the instance in the initial state, version 1, defaults filled, one event."""
    inst = engine.start(
        "leave", actor=ALICE, data={"days": 2}, external_ref="HR-1", comment="please"
    )
    assert inst.state == "draft"
    assert inst.version == 1
    assert inst.workflow_version == 1
    assert inst.unit == "hr"
    assert inst.created_by == "alice"
    assert inst.external_ref == "HR-1"
    assert dict(inst.data) == {"days": 2, "kind": "annual", "notes": 0}
    assert inst.state_entered_at == inst.created_at == inst.updated_at == T0
    assert engine.get(inst.id) == inst
    [ev] = engine.history(inst.id)
    assert (ev.seq, ev.kind, ev.trigger, ev.from_state, ev.to_state) == (
        1,
        "started",
        None,
        None,
        "draft",
    )
    assert (ev.actor_id, ev.actor_roles, ev.actor_unit) == ("alice", ("employee",), "hr")
    assert dict(ev.data_delta) == {"days": 2, "kind": "annual", "notes": 0}
    assert ev.comment == "please"
    assert ev.prev_hash == "0" * 64


def test_fire_moves_state_bumps_version_and_appends_one_event(
    engine: Engine, clock: FrozenClock
) -> None:
    """fire() returns the new state at version + 1 and records exactly one event with the delta."""
    inst = engine.start("leave", actor=ALICE, data={"days": 2})
    clock.advance(minutes=5)
    after = engine.fire(inst.id, "submit", actor=ALICE, data={"reason": "family"}, comment="go")
    assert (after.state, after.version) == ("submitted", 2)
    assert after.data["reason"] == "family"
    assert engine.get(inst.id) == after
    events = engine.history(inst.id)
    assert [e.seq for e in events] == [1, 2]
    ev = events[-1]
    assert (ev.kind, ev.trigger, ev.from_state, ev.to_state) == (
        "transition",
        "submit",
        "draft",
        "submitted",
    )
    assert dict(ev.data_delta) == {"reason": "family"}
    assert ev.comment == "go"
    assert ev.at == T0 + timedelta(minutes=5)
    assert ev.prev_hash == events[0].hash


def test_get_history_available_of_unknown_id_raise_instance_not_found(engine: Engine) -> None:
    """An id that does not exist is InstanceNotFound for every read and for fire."""
    missing = "00000000-0000-7000-8000-000000000000"
    for call in (
        lambda: engine.get(missing),
        lambda: engine.history(missing),
        lambda: engine.available(missing, actor=ALICE),
        lambda: engine.fire(missing, "submit", actor=ALICE),
        lambda: engine.verify(missing),
    ):
        with pytest.raises(InstanceNotFound, match=missing):
            call()


def test_start_of_unknown_workflow_raises_workflow_not_found(engine: Engine) -> None:
    """Starting a workflow key that was never registered is WorkflowNotFound, naming what
    the database holds and how to publish it."""
    with pytest.raises(WorkflowNotFound, match="'vacation'") as err:
        engine.start("vacation", actor=ALICE)
    assert "(registered: leave" in str(err.value)
    assert "sangkien publish FILE" in str(err.value)
    # a process that registered nothing itself still sees what another one published
    other = Engine(engine.db)
    with pytest.raises(WorkflowNotFound, match=r"registered: leave"):
        other.start("vacation", actor=ALICE)
    other.close()
    with pytest.raises(WorkflowNotFound, match=r"'leave' version 9 .*\)$"):
        engine.definition("leave", 9)


def test_unknown_trigger_and_wrong_state_are_refused_with_reasons(engine: Engine) -> None:
    """A trigger the workflow lacks, or one not leaving the current state, is refused saying so."""
    inst = engine.start("leave", actor=ALICE, data={"days": 2})
    with pytest.raises(TransitionNotAllowed) as exc:
        engine.fire(inst.id, "teleport", actor=ALICE)
    assert "has no trigger 'teleport'" in exc.value.reasons[0]
    with pytest.raises(TransitionNotAllowed) as exc:
        engine.fire(inst.id, "approve", actor=MO)
    assert exc.value.reasons == [
        "'approve' cannot be fired from state 'draft'; from there: edit, submit, withdraw"
    ]


def test_list_filters_by_workflow_state_unit_and_parent(engine: Engine) -> None:
    """list() applies workflow, state, unit and parent filters, alone and combined."""
    a = engine.start("leave", actor=ALICE, data={"days": 1})
    b = _submitted(engine)
    c = engine.start("leave", actor=OLGA, data={"days": 1})  # unit sales
    p = engine.start("project", actor=LEAD, data={"name": "p"})
    q = engine.start("project", actor=LEAD, data={"name": "q"})
    t1 = engine.start("task", actor=WORKER, data={"cost": 1}, parent=p.id)
    t2 = engine.start("task", actor=WORKER, data={"cost": 2}, parent=p.id)
    t3 = engine.start("task", actor=WORKER, data={"cost": 3}, parent=q.id)

    def ids(**kw: object) -> set[str]:
        return {i.id for i in engine.list(**kw)}  # type: ignore[arg-type]

    assert ids() == {a.id, b.id, c.id, p.id, q.id, t1.id, t2.id, t3.id}
    assert ids(workflow="leave") == {a.id, b.id, c.id}
    assert ids(workflow="leave", state="draft") == {a.id, c.id}
    assert ids(state="submitted") == {b.id}
    assert ids(unit="sales") == {c.id}
    assert ids(workflow="leave", unit="hr", state="draft") == {a.id}
    assert ids(parent=p.id) == {t1.id, t2.id}
    assert ids(parent=q.id, workflow="task") == {t3.id}
    assert ids(workflow="nothing") == set()


def test_list_paginates_with_after_cursor_without_gaps_or_duplicates(engine: Engine) -> None:
    """Paging with after=<last id> walks every instance once, in id order, then returns []."""
    made = {engine.start("leave", actor=ALICE, data={"days": 1}).id for _ in range(7)}
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = engine.list(workflow="leave", limit=3, after=after)
        if not page:
            break
        pages += 1
        assert len(page) <= 3
        seen.extend(i.id for i in page)
        after = page[-1].id
    assert pages == 3
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == made
    assert [i.id for i in engine.list(workflow="leave")] == seen


def test_available_lists_triggers_with_allowed_flags_and_reasons(engine: Engine) -> None:
    """available() reports each trigger leaving the state, allowed or with the refusing rule."""
    inst = _submitted(engine, days=3)
    by_mgr = {o.trigger: o for o in engine.available(inst.id, actor=MO)}
    assert set(by_mgr) == {"edit", "note", "approve", "reject", "withdraw"}
    assert by_mgr["approve"].allowed and by_mgr["approve"].to_state == "approved"
    assert by_mgr["note"].allowed and by_mgr["note"].to_state is None
    assert by_mgr["reject"].allowed  # the required comment is left to fire()
    assert not by_mgr["edit"].allowed
    assert by_mgr["edit"].reasons == ("role author required; you have manager",)
    by_author = {o.trigger: o for o in engine.available(inst.id, actor=ALICE)}
    assert by_author["edit"].allowed and by_author["withdraw"].allowed
    assert not by_author["approve"].allowed
    assert all(o.reasons for o in by_author.values() if not o.allowed)
    long = _submitted(engine, days=9)
    approve = {o.trigger: o for o in engine.available(long.id, actor=MO)}["approve"]
    assert approve.allowed and approve.to_state == "escalated"
    done = engine.fire(inst.id, "approve", actor=MO)
    assert done.state == "approved"
    assert engine.available(inst.id, actor=MO) == []


# --------------------------------------------------------------------------- optimistic locking


def test_expected_version_mismatch_raises_conflict_with_current_state(engine: Engine) -> None:
    """A stale expected_version is a ConcurrencyConflict naming the current state, no write."""
    inst = _submitted(engine)
    before = _snapshot(engine, inst.id)
    with pytest.raises(ConcurrencyConflict) as exc:
        engine.fire(inst.id, "approve", actor=MO, expected_version=1)
    err = exc.value
    assert (err.instance_id, err.expected_version, err.current_state) == (inst.id, 1, "submitted")
    assert "expected version 1" in str(err) and "'submitted'" in str(err) and "reload" in str(err)
    assert _snapshot(engine, inst.id) == before
    ok = engine.fire(inst.id, "approve", actor=MO, expected_version=inst.version)
    assert ok.version == inst.version + 1


def test_stale_write_from_second_engine_conflicts(
    db_url: str, engine: Engine, clock: FrozenClock
) -> None:
    """Read in one Engine, change in another on the same DB: the stale write conflicts."""
    with Engine(db_url, workflows=ALL, clock=clock, migrate=True) as other:
        inst = _submitted(engine, days=9)
        seen = engine.get(inst.id)
        moved = other.fire(inst.id, "approve", actor=MO)  # -> escalated
        assert moved.state == "escalated"
        with pytest.raises(ConcurrencyConflict) as exc:
            engine.fire(inst.id, "reject", actor=MAX, comment="no", expected_version=seen.version)
        assert exc.value.current_state == "escalated"
        assert engine.get(inst.id) == moved
        assert len(engine.history(inst.id)) == moved.version


# --------------------------------------------------------------------------- idempotency


def test_fire_replay_returns_original_result_and_writes_nothing(
    engine: Engine, clock: FrozenClock
) -> None:
    """Replaying a fire's idempotency key returns the first result (replayed=True), no new event."""
    inst = engine.start("leave", actor=ALICE, data={"days": 2})
    first = engine.fire(inst.id, "edit", actor=ALICE, data={"reason": "a"}, idempotency_key="k1")
    assert first.replayed is False
    clock.advance(hours=1)
    engine.fire(inst.id, "edit", actor=ALICE, data={"reason": "b"})  # changes after the first
    before = _snapshot(engine, inst.id)
    again = engine.fire(inst.id, "edit", actor=ALICE, data={"reason": "a"}, idempotency_key="k1")
    assert again.replayed is True
    assert again == first
    assert again.data["reason"] == "a" and again.version == 2
    assert _snapshot(engine, inst.id) == before


def test_start_replay_returns_same_instance(engine: Engine) -> None:
    """Replaying a start's idempotency key returns the same instance and creates no second one."""
    a = engine.start("leave", actor=ALICE, data={"days": 2}, idempotency_key="start-1")
    b = engine.start("leave", actor=ALICE, data={"days": 2}, idempotency_key="start-1")
    assert b.replayed and b.id == a.id and b == a
    assert [i.id for i in engine.list(workflow="leave")] == [a.id]
    assert len(engine.history(a.id)) == 1


def test_same_key_different_request_raises_idempotency_key_reused(engine: Engine) -> None:
    """One key with a different body (fire or start) is IdempotencyKeyReused and changes nothing."""
    inst = engine.start("leave", actor=ALICE, data={"days": 2}, idempotency_key="k")
    engine.fire(inst.id, "edit", actor=ALICE, data={"reason": "a"}, idempotency_key="e")
    before = _snapshot(engine, inst.id)
    with pytest.raises(IdempotencyKeyReused, match=r"'e'.*'alice'.*new key"):
        engine.fire(inst.id, "edit", actor=ALICE, data={"reason": "b"}, idempotency_key="e")
    with pytest.raises(IdempotencyKeyReused):
        engine.fire(inst.id, "submit", actor=ALICE, data={"reason": "a"}, idempotency_key="e")
    with pytest.raises(IdempotencyKeyReused):
        engine.start("leave", actor=ALICE, data={"days": 3}, idempotency_key="k")
    assert _snapshot(engine, inst.id) == before
    assert len(engine.list(workflow="leave")) == 1


def test_idempotency_keys_are_scoped_per_actor(engine: Engine) -> None:
    """Two actors using the same key both have their own request applied."""
    inst = _submitted(engine)
    a = engine.fire(inst.id, "note", actor=MO, idempotency_key="same")
    b = engine.fire(inst.id, "note", actor=HANA, idempotency_key="same")
    assert not a.replayed and not b.replayed
    assert b.version == a.version + 1
    assert engine.get(inst.id).data["notes"] == 2
    assert engine.fire(inst.id, "note", actor=HANA, idempotency_key="same").replayed


def test_refused_request_does_not_consume_its_idempotency_key(engine: Engine) -> None:
    """A refused fire remembers nothing: the key can be used for the corrected request."""
    inst = _submitted(engine)
    with pytest.raises(TransitionNotAllowed):
        engine.fire(inst.id, "reject", actor=MO, idempotency_key="r")
    done = engine.fire(inst.id, "reject", actor=MO, comment="overlaps", idempotency_key="r")
    assert done.state == "rejected" and not done.replayed


def test_start_with_same_key_but_other_version_is_key_reused(engine: Engine) -> None:
    """Reusing a start key for another workflow version is a different request."""
    engine.register(parse_definition(_variant("max: 30", "max: 60", version=2), "v2.yaml"))
    engine.start("leave", actor=ALICE, data={"days": 1}, version=1, idempotency_key="s")
    with pytest.raises(IdempotencyKeyReused):
        engine.start("leave", actor=ALICE, data={"days": 1}, version=2, idempotency_key="s")


# --------------------------------------------------------------------------- definitions


def _variant(old: str, new: str, version: int = 1) -> str:
    src = LEAVE.read_text(encoding="utf-8")
    assert old in src
    return src.replace(old, new).replace("version: 1", f"version: {version}")


def test_reregistering_identical_content_is_a_no_op(
    db_url: str, engine: Engine, raw: sa.Engine, clock: FrozenClock
) -> None:
    """Registering the same content again (even with other comments) changes nothing."""
    with raw.connect() as conn:
        before = conn.execute(sa.select(t.definitions).where(t.definitions.c.key == "leave")).all()
    clock.advance(days=1)
    inst = engine.start("leave", actor=ALICE, data={"days": 1})
    again = engine.register(LEAVE)
    commented = engine.register(
        parse_definition("# another comment\n" + LEAVE.read_text(), "x.yaml")
    )
    assert again.content_hash == commented.content_hash == before[0].content_hash
    with raw.connect() as conn:
        after = conn.execute(sa.select(t.definitions).where(t.definitions.c.key == "leave")).all()
    assert after == before
    assert engine.fire(inst.id, "submit", actor=ALICE, data={"reason": "r"}).state == "submitted"


def test_changed_content_same_version_in_use_raises_definition_conflict(
    db_url: str, engine: Engine
) -> None:
    """Changing a version that instances use is DefinitionConflict telling to bump the version."""
    engine.start("leave", actor=ALICE, data={"days": 1})
    changed = parse_definition(_variant("max: 30", "max: 60"), "leave-changed.yaml")
    with pytest.raises(DefinitionConflict) as exc:
        engine.register(changed)
    msg = str(exc.value)
    assert "leave-changed.yaml" in msg and "'leave' version 1" in msg
    assert "1 instance(s)" in msg and "bump 'version' to 2" in msg
    with Engine(db_url, migrate=True) as fresh:
        assert fresh.definition("leave", 1).content_hash != changed.content_hash
    with pytest.raises(InvalidData):
        engine.start("leave", actor=ALICE, data={"days": 45})


def test_changed_content_same_version_unused_is_allowed(db_url: str, engine: Engine) -> None:
    """While no instance uses a version, its content may still be replaced."""
    changed = parse_definition(_variant("max: 30", "max: 60"), "leave-changed.yaml")
    engine.register(changed)
    assert engine.definition("leave").content_hash == changed.content_hash
    assert engine.start("leave", actor=ALICE, data={"days": 45}).data["days"] == 45
    with Engine(db_url, migrate=True) as fresh:
        assert fresh.definition("leave", 1).content_hash == changed.content_hash


def test_instances_keep_their_version_after_v2_new_starts_use_v2(
    db_url: str, engine: Engine, clock: FrozenClock
) -> None:
    """After v2 is registered, old instances follow v1's rules and new starts get v2."""
    old = _submitted(engine, days=7)
    v2 = parse_definition(
        _variant("when: data.days <= 5 &&", "when: data.days <= 10 &&", version=2).replace(
            "when: data.days > 5 &&", "when: data.days > 10 &&"
        ),
        "leave-v2.yaml",
    )
    engine.register(v2)
    new = _submitted(engine, days=7)
    assert (old.workflow_version, new.workflow_version) == (1, 2)
    assert engine.definition("leave").version == 2
    assert engine.fire(new.id, "approve", actor=MO).state == "approved"  # v2: up to 10 days
    with Engine(db_url, clock=clock, migrate=True) as fresh:  # loads v1 from the store
        assert fresh.fire(old.id, "approve", actor=MO).state == "escalated"  # v1: over 5 days
    assert engine.get(old.id).workflow_version == 1


def test_second_engine_starts_on_version_registered_elsewhere(db_url: str, engine: Engine) -> None:
    """New starts use the newest registered version even if another Engine registered it."""
    with Engine(db_url, migrate=True) as deployer:
        deployer.register(parse_definition(_variant("max: 30", "max: 60", version=2), "v2.yaml"))
    assert engine.start("leave", actor=ALICE, data={"days": 1}).workflow_version == 2


def test_second_engine_does_not_start_with_replaced_content(db_url: str, engine: Engine) -> None:
    """An Engine never starts an instance under content the store no longer holds."""
    with Engine(db_url, migrate=True) as other:
        other.register(parse_definition(_variant("max: 30", "max: 3"), "strict.yaml"))
    with pytest.raises(InvalidData):
        engine.start("leave", actor=ALICE, data={"days": 20})


# --------------------------------------------------------------------------- hash chain


def _busy_history(engine: Engine, clock: FrozenClock) -> Instance:
    inst = engine.start("leave", actor=ALICE, data={"days": 9})
    clock.advance(minutes=1)
    engine.fire(inst.id, "submit", actor=ALICE, data={"reason": "trip"}, comment="first")
    clock.advance(minutes=1)
    engine.fire(inst.id, "note", actor=MO, comment="looked")
    engine.fire(inst.id, "approve", actor=MO)
    clock.advance(hours=25)
    return engine.fire(inst.id, "approve", actor=HANA)


def test_verify_is_empty_after_normal_use(engine: Engine, clock: FrozenClock) -> None:
    """verify() finds no break after starts, transitions and stay actions on several instances."""
    a = _busy_history(engine, clock)
    b = _submitted(engine)
    engine.fire(b.id, "reject", actor=MO, comment="no")
    p = engine.start("project", actor=LEAD, data={"name": "p"})
    engine.start("task", actor=WORKER, data={"cost": 1}, parent=p.id)
    assert a.version == 5
    assert engine.verify() == []
    assert engine.verify(a.id) == []
    events = engine.history(a.id)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert all(e.prev_hash == prev.hash for prev, e in itertools.pairwise(events))


def test_tampered_data_delta_is_detected_at_its_seq(
    engine: Engine, clock: FrozenClock, raw: sa.Engine
) -> None:
    """A raw SQL UPDATE of an event's data_delta shows as a break at that event only."""
    inst = _busy_history(engine, clock)
    other = _submitted(engine)
    with raw.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE sk_events SET data_delta = {_json_sql(raw)} "
                "WHERE instance_id = :i AND seq = 2"
            ),
            {"d": json.dumps({"reason": "forged"}), "i": inst.id},
        )
    breaks = engine.verify(inst.id)
    altered = [b for b in breaks if "altered" in b.reason]
    assert [(b.instance_id, b.seq) for b in altered] == [(inst.id, 2)]
    # the forged delta also no longer adds up to the instance's data
    assert all(b.instance_id == inst.id for b in breaks)
    assert engine.verify() == breaks
    assert engine.verify(other.id) == []


def test_deleted_last_event_is_detected(engine: Engine, clock: FrozenClock, raw: sa.Engine) -> None:
    """A raw SQL DELETE of the newest event breaks the chain against the instance's head."""
    inst = _busy_history(engine, clock)
    with raw.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM sk_events WHERE instance_id = :i AND seq = :s"),
            {"i": inst.id, "s": inst.version},
        )
    breaks = engine.verify(inst.id)
    head = [b for b in breaks if "events deleted or added" in b.reason]
    assert len(head) == 1
    assert head[0].seq == inst.version - 1
    assert f"ends at event {inst.version - 1}" in head[0].reason
    assert f"records {inst.version} events" in head[0].reason


def test_deleted_middle_event_is_detected_at_the_gap(
    engine: Engine, clock: FrozenClock, raw: sa.Engine
) -> None:
    """Deleting an event in the middle is reported at the event after the gap."""
    inst = _busy_history(engine, clock)
    with raw.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM sk_events WHERE instance_id = :i AND seq = 3"), {"i": inst.id}
        )
    breaks = engine.verify(inst.id)
    assert breaks and min(b.seq for b in breaks) == 4
    assert any("missing" in b.reason and b.seq == 4 for b in breaks)


def test_changed_comment_is_detected_at_its_seq(
    engine: Engine, clock: FrozenClock, raw: sa.Engine
) -> None:
    """Editing an event's comment (a reason given for a decision) breaks that event's hash."""
    inst = _busy_history(engine, clock)
    with raw.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE sk_events SET comment = 'nothing to see' WHERE instance_id = :i AND seq = 3"
            ),
            {"i": inst.id},
        )
    breaks = engine.verify(inst.id)
    assert [(b.seq, "altered" in b.reason) for b in breaks] == [(3, True)]


def test_forged_instance_state_is_detected(engine: Engine, raw: sa.Engine) -> None:
    """A raw SQL UPDATE of an instance's state (skipping review) shows up in verify()."""
    inst = engine.start("leave", actor=ALICE, data={"days": 2})
    with raw.begin() as conn:
        conn.execute(
            sa.text("UPDATE sk_instances SET state = 'submitted' WHERE id = :i"), {"i": inst.id}
        )
    engine.fire(inst.id, "approve", actor=MO)
    assert engine.verify(inst.id) != []


# --------------------------------------------------------------------------- transactions


def test_refused_fire_writes_no_event_and_keeps_version(engine: Engine, clock: FrozenClock) -> None:
    """A refused fire leaves version, state, data, updated_at and history untouched."""
    inst = _submitted(engine)
    before = engine.get(inst.id)
    events = engine.history(inst.id)
    clock.advance(hours=1)
    for trigger, actor, kw in [
        ("reject", MO, {}),
        ("approve", ALICE, {}),
        ("edit", ALICE, {"data": {"days": 99}}),
        ("submit", ALICE, {}),
    ]:
        with pytest.raises(TransitionNotAllowed):
            engine.fire(inst.id, trigger, actor=actor, **kw)  # type: ignore[arg-type]
    assert engine.get(inst.id) == before
    assert engine.history(inst.id) == events


def test_failure_after_instance_update_rolls_back_everything(
    engine: Engine, raw: sa.Engine
) -> None:
    """If the event insert fails after the instance row was updated, the update is rolled back."""
    inst = engine.start("leave", actor=ALICE, data={"days": 2})
    with raw.begin() as conn:  # squat on the next seq so the event insert hits the unique key
        conn.execute(
            t.events.insert().values(
                instance_id=inst.id,
                seq=2,
                kind="transition",
                trigger="x",
                from_state="draft",
                to_state="draft",
                actor_id="squatter",
                actor_roles=[],
                actor_unit=None,
                at=T0,
                data_delta={},
                comment=None,
                prev_hash="0" * 64,
                hash="f" * 64,
            )
        )
    with pytest.raises(StoreError, match="concurrent writer"):
        engine.fire(inst.id, "submit", actor=ALICE, data={"reason": "r"})
    assert engine.get(inst.id) == inst
    with raw.begin() as conn:
        conn.execute(sa.text("DELETE FROM sk_events WHERE actor_id = 'squatter'"))
    assert engine.verify() == []
    assert engine.fire(inst.id, "submit", actor=ALICE, data={"reason": "r"}).version == 2


def test_host_transaction_rollback_undoes_the_fire(
    engine: Engine, raw: sa.Engine, clock: FrozenClock
) -> None:
    """An Engine on a host connection never commits: rolling the host back leaves nothing."""
    inst = engine.start("leave", actor=ALICE, data={"days": 2})
    with raw.connect() as conn:
        tx = conn.begin()
        inside = Engine(conn, workflows=[LEAVE], clock=clock)
        moved = inside.fire(inst.id, "submit", actor=ALICE, data={"reason": "r"})
        assert inside.get(inst.id) == moved
        assert len(inside.history(inst.id)) == 2
        tx.rollback()
    assert engine.get(inst.id) == inst
    assert len(engine.history(inst.id)) == 1
    assert engine.verify() == []


# --------------------------------------------------------------------------- authorization


def test_role_refusal_names_required_and_held_roles(engine: Engine) -> None:
    """A refused role check says which role is required and which the actor has."""
    inst = engine.start("leave", actor=ALICE, data={"days": 2})
    with pytest.raises(TransitionNotAllowed) as exc:
        engine.fire(inst.id, "submit", actor=MO, data={"reason": "r"})
    assert exc.value.reasons == ["role author required; you have manager"]
    assert not isinstance(exc.value, InvalidData)
    with pytest.raises(
        TransitionNotAllowed, match="role employee required to start; you have manager"
    ):
        engine.start("leave", actor=MO, data={"days": 2})
    with pytest.raises(TransitionNotAllowed, match="you have no role"):
        engine.fire(inst.id, "withdraw", actor=Actor("nobody", [], "hr"))


def test_starter_held_role_belongs_only_to_the_starter(engine: Engine) -> None:
    """'author' (holder: starter) is held by whoever started the instance, never by others."""
    inst = engine.start("leave", actor=ALICE, data={"days": 2})
    with pytest.raises(TransitionNotAllowed) as exc:
        engine.fire(inst.id, "withdraw", actor=BOB)
    [reason] = exc.value.reasons
    assert reason.startswith("role author required; you have author, employee")
    assert "held on this instance only by its starter, 'alice'" in reason
    assert {o.trigger: o.allowed for o in engine.available(inst.id, actor=BOB)} == {
        "submit": False,
        "edit": False,
        "withdraw": False,
    }
    assert engine.fire(inst.id, "edit", actor=ALICE, data={"reason": "r"}).version == 2
    own = engine.start("leave", actor=BOB, data={"days": 1})
    assert engine.fire(own.id, "withdraw", actor=BOB).state == "withdrawn"


def test_guard_on_actor_and_instance_forbids_approving_own_request(engine: Engine) -> None:
    """A guard on actor.id and instance.created_by stops a manager approving their own leave."""
    boss = Actor("boss", ["employee", "manager"], "hr")
    inst = _submitted(engine, days=2, actor=boss)
    with pytest.raises(TransitionNotAllowed) as exc:
        engine.fire(inst.id, "approve", actor=boss)
    assert len(exc.value.reasons) == 2
    assert all("is not satisfied" in r for r in exc.value.reasons)
    assert engine.fire(inst.id, "approve", actor=MO).state == "approved"


# --------------------------------------------------------------------------- units


def test_actor_from_another_unit_cannot_see_or_act(engine: Engine) -> None:
    """Instances outside the actor's unit do not exist for them: not found, listed or changed."""
    inst = _submitted(engine)
    own = engine.start("leave", actor=OLGA, data={"days": 1})
    before = _snapshot(engine, inst.id)
    for call in (
        lambda: engine.get(inst.id, actor=OLGA),
        lambda: engine.history(inst.id, actor=OLGA),
        lambda: engine.available(inst.id, actor=OLGA),
        lambda: engine.fire(inst.id, "approve", actor=OLGA),
        lambda: engine.fire(inst.id, "reject", actor=OLGA, comment="x"),
    ):
        with pytest.raises(InstanceNotFound):
            call()
    assert _snapshot(engine, inst.id) == before
    assert [i.id for i in engine.list(actor=OLGA)] == [own.id]
    assert [i.id for i in engine.list(actor=MO)] == [inst.id]
    assert engine.list(actor=Actor("floating", ["manager"], None)) == []
    with pytest.raises(TransitionNotAllowed, match="does not cover unit 'hr'"):
        engine.start("leave", actor=OLGA, unit="hr", data={"days": 1})


def test_unit_tree_lets_a_parent_unit_see_and_act_on_child_units(
    db_url: str, clock: FrozenClock
) -> None:
    """With a StaticUnitTree an officer of hq reaches north's instances; north cannot reach hq's."""
    tree = StaticUnitTree({"hq": None, "north": "hq", "south": "hq"})
    hq_boss = Actor("hb", ["manager", "employee"], "hq")
    north = Actor("nn", ["employee", "manager"], "north")
    south = Actor("ss", ["employee"], "south")
    with Engine(db_url, workflows=ALL, clock=clock, units=tree, migrate=True) as engine:
        n = _submitted(engine, actor=north)
        s = engine.start("leave", actor=south, data={"days": 1})
        h = engine.start("leave", actor=hq_boss, data={"days": 1})
        placed = engine.start("leave", actor=hq_boss, unit="north", data={"days": 1})
        assert placed.unit == "north"
        assert engine.get(n.id, actor=hq_boss) == n
        assert len(engine.history(n.id, actor=hq_boss)) == 2
        assert {o.trigger for o in engine.available(n.id, actor=hq_boss)} >= {"approve"}
        assert engine.fire(n.id, "approve", actor=hq_boss).state == "approved"
        assert {i.id for i in engine.list(actor=hq_boss)} == {n.id, s.id, h.id, placed.id}
        assert {i.id for i in engine.list(actor=north)} == {n.id, placed.id}
        with pytest.raises(InstanceNotFound):
            engine.get(h.id, actor=north)
        with pytest.raises(InstanceNotFound):
            engine.fire(s.id, "withdraw", actor=north)
        with pytest.raises(
            TransitionNotAllowed, match="your unit 'north' does not cover unit 'south'"
        ):
            engine.start("leave", actor=north, unit="south", data={"days": 1})


# --------------------------------------------------------------------------- parent / child


def test_start_requires_a_parent_of_the_right_workflow(engine: Engine) -> None:
    """A child needs a parent, of its declared parent workflow; unknown parents are not found."""
    leave = engine.start("leave", actor=ALICE, data={"days": 1})
    with pytest.raises(TransitionNotAllowed, match="belong to a 'project'; give parent="):
        engine.start("task", actor=WORKER, data={"cost": 1})
    with pytest.raises(
        TransitionNotAllowed, match="is a 'leave'; 'task' instances belong to project"
    ):
        engine.start("task", actor=WORKER, data={"cost": 1}, parent=leave.id)
    with pytest.raises(InstanceNotFound):
        engine.start(
            "task", actor=WORKER, data={"cost": 1}, parent="00000000-0000-7000-8000-000000000000"
        )
    p = engine.start("project", actor=LEAD, data={"name": "p"})
    child = engine.start("task", actor=WORKER, data={"cost": 1}, parent=p.id)
    assert child.parent_id == p.id
    assert engine.list(workflow="task") == [child]


def test_parent_must_be_in_a_unit_covering_the_child(db_url: str, clock: FrozenClock) -> None:
    """A child's unit must be covered by its parent's unit (same unit or below it)."""
    tree = StaticUnitTree({"hq": None, "north": "hq", "south": "hq"})
    with Engine(db_url, workflows=ALL, clock=clock, units=tree, migrate=True) as engine:
        at_hq = engine.start("project", actor=Actor("l", ["lead"], "hq"), data={"name": "h"})
        at_north = engine.start("project", actor=Actor("l", ["lead"], "north"), data={"name": "n"})
        south = Actor("w", ["worker"], "south")
        child = engine.start("task", actor=south, data={"cost": 1}, parent=at_hq.id)
        assert child.unit == "south"
        with pytest.raises(
            TransitionNotAllowed, match="belongs to unit 'north', which does not cover unit 'south'"
        ):
            engine.start("task", actor=south, data={"cost": 1}, parent=at_north.id)


def test_guards_see_the_parents_current_data(engine: Engine) -> None:
    """Start and transition guards read parent.data as it is when the child acts."""
    p = engine.start("project", actor=LEAD, data={"name": "p", "budget": 5, "open": False})
    with pytest.raises(TransitionNotAllowed, match=re.escape("parent.data.open == true")):
        engine.start("task", actor=WORKER, data={"cost": 8}, parent=p.id)
    engine.fire(p.id, "adjust", actor=LEAD, data={"open": True})
    task = engine.start("task", actor=WORKER, data={"cost": 8}, parent=p.id)
    with pytest.raises(TransitionNotAllowed, match=re.escape("data.cost <= parent.data.budget")):
        engine.fire(task.id, "spend", actor=WORKER)
    engine.fire(p.id, "adjust", actor=LEAD, data={"budget": 10})
    done = engine.fire(task.id, "spend", actor=WORKER)
    assert done.state == "done"
    assert done.data["spent"] is True


# --------------------------------------------------------------------------- data


def test_wrong_types_unknown_fields_and_unaccepted_fields_are_invalid_data(engine: Engine) -> None:
    """Bad incoming data is InvalidData naming the field; nothing is written."""
    with pytest.raises(InvalidData, match="field 'days' must be a number, got a string"):
        engine.start("leave", actor=ALICE, data={"days": "three"})
    with pytest.raises(InvalidData, match=r"unknown field 'dayz' \(declared fields: days, reason"):
        engine.start("leave", actor=ALICE, data={"days": 1, "dayz": 1})
    with pytest.raises(InvalidData, match="must be one of annual, sick"):
        engine.start("leave", actor=ALICE, data={"days": 1, "kind": "holiday"})
    with pytest.raises(InvalidData, match="at most 30"):
        engine.start("leave", actor=ALICE, data={"days": 31})
    assert engine.list() == []
    inst = engine.start("leave", actor=ALICE, data={"days": 1})
    before = _snapshot(engine, inst.id)
    with pytest.raises(InvalidData) as exc:
        engine.fire(inst.id, "edit", actor=ALICE, data={"kind": "sick"})
    assert exc.value.reasons == [
        "field 'kind' cannot be given with this action (accepted: reason, days, urgent)"
    ]
    with pytest.raises(InvalidData, match="must be true or false"):
        engine.fire(inst.id, "edit", actor=ALICE, data={"urgent": "yes"})
    with pytest.raises(InvalidData, match="unknown field 'bogus'"):
        engine.fire(inst.id, "edit", actor=ALICE, data={"bogus": 1})
    assert _snapshot(engine, inst.id) == before


def test_invalid_data_on_trigger_with_several_candidates(engine: Engine) -> None:
    """One bad field on a guard-distinguished trigger is InvalidData."""
    inst = _submitted(engine)
    with pytest.raises(InvalidData):
        engine.fire(inst.id, "approve", actor=MO, data={"bogus": 1})


def test_two_bad_fields_on_trigger_with_several_candidates_are_invalid_data(engine: Engine) -> None:
    """Purely bad data stays InvalidData however many fields are wrong and candidates exist."""
    inst = _submitted(engine)
    with pytest.raises(InvalidData):
        engine.fire(inst.id, "approve", actor=MO, data={"bogus": 1, "days": "x"})


def test_required_fields_and_requires_are_enforced(engine: Engine) -> None:
    """start.requires, a transition's requires and required fields all refuse when empty."""
    with pytest.raises(TransitionNotAllowed) as exc:
        engine.start("leave", actor=ALICE)
    assert "field 'days' is required to start" in exc.value.reasons
    inst = engine.start("leave", actor=ALICE, data={"days": 2})
    with pytest.raises(TransitionNotAllowed, match="field 'reason' is required for 'submit'"):
        engine.fire(inst.id, "submit", actor=ALICE)
    with pytest.raises(TransitionNotAllowed, match="field 'reason' is required for 'submit'"):
        engine.fire(inst.id, "submit", actor=ALICE, data={"reason": ""})
    with pytest.raises(TransitionNotAllowed, match="field 'days' is required"):
        engine.fire(inst.id, "edit", actor=ALICE, data={"days": None})
    assert engine.get(inst.id) == inst


def test_comment_required_refuses_missing_or_blank_comment(engine: Engine) -> None:
    """comment: required refuses no comment and a blank one; the given comment is recorded."""
    inst = _submitted(engine)
    for comment in (None, "", "   "):
        with pytest.raises(TransitionNotAllowed, match="a comment giving the reasons is required"):
            engine.fire(inst.id, "reject", actor=MO, comment=comment)
    done = engine.fire(inst.id, "reject", actor=MO, comment="dates overlap")
    assert done.state == "rejected"
    assert engine.history(inst.id)[-1].comment == "dates overlap"


def test_set_effects_write_now_and_actor_and_count(engine: Engine, clock: FrozenClock) -> None:
    """set effects store `now` into a datetime field, actor.id into a string, and data + 1."""
    inst = _submitted(engine, days=2)
    clock.advance(hours=3)
    engine.fire(inst.id, "note", actor=MO)
    noted = engine.fire(inst.id, "note", actor=HANA)
    assert noted.data["notes"] == 2
    clock.advance(minutes=30)
    done = engine.fire(inst.id, "approve", actor=MO)
    when = T0 + timedelta(hours=3, minutes=30)
    assert datetime.fromisoformat(done.data["approved_at"]) == when
    assert done.data["approved_by"] == "mo"
    assert engine.get(inst.id).data == done.data
    assert dict(engine.history(inst.id)[-1].data_delta) == {
        "approved_at": done.data["approved_at"],
        "approved_by": "mo",
    }


def test_stay_keeps_state_entered_at_and_real_transition_updates_it(
    engine: Engine, clock: FrozenClock
) -> None:
    """A stay transition (no `to`) keeps state_entered_at; entering a state resets it."""
    inst = engine.start("leave", actor=ALICE, data={"days": 2})
    t1 = clock.advance(hours=1)
    edited = engine.fire(inst.id, "edit", actor=ALICE, data={"reason": "r"})
    assert (edited.state, edited.state_entered_at, edited.updated_at) == ("draft", T0, t1)
    ev = engine.history(inst.id)[-1]
    assert (ev.kind, ev.from_state, ev.to_state) == ("action", "draft", "draft")
    t2 = clock.advance(hours=1)
    moved = engine.fire(inst.id, "submit", actor=ALICE)
    assert (moved.state, moved.state_entered_at) == ("submitted", t2)
    assert engine.history(inst.id)[-1].kind == "transition"
    assert engine.get(inst.id).state_entered_at == t2


def test_guard_on_time_in_state_uses_state_entered_at(engine: Engine, clock: FrozenClock) -> None:
    """hr may approve an escalated leave 24h after it was escalated; stays don't reset the timer."""
    inst = _submitted(engine, days=9)
    escalated = engine.fire(inst.id, "approve", actor=MO)
    assert escalated.state == "escalated"
    clock.advance(hours=12)
    engine.fire(inst.id, "note", actor=HANA)
    clock.advance(hours=11, minutes=59)
    with pytest.raises(TransitionNotAllowed, match='duration\\("24h"\\)'):
        engine.fire(inst.id, "approve", actor=HANA)
    clock.advance(minutes=1)
    assert engine.fire(inst.id, "approve", actor=HANA).state == "approved"


def test_same_trigger_goes_where_the_guards_say(engine: Engine) -> None:
    """'approve' from submitted goes to approved for short leaves and escalated for long ones."""
    short = _submitted(engine, days=5)
    long = _submitted(engine, days=6)
    assert engine.fire(short.id, "approve", actor=MO).state == "approved"
    assert engine.fire(long.id, "approve", actor=MO).state == "escalated"
    assert engine.get(long.id).state in LEAVE_STATES


def test_ids_sort_in_creation_order() -> None:
    """Ids made one after another sort in creation order, even within one millisecond."""
    from sangkien.runtime import new_id

    ids = [new_id() for _ in range(2000)]
    assert ids == sorted(ids)


def test_list_returns_instances_oldest_first(engine: Engine) -> None:
    """Instances started back to back are listed in the order they were started."""
    made = [engine.start("leave", actor=ALICE, data={"days": 1}).id for _ in range(30)]
    assert [i.id for i in engine.list()] == made
