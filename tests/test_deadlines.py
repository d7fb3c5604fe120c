"""Deadlines at run time, on SQLite and PostgreSQL: due times, reminders, escalations, clocks.

Time only moves through a FrozenClock; nothing sleeps. The reference case is a review entered
on Monday 2025-01-20 with `after: 10 working days`: Tết Ất Tỵ (Sat 25/1 to Sun 2/2/2025) is not
counted, so it is due at the end of Monday 2025-02-10 in Vietnam (16:59:59.999999 UTC).
Reminders `3 working days` and `1 working day` before fire at 08:00 local (01:00 UTC) on
Wednesday 5/2 and Friday 7/2; the escalations fire at the due time and 3 working days later
(end of Thursday 13/2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sangkien import Actor, Engine, FrozenClock, TransitionNotAllowed
from sangkien.calendar import shipped_calendars_dir
from sangkien.store import schema as t

HERE = Path(__file__).resolve().parent / "workflows"
WORKFLOWS = [
    HERE / f"deadlines_{name}.yaml"
    for name in ("review", "from", "campaign", "entry", "clock", "hearing")
]

CLERK = Actor("clerk1", ["clerk"], "u1")
HEAD = Actor("head1", ["head"], "u1")
CLERK2 = Actor("clerk2", ["clerk"], "u2")
HEAD2 = Actor("head2", ["head"], "u2")
OFFICER = Actor("officer1", ["officer"], "u1")
SYSTEM_ACTOR = "system:deadline:reviewing"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def eod(y: int, m: int, d: int) -> datetime:
    """End of day *y-m-d* in Vietnam (UTC+7), as UTC."""
    return utc(y, m, d, 16, 59, 59, 999999)


def at8(y: int, m: int, d: int) -> datetime:
    """08:00 in Vietnam on *y-m-d*, as UTC."""
    return utc(y, m, d, 1, 0)


T0 = utc(2025, 1, 20, 3, 0)  # Monday 20/1/2025, 10:00 local
DUE = eod(2025, 2, 10)  # 10 working days, Tết skipped
R0 = at8(2025, 2, 5)  # 3 working days before
R1 = at8(2025, 2, 7)  # 1 working day before
ESC2 = eod(2025, 2, 13)  # 3 working days after the due day
DEADLINE_EVENTS = {
    "reminder",
    "reminder_skipped",
    "deadline_missed",
    "escalation",
    "escalation_failed",
    "deadline_extended",
    "deadline_recomputed",
}


@dataclass
class Env:
    engine: Engine
    clock: FrozenClock
    calendars: Path
    url: str

    def at(self, moment: datetime) -> Env:
        self.clock.set(moment)
        return self


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[Env]:
    clock = FrozenClock(T0)
    calendars = tmp_path / "calendars"
    calendars.mkdir()
    engine = Engine(
        db_url, workflows=WORKFLOWS, clock=clock, migrate=True, calendar_dirs=[calendars]
    )
    try:
        yield Env(engine, clock, calendars, db_url)
    finally:
        engine.close()


# ------------------------------------------------------------------ helpers


def submit_review(env: Env, at: datetime, actor: Actor = CLERK) -> str:
    """Start a dl_review instance and submit it at *at*; return its id."""
    env.clock.set(at)
    inst = env.engine.start("dl_review", actor=actor)
    env.engine.fire(inst.id, "submit", actor=actor)
    return inst.id


def timers(engine: Engine, iid: str) -> list[Any]:
    with engine._db.connect() as conn:
        return list(
            conn.execute(
                sa.select(t.timers).where(t.timers.c.instance_id == iid).order_by(t.timers.c.id)
            )
        )


def deadline_rows(engine: Engine, iid: str) -> list[Any]:
    with engine._db.connect() as conn:
        return list(
            conn.execute(
                sa.select(t.deadlines)
                .where(t.deadlines.c.instance_id == iid)
                .order_by(t.deadlines.c.id)
            )
        )


def pending(engine: Engine, iid: str) -> list[tuple[str, int, datetime]]:
    return [(r.kind, r.step, r.fire_at) for r in timers(engine, iid) if r.status == "pending"]


def deadline_events(engine: Engine, iid: str) -> list[Any]:
    return [e for e in engine.history(iid) if e.kind in DEADLINE_EVENTS]


def kinds(engine: Engine, iid: str) -> list[str]:
    return [e.kind for e in engine.history(iid)]


def fired(result: Any) -> list[tuple[str, str, int]]:
    """(instance, kind, step) of every timer a tick processed, in processing order."""
    return [
        (e["instance_id"], e["kind"], e["step"])
        for e in result.events
        if e["kind"] != "auto_transition"
    ]


# ------------------------------------------------------------------ computing the due time


def test_working_day_deadline_skips_tet(env: Env) -> None:
    """`after: 10 working days` from Mon 20/1/2025 is due at the end of Mon 10/2 (Tết skipped)."""
    e = env.engine
    iid = submit_review(env, T0)
    [d] = e.deadlines(iid)
    assert (d.kind, d.name, d.state, d.status) == ("state", "reviewing", "reviewing", "active")
    assert d.due_at == DUE
    assert d.due_at.isoformat() == "2025-02-10T16:59:59.999999+00:00"
    assert d.label == "Hạn thẩm định"
    assert (d.escalation_step, d.escalation_steps) == (0, 2)
    assert d.next_action_at == R0
    assert not d.overdue and d.working_days_late == 0
    assert pending(e, iid) == [
        ("remind", 0, R0),
        ("remind", 1, R1),
        ("due", 0, DUE),
        ("escalate", 0, DUE),
        ("escalate", 1, ESC2),
    ]
    [row] = deadline_rows(e, iid)
    assert (row.period, row.anchor_at, row.base_due_at) == ("10 working days", T0, DUE)
    assert row.entry_seq == 2  # the 'submit' event entered the state
    assert e.verify() == []


def test_state_without_deadline_has_none(env: Env) -> None:
    """A state without `deadline` (draft) creates no deadline and no timers."""
    e = env.engine
    inst = e.start("dl_review", actor=CLERK)
    assert e.deadlines(inst.id) == []
    assert timers(e, inst.id) == []


def test_reminders_fire_at_eight_local_before_the_due_day(env: Env) -> None:
    """Reminders fire at 08:00 local 3 and 1 working days before the due day, not earlier."""
    e = env.engine
    iid = submit_review(env, T0)
    assert e.tick(now=R0 - timedelta(microseconds=1)).processed == 0
    r = env.at(R0).engine.tick()
    assert fired(r) == [(iid, "reminder", 0)]
    assert (r.fired, r.skipped, r.cancelled) == (1, 0, 0)
    ev = deadline_events(e, iid)[-1]
    assert (ev.kind, ev.actor_id, ev.at, ev.to_state) == ("reminder", SYSTEM_ACTOR, R0, "reviewing")
    assert ev.detail is not None
    assert ev.detail["step"] == 0
    assert ev.detail["notify"] == ["head", "author"]
    assert ev.detail["fire_at"] == R0.isoformat()
    assert ev.detail["due_at"] == DUE.isoformat()
    assert ev.detail["deadline"] == "state:reviewing"
    row = timers(e, iid)[0]
    assert (row.kind, row.status, row.fired_at) == ("remind", "fired", R0)
    assert e.tick(now=R1 - timedelta(seconds=1)).processed == 0
    assert fired(env.at(R1).engine.tick()) == [(iid, "reminder", 1)]
    assert e.tick(now=DUE - timedelta(microseconds=1)).processed == 0
    assert kinds(e, iid) == ["started", "transition", "reminder", "reminder"]
    assert e.verify() == []


def test_catch_up_after_downtime_fires_in_due_order(env: Env) -> None:
    """After downtime one tick fires everything that fell due, across instances, by fire time."""
    e = env.engine
    a = submit_review(env, T0)
    b = submit_review(env, utc(2025, 2, 3, 3))  # due end of Mon 17/2; reminders 12/2 and 14/2
    assert e.deadlines(b)[0].due_at == eod(2025, 2, 17)
    now = utc(2025, 2, 14, 2)  # the runner was down from before 5/2 until Friday 14/2 09:00
    r = env.at(now).engine.tick()
    assert fired(r) == [
        (a, "reminder_skipped", 0),  # 5/2: A's due has passed by now
        (a, "reminder_skipped", 1),  # 7/2
        (a, "deadline_missed", 0),  # 10/2 end
        (a, "escalation", 0),  # 10/2 end
        (b, "reminder", 0),  # 12/2 08:00: B is not due yet, so it is sent
        (a, "escalation", 1),  # 13/2 end: fires 'expire'
        (b, "reminder", 1),  # 14/2 08:00
    ]
    fire_times = [ev["fire_at"] for ev in r.events if ev["kind"] != "auto_transition"]
    assert fire_times == sorted(fire_times)
    for iid in (a, b):
        hist = deadline_events(e, iid)
        stamps = [ev.detail["fire_at"] for ev in hist]
        assert stamps == sorted(stamps)
        done = sorted(
            (row.fire_at.isoformat(), row.kind, row.step)
            for row in timers(e, iid)
            if row.status in ("fired", "skipped")
        )
        assert stamps == [s for s, _, _ in done]
    assert e.get(a).state == "expired"
    assert e.get(b).state == "reviewing"
    assert [x for x in kinds(e, a) if x != "started"] == [
        "transition",
        "reminder_skipped",
        "reminder_skipped",
        "deadline_missed",
        "escalation",
        "escalation",
        "transition",
    ]
    assert e.tick().processed == 0
    assert e.verify() == []


def test_late_reminder_is_skipped_unless_configured(env: Env) -> None:
    """A reminder whose deadline already passed is recorded reminder_skipped, or sent if asked."""
    e = env.engine
    a = submit_review(env, T0)
    r = env.at(utc(2025, 2, 11, 2)).engine.tick()
    assert (r.fired, r.skipped) == (2, 2)  # due + first escalation; both reminders skipped
    skipped = [ev for ev in e.history(a) if ev.kind == "reminder_skipped"]
    assert [ev.detail["step"] for ev in skipped] == [0, 1]
    assert all("already passed" in ev.detail["reason"] for ev in skipped)
    assert all("notify" not in ev.detail for ev in skipped)
    rows = timers(e, a)
    assert [(x.kind, x.status) for x in rows[:2]] == [("remind", "skipped")] * 2
    assert all("already passed" in x.note for x in rows[:2])

    b = submit_review(env, utc(2025, 2, 11, 2))  # due end of 25/2
    with Engine(env.url, clock=env.clock, skip_late_reminders=False) as sender:
        r = sender.tick(now=utc(2025, 2, 26, 2))
    assert [k for i, k, _ in fired(r) if i == b] == [
        "reminder",
        "reminder",
        "deadline_missed",
        "escalation",
    ]
    sent = [ev for ev in e.history(b) if ev.kind.startswith("reminder")]
    assert [ev.kind for ev in sent] == ["reminder", "reminder"]
    assert sent[0].detail["notify"] == ["head", "author"]
    assert [x.status for x in timers(e, b)[:2]] == ["fired", "fired"]
    assert e.verify() == []


# ------------------------------------------------------------------ leaving and re-entering


def test_leaving_the_state_cancels_its_timers(env: Env) -> None:
    """Leaving the state closes its deadline and cancels its timers; a later tick fires nothing."""
    e = env.engine
    iid = submit_review(env, T0)
    left = utc(2025, 2, 3, 3)
    env.at(left).engine.fire(iid, "send_back", actor=HEAD)
    rows = timers(e, iid)
    assert len(rows) == 5
    assert {(x.status, x.note) for x in rows} == {("cancelled", "left the state")}
    [d] = deadline_rows(e, iid)
    assert (d.status, d.closed_at) == ("closed", left)
    assert e.deadlines(iid) == []
    r = env.at(utc(2025, 6, 1)).engine.tick()
    assert (r.processed, r.events) == (0, [])
    assert deadline_events(e, iid) == []
    assert e.overdue() == []
    assert e.verify() == []


def test_reentering_the_state_gets_a_fresh_deadline(env: Env) -> None:
    """Re-entering a state starts a new deadline; timers of the earlier entry never fire."""
    e = env.engine
    iid = submit_review(env, T0)
    env.at(utc(2025, 2, 3, 3)).engine.fire(iid, "send_back", actor=HEAD)
    back = utc(2025, 2, 4, 2)  # Tuesday 09:00 local
    inst = env.at(back).engine.fire(iid, "resubmit", actor=CLERK)
    assert inst.state == "reviewing"
    [d] = e.deadlines(iid)
    assert d.due_at == eod(2025, 2, 18)  # 10 working days from Tuesday 4/2
    old, new = deadline_rows(e, iid)
    assert (old.status, new.status) == ("closed", "active")
    assert new.entry_seq == e.history(iid)[-1].seq == 4
    assert old.entry_seq == 2
    assert pending(e, iid)[0] == ("remind", 0, at8(2025, 2, 13))

    # the entry check: an old-entry timer that somehow is still pending (here forced back by
    # hand, with its deadline forced open) is cancelled, never fired, for the new entry
    old_due = next(x for x in timers(e, iid) if x.deadline_id == old.id and x.kind == "due")
    with e._db.begin() as conn:
        conn.execute(t.timers.update().where(t.timers.c.id == old_due.id).values(status="pending"))
        conn.execute(t.deadlines.update().where(t.deadlines.c.id == old.id).values(status="active"))
    r = env.at(utc(2025, 2, 11, 2)).engine.tick()
    assert (r.fired, r.cancelled, r.events) == (0, 1, [])
    row = next(x for x in timers(e, iid) if x.id == old_due.id)
    assert (row.status, row.note) == ("cancelled", "instance no longer in that state entry")
    with e._db.begin() as conn:
        conn.execute(t.deadlines.update().where(t.deadlines.c.id == old.id).values(status="closed"))
    assert deadline_events(e, iid) == []

    r = env.at(utc(2025, 2, 19, 2)).engine.tick()
    assert [k for _, k, _ in fired(r)] == [
        "reminder_skipped",
        "reminder_skipped",
        "deadline_missed",
        "escalation",
    ]
    assert {ev["due_at"] for ev in r.events} == {eod(2025, 2, 18).isoformat()}
    assert e.verify() == []


# ------------------------------------------------------------------ from / at


def test_from_a_data_date_plus_one_year(env: Env) -> None:
    """`from: data.applied_on` + `after: 1 year` counts from that day (a Saturday end moves on)."""
    e = env.engine
    a = e.start("dl_from", actor=CLERK, data={"applied_on": "2024-03-15"})
    b = e.start("dl_from", actor=CLERK, data={"applied_on": "2024-01-10"})
    # 15/3/2025 is a Saturday: the period ends with Monday 17/3
    assert e.deadlines(a.id)[0].due_at == eod(2025, 3, 17)
    assert e.deadlines(b.id)[0].due_at == eod(2025, 1, 10)
    [row] = deadline_rows(e, a.id)
    assert row.period == "1 year"
    assert row.anchor_at == eod(2024, 3, 15)
    assert pending(e, a.id) == [("due", 0, eod(2025, 3, 17))]
    r = e.tick(now=eod(2025, 3, 17))
    assert sorted(fired(r)) == sorted([(a.id, "deadline_missed", 0), (b.id, "deadline_missed", 0)])
    assert e.verify() == []


def test_at_the_parents_date_is_due_at_the_end_of_that_day(env: Env) -> None:
    """`at: parent.data.deadline_date` is due at the end of that day, local time."""
    e = env.engine
    camp = e.start("dl_campaign", actor=OFFICER, data={"deadline_date": "2025-03-31"})
    entry = e.start("dl_entry", actor=CLERK, parent=camp.id)
    [d] = e.deadlines(entry.id)
    assert d.due_at == eod(2025, 3, 31)
    assert d.label == "Campaign deadline"
    [row] = deadline_rows(e, entry.id)
    assert (row.period, row.anchor_at, row.base_due_at) == (None, None, eod(2025, 3, 31))
    assert pending(e, entry.id) == [
        ("remind", 0, at8(2025, 3, 27)),
        ("due", 0, eod(2025, 3, 31)),
    ]
    assert e.deadlines(camp.id) == []
    assert e.verify() == []


def test_at_a_datetime_field_is_due_at_that_moment(env: Env) -> None:
    """`at: data.hearing_at` (a datetime field) is due at that very moment, not at the day's end."""
    e = env.engine
    inst = e.start("dl_hearing", actor=CLERK, data={"hearing_at": "2025-03-10T09:30:00+07:00"})
    assert e.deadlines(inst.id)[0].due_at == utc(2025, 3, 10, 2, 30)
    assert pending(e, inst.id) == [
        ("remind", 0, utc(2025, 3, 10, 0, 30)),
        ("due", 0, utc(2025, 3, 10, 2, 30)),
    ]
    seven = e.start("dl_hearing", actor=CLERK, data={"hearing_at": "2025-03-10T07:00:00+07:00"})
    assert e.deadlines(seven.id)[0].due_at == utc(2025, 3, 10, 0, 0)


def test_at_a_datetime_field_at_midnight_utc_is_due_at_that_moment(env: Env) -> None:
    """07:00 in Hanoi written in UTC (`...T00:00:00Z`) is due at that moment, like `+07:00`."""
    e = env.engine
    inst = e.start("dl_hearing", actor=CLERK, data={"hearing_at": "2025-03-10T00:00:00Z"})
    assert e.deadlines(inst.id)[0].due_at == utc(2025, 3, 10, 0, 0)  # not eod(2025, 3, 10)


# ------------------------------------------------------------------ escalations


def test_escalation_chain_ends_in_expired_with_the_set_field(env: Env) -> None:
    """Notify at due, then 3 working days later `fire: expire` with `set`: the instance expires."""
    e = env.engine
    iid = submit_review(env, T0)
    r = e.tick(now=DUE)
    assert [k for _, k, _ in fired(r)] == [
        "reminder",  # at the due instant itself a reminder is not yet late
        "reminder",
        "deadline_missed",
        "escalation",
    ]
    first = deadline_events(e, iid)[-1]
    assert first.detail["escalation"] == 1 and first.detail["of"] == 2
    assert first.detail["notify"] == ["head"]
    assert "fire" not in first.detail
    assert e.deadlines(iid)[0].escalation_step == 1
    assert e.tick(now=ESC2 - timedelta(microseconds=1)).processed == 0

    r = env.at(ESC2).engine.tick()
    assert [ev["kind"] for ev in r.events] == ["auto_transition", "escalation"]
    inst = e.get(iid)
    assert inst.state == "expired"
    assert inst.data["expired_reason"] == "no decision within the deadline"
    esc, tr = e.history(iid)[-2:]
    assert (esc.kind, esc.detail["escalation"], esc.detail["fire"]) == ("escalation", 2, "expire")
    assert esc.data_delta == {"expired_reason": "no decision within the deadline"}
    assert (tr.kind, tr.trigger, tr.from_state, tr.to_state) == (
        "transition",
        "expire",
        "reviewing",
        "expired",
    )
    assert tr.actor_id == SYSTEM_ACTOR and tr.actor_roles == ("system",)
    assert tr.comment is not None and "escalation 2/2" in tr.comment
    assert "Hạn thẩm định" in tr.comment
    [d] = deadline_rows(e, iid)
    assert (d.status, d.escalations_done) == ("closed", 2)
    assert [x.status for x in timers(e, iid)] == ["fired"] * 5
    assert e.deadlines(iid) == []
    assert e.verify() == []


def test_escalation_refused_by_a_guard_is_recorded_and_stays(env: Env) -> None:
    """An escalation whose `fire` a guard refuses records escalation_failed with the reasons."""
    e = env.engine
    iid = submit_review(env, T0)
    env.at(utc(2025, 2, 3, 3)).engine.fire(iid, "hold", actor=HEAD)
    r = env.at(ESC2).engine.tick()
    assert [k for _, k, _ in fired(r)][-1] == "escalation_failed"
    assert "auto_transition" not in [ev["kind"] for ev in r.events]
    inst = e.get(iid)
    assert inst.state == "reviewing"
    esc, failed = e.history(iid)[-2:]
    assert esc.kind == "escalation"
    assert failed.kind == "escalation_failed"
    assert failed.actor_id == SYSTEM_ACTOR
    assert failed.detail["reasons"] == ["the review is on hold"]
    assert failed.detail["fire"] == "expire" and failed.detail["escalation"] == 2
    assert "transition" not in [ev.kind for ev in e.history(iid)[3:]]
    [d] = e.deadlines(iid)
    assert (d.status, d.escalation_step, d.escalation_steps) == ("active", 2, 2)
    assert d.next_action_at is None
    assert timers(e, iid)[-1].status == "fired"
    assert e.tick(now=ESC2 + timedelta(days=30)).processed == 0
    assert e.verify() == []


# ------------------------------------------------------------------ clocks


def test_paused_clock_does_not_count_the_paused_time(env: Env) -> None:
    """A clock paused in `amending` moves its due by the paused working days; nothing fires then."""
    e = env.engine
    env.clock.set(utc(2025, 3, 3, 3))  # Monday 3/3
    inst = e.start("dl_clock", actor=CLERK)
    assert e.deadlines(inst.id) == []  # 'received' is not a state the clock runs in
    e.fire(inst.id, "review", actor=CLERK)
    [d] = e.deadlines(inst.id)
    assert (d.kind, d.name, d.due_at, d.status) == ("clock", "handling", eod(2025, 3, 17), "active")
    assert d.next_action_at == at8(2025, 3, 13)

    env.at(utc(2025, 3, 5, 3)).engine.fire(inst.id, "request_changes", actor=HEAD)  # Wed 5/3
    [d] = e.deadlines(inst.id)
    assert (d.status, d.state, d.next_action_at) == ("paused", "amending", None)
    assert pending(e, inst.id) == []
    assert {x.note for x in timers(e, inst.id)} == {"clock paused"}
    # past the original reminder, due and escalation: nothing fires while paused
    r = env.at(utc(2025, 3, 18, 20)).engine.tick()
    assert (r.processed, r.events) == (0, [])
    assert e.overdue() == []

    env.at(utc(2025, 3, 19, 3)).engine.fire(inst.id, "amended", actor=CLERK)  # Wed 19/3
    # 10 working days paused (6/3 to 19/3): the clock is now due 10 working days later
    [d] = e.deadlines(inst.id)
    assert (d.status, d.due_at) == ("active", eod(2025, 3, 31))
    assert pending(e, inst.id) == [
        ("remind", 0, at8(2025, 3, 27)),
        ("due", 0, eod(2025, 3, 31)),
        ("escalate", 0, eod(2025, 4, 1)),
    ]
    [row] = deadline_rows(e, inst.id)
    assert [s["kind"] for s in row.shifts] == ["pause"]
    assert row.base_due_at == eod(2025, 3, 17)
    assert e.tick(now=at8(2025, 3, 27) - timedelta(seconds=1)).processed == 0
    r = env.at(at8(2025, 3, 27)).engine.tick()
    assert fired(r) == [(inst.id, "reminder", 0)]
    assert [ev.detail["due_at"] for ev in deadline_events(e, inst.id)] == [
        eod(2025, 3, 31).isoformat()
    ]
    env.at(utc(2025, 3, 28, 3)).engine.fire(inst.id, "decide", actor=HEAD)
    assert e.deadlines(inst.id) == []
    assert {x.status for x in timers(e, inst.id)} == {"cancelled", "fired"}
    assert e.tick(now=utc(2025, 5, 1)).processed == 0
    assert e.verify() == []


# ------------------------------------------------------------------ supervision


def test_overdue_and_due_soon_per_unit_and_workflow(env: Env) -> None:
    """overdue()/due_soon() filter by unit and workflow and report lateness and escalation step."""
    e = env.engine
    a = submit_review(env, T0)  # u1, due 10/2
    b = submit_review(env, T0, CLERK2)  # u2, due 10/2
    c = submit_review(env, utc(2025, 2, 5, 2))  # u1, due 19/2
    env.clock.set(T0)
    d = e.start("dl_from", actor=CLERK, data={"applied_on": "2024-02-12"}).id  # u1, due 12/2/2025
    late = submit_review(env, utc(2025, 2, 13, 3))  # u1, due 27/2: beyond the window
    now = utc(2025, 2, 13, 3)  # Thursday 13/2 10:00 local
    e.tick(now=now)

    over = e.overdue(unit="u1", now=now)
    assert [(x.instance_id, x.workflow) for x in over] == [(a, "dl_review"), (d, "dl_from")]
    oa, od = over
    assert oa.overdue and oa.working_days_late == 3  # 11, 12, 13 February
    assert oa.late_by == now - DUE
    assert (oa.escalation_step, oa.escalation_steps, oa.next_action_at) == (1, 2, ESC2)
    assert od.working_days_late == 1
    assert (od.escalation_step, od.escalation_steps, od.next_action_at) == (0, 0, None)
    assert od.to_dict()["deadline"] == "state:open"
    assert od.to_dict()["working_days_late"] == 1
    assert [x.instance_id for x in e.overdue(workflow="dl_review", now=now)] == [a, b]
    assert [x.instance_id for x in e.overdue(unit="u2", now=now)] == [b]
    assert e.overdue(unit="u2", workflow="dl_from", now=now) == []
    assert [x.instance_id for x in e.overdue(actor=HEAD2, now=now)] == [b]

    soon = e.due_soon("5 working days", unit="u1", now=now)
    assert [x.instance_id for x in soon] == [c]
    assert not soon[0].overdue and soon[0].working_days_late == 0
    assert soon[0].due_at == eod(2025, 2, 19)
    assert e.due_soon("5 working days", unit="u2", now=now) == []
    assert e.due_soon("5 working days", workflow="dl_from", now=now) == []
    assert {x.instance_id for x in e.due_soon("20 working days", now=now)} == {c, late}
    assert e.verify() == []


def test_due_soon_includes_a_deadline_due_on_the_last_day_of_the_window(env: Env) -> None:
    """A deadline due at the end of the 5th working day is 'due within 5 working days'."""
    e = env.engine
    c = submit_review(env, utc(2025, 2, 6, 2))  # due end of Thursday 20/2
    now = utc(2025, 2, 13, 3)  # Thursday 13/2: 5 working days end with Thursday 20/2
    assert e.calendar().due(now, "5 working days") == eod(2025, 2, 20)
    assert [x.instance_id for x in e.due_soon("5 working days", now=now)] == [c]


# ------------------------------------------------------------------ extending and recomputing


def test_extend_deadline_moves_due_and_timers(env: Env) -> None:
    """extend_deadline(by=...) moves the due time and its timers and records the reason."""
    e = env.engine
    iid = submit_review(env, T0)
    env.at(utc(2025, 2, 11, 3)).engine.tick()
    assert e.deadlines(iid)[0].escalation_step == 1
    reason = "waiting for the expert opinion"
    out = e.extend_deadline(iid, by="10 working days", reason=reason, actor=HEAD)
    new_due = eod(2025, 2, 24)  # 10 working days after 10/2
    assert [(x.due_at, x.escalation_step, x.overdue) for x in out] == [(new_due, 0, False)]
    assert pending(e, iid) == [
        ("remind", 0, at8(2025, 2, 19)),
        ("remind", 1, at8(2025, 2, 21)),
        ("due", 0, new_due),
        ("escalate", 0, new_due),
        ("escalate", 1, eod(2025, 2, 27)),
    ]
    old_esc = [x for x in timers(e, iid) if x.fire_at == ESC2]
    assert [(x.status, x.note) for x in old_esc] == [("cancelled", "rescheduled")]
    ev = e.history(iid)[-1]
    assert (ev.kind, ev.actor_id, ev.comment) == ("deadline_extended", "head1", reason)
    assert ev.detail["by"] == "10 working days"
    assert ev.detail["changes"] == [
        {"deadline": "state:reviewing", "from": DUE.isoformat(), "to": new_due.isoformat()}
    ]
    [row] = deadline_rows(e, iid)
    assert row.base_due_at == DUE and row.due_at == new_due
    assert [(s["kind"], s["by"], s["reason"]) for s in row.shifts] == [
        ("extension", "10 working days", reason)
    ]
    assert e.tick(now=ESC2).processed == 0  # the old escalation no longer fires
    assert e.get(iid).state == "reviewing"
    assert e.overdue(now=ESC2) == []

    with pytest.raises(TransitionNotAllowed, match="reason is required"):
        e.extend_deadline(iid, by="1 day", reason="  ", actor=HEAD)
    with pytest.raises(TransitionNotAllowed, match="either by="):
        e.extend_deadline(iid, by="1 day", until=utc(2025, 3, 1), reason="x", actor=HEAD)
    assert e.deadlines(iid)[0].due_at == new_due
    assert e.verify() == []


def test_extend_children_extends_every_child(env: Env) -> None:
    """extend_children(campaign) extends the deadline of every child of that campaign only."""
    e = env.engine
    camp = e.start("dl_campaign", actor=OFFICER, data={"deadline_date": "2025-03-31"})
    other = e.start("dl_campaign", actor=OFFICER, data={"deadline_date": "2025-03-31"})
    kids = [e.start("dl_entry", actor=CLERK, parent=camp.id).id for _ in range(3)]
    stranger = e.start("dl_entry", actor=CLERK, parent=other.id).id
    n = e.extend_children(camp.id, by="10 working days", reason="campaign extended", actor=OFFICER)
    assert n == 3
    for kid in kids:
        # 10 working days after 31/3, Hùng Kings' day (7/4) skipped
        assert [x.due_at for x in e.deadlines(kid)] == [eod(2025, 4, 15)]
        ev = e.history(kid)[-1]
        assert (ev.kind, ev.comment, ev.actor_id) == (
            "deadline_extended",
            "campaign extended",
            "officer1",
        )
        assert pending(e, kid)[0] == ("remind", 0, at8(2025, 4, 11))
    assert [x.due_at for x in e.deadlines(stranger)] == [eod(2025, 3, 31)]
    assert kinds(e, stranger) == ["started"]
    assert kinds(e, camp.id) == ["started"]
    assert e.verify() == []


def _calendar_with_extra_day_off(folder: Path, day: str) -> Path:
    """Write vn-extra.yaml: the shipped 2025 with one more day off (a year replaces the year)."""
    shipped = (shipped_calendars_dir() / "vn.yaml").read_text(encoding="utf-8")
    start = shipped.index("\n  2025:\n")
    marker = "    days_off:\n"
    at = shipped.index(marker, start) + len(marker)
    end = shipped.index("\n  2026:\n")
    year = shipped[start + 1 : end]
    extra = f"      - date: {day}\n        name: Extra day off (test)\n"
    year = year.replace(marker, marker + extra, 1)
    assert shipped[at:].startswith("      - date: 2025-01-01")
    path = folder / "vn-extra.yaml"
    path.write_text("calendar: vn\nyears:\n" + year + "\n", encoding="utf-8")
    return path


def test_recompute_after_calendar_change_moves_the_due(env: Env) -> None:
    """A day off added in a calendar folder moves open deadlines and records deadline_recomputed."""
    e = env.engine
    iid = submit_review(env, T0)
    env.clock.set(T0)
    untouched = e.start("dl_from", actor=CLERK, data={"applied_on": "2024-03-15"}).id
    closed = submit_review(env, T0)
    e.fire(closed, "finish", actor=HEAD)
    assert e.recompute_deadlines() == []  # nothing changed yet

    _calendar_with_extra_day_off(env.calendars, "2025-02-05")
    moved = e.recompute_deadlines()
    assert moved == [
        {
            "instance_id": iid,
            "deadline": "state:reviewing",
            "from": DUE.isoformat(),
            "to": eod(2025, 2, 11).isoformat(),
        }
    ]
    assert not e.calendar().is_working_day(date(2025, 2, 5))  # reloaded by recompute
    assert e.calendar().is_working_day(date(2025, 2, 4))
    assert e.calendar().days_off(2025)[date(2025, 2, 5)] == "Extra day off (test)"
    [d] = e.deadlines(iid)
    assert d.due_at == eod(2025, 2, 11)
    assert pending(e, iid) == [
        ("remind", 0, at8(2025, 2, 6)),  # 3 working days before 11/2, 5/2 being off
        ("remind", 1, at8(2025, 2, 10)),
        ("due", 0, eod(2025, 2, 11)),
        ("escalate", 0, eod(2025, 2, 11)),
        ("escalate", 1, eod(2025, 2, 14)),
    ]
    ev = e.history(iid)[-1]
    assert (ev.kind, ev.actor_id) == ("deadline_recomputed", "system:calendar")
    assert ev.detail["to"] == eod(2025, 2, 11).isoformat()
    assert ev.detail["fingerprint"] == e.calendar().fingerprint
    assert deadline_rows(e, iid)[0].calendar_fingerprint == e.calendar().fingerprint
    assert e.deadlines(untouched)[0].due_at == eod(2025, 3, 17)
    assert deadline_events(e, untouched) == []
    assert deadline_events(e, closed) == []
    assert e.recompute_deadlines() == []  # recomputed once per calendar change
    # at the old due time only the (moved) reminders fire: nothing is missed yet
    assert [k for _, k, _ in fired(e.tick(now=DUE))] == ["reminder", "reminder"]
    assert [k for _, k, _ in fired(e.tick(now=eod(2025, 2, 11)))] == [
        "deadline_missed",
        "escalation",
    ]
    assert e.verify() == []


def test_recompute_does_not_repeat_a_missed_deadline(env: Env) -> None:
    """A deadline already missed, still past due after a calendar change, is not missed twice."""
    e = env.engine
    env.clock.set(utc(2025, 3, 3, 3))
    iid = e.start("dl_from", actor=CLERK, data={"applied_on": "2024-03-15"}).id  # due 17/3
    env.clock.set(utc(2025, 3, 20, 3))
    assert [k for _, k, _ in fired(e.tick())] == ["deadline_missed"]
    _calendar_with_extra_day_off(env.calendars, "2025-03-17")  # the due day becomes a day off
    moved = e.recompute_deadlines()
    assert [m["to"] for m in moved] == [eod(2025, 3, 18).isoformat()]  # still in the past
    e.tick()
    assert [ev.kind for ev in deadline_events(e, iid)] == [
        "deadline_missed",
        "deadline_recomputed",
    ]


def test_extend_until_a_date_and_extending_a_paused_clock(env: Env) -> None:
    """until= a date sets the end of that day; a paused clock keeps the extension when resumed."""
    e = env.engine
    iid = submit_review(env, T0)
    [d] = e.extend_deadline(iid, until=date(2025, 2, 28), reason="new schedule", actor=HEAD)
    assert d.due_at == eod(2025, 2, 28)
    assert e.history(iid)[-1].detail["until"] == "2025-02-28"
    assert pending(e, iid)[2] == ("due", 0, eod(2025, 2, 28))

    env.clock.set(utc(2025, 3, 3, 3))
    inst = e.start("dl_clock", actor=CLERK)
    e.fire(inst.id, "review", actor=CLERK)  # due 17/3
    env.at(utc(2025, 3, 5, 3)).engine.fire(inst.id, "request_changes", actor=HEAD)
    [d] = e.extend_deadline(inst.id, by="5 working days", reason="expert", actor=HEAD)
    assert (d.status, d.due_at) == ("paused", eod(2025, 3, 24))
    assert pending(e, inst.id) == []  # still paused: nothing scheduled
    env.at(utc(2025, 3, 7, 3)).engine.fire(inst.id, "amended", actor=CLERK)  # 2 days paused
    [d] = e.deadlines(inst.id)
    assert (d.status, d.due_at) == ("active", eod(2025, 3, 26))
    assert pending(e, inst.id)[1] == ("due", 0, eod(2025, 3, 26))
    assert e.verify() == []


def test_a_second_tick_at_the_same_time_fires_nothing(env: Env) -> None:
    """Ticking twice at the same moment fires each timer once."""
    e = env.engine
    a = submit_review(env, T0)
    b = submit_review(env, utc(2025, 1, 21, 3))
    env.clock.set(ESC2)
    first = e.tick()
    assert first.processed == 9  # A: 2 skipped + due + 2 escalations; B: 2 skipped + 2 fired
    again = e.tick()
    assert (again.processed, again.retried, again.events) == (0, 0, [])
    assert e.get(a).state == "expired"
    assert e.get(b).state == "reviewing"
    assert len(deadline_events(e, a)) == 5 and len(deadline_events(e, b)) == 4
    assert e.verify() == []
