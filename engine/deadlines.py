"""Deadlines: durable timers for state deadlines and named clocks, and the runner that fires them.

A deadline row holds when something is due and how that was computed (so it can be extended,
paused, or recomputed when the calendar changes); its timer rows say when each reminder, the
due notice and each escalation step fire. Both are written in the same transaction as the
transition that enters the state (or starts the clock), and closed in the transaction that
leaves it.

The runner claims due timers in short transactions (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL; SQLite has a single writer), processes each inside a savepoint together with
everything it causes (history events, escalation transitions), and marks it fired in the same
transaction: a runner killed mid-batch loses its transaction, and the timers are simply picked
up again. Nothing fires twice, nothing is lost.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog

from sangkien.calendar import Calendar, Duration, parse_duration
from sangkien.definition import ClockSpec, DeadlineSpec, Definition
from sangkien.errors import ConcurrencyConflict, SangkienError, TransitionNotAllowed
from sangkien.expressions import ExpressionError
from sangkien.logs import held_until_commit, hot_logger, when_committed
from sangkien.model import Actor
from sangkien.store import schema as t
from sangkien.store.fast import DeadlineWrites

if TYPE_CHECKING:
    from sangkien.runtime import Engine

__all__ = ["DeadlineStatus", "TickResult"]

log = structlog.get_logger("sangkien")
_hot_log = hot_logger("sangkien")  # lines logged within a transition


@dataclass(frozen=True, slots=True)
class DeadlineStatus:
    """An open deadline as supervisors see it."""

    instance_id: str
    workflow: str
    unit: str
    state: str
    kind: str
    name: str
    label: str | None
    due_at: datetime
    status: str
    late_by: timedelta
    working_days_late: int
    escalation_step: int
    escalation_steps: int
    next_action_at: datetime | None
    title: str | None = None

    @property
    def overdue(self) -> bool:
        return self.late_by > timedelta(0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "workflow": self.workflow,
            "unit": self.unit,
            "state": self.state,
            "deadline": f"{self.kind}:{self.name}",
            "label": self.label,
            "title": self.title,
            "due_at": self.due_at.isoformat(),
            "status": self.status,
            "overdue": self.overdue,
            "late_by_seconds": int(self.late_by.total_seconds()),
            "working_days_late": self.working_days_late,
            "escalation_step": self.escalation_step,
            "escalation_steps": self.escalation_steps,
            "next_action_at": self.next_action_at.isoformat() if self.next_action_at else None,
        }


@dataclass
class TickResult:
    """What one runner pass did."""

    fired: int = 0
    skipped: int = 0
    cancelled: int = 0
    retried: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.fired + self.skipped + self.cancelled


def spec_of(definition: Definition, kind: str, name: str) -> DeadlineSpec | ClockSpec | None:
    """The deadline specification a deadline row was made from."""
    if kind == "clock":
        return definition.model.clocks.get(name)
    state = definition.model.states.get(name)
    return state.deadline if state is not None else None


def _label(label: Any, lang: str) -> str | None:
    if label is None or isinstance(label, str):
        return label
    return str(label.get(lang) or next(iter(label.values()), None))


_FIELD_REF = re.compile(r"^\s*(parent\.)?data\.([A-Za-z_][A-Za-z0-9_]*)\s*$")


def _as_moment(value: Any, *, date_field: bool = False) -> datetime | date | None:
    """Read a `from`/`at` result; *date_field*: it reads a date field (a day, not a moment)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date() if date_field else value
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            if len(value) == 10:
                return date.fromisoformat(value)
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


class Scheduler:
    """Creates, closes, pauses, resumes, extends and recomputes deadlines inside transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._fast = DeadlineWrites(engine._hot)

    # ------------------------------------------------------------ computation

    def _apply_shifts(
        self, cal: Calendar, base: datetime, shifts: Sequence[Mapping[str, Any]], *, exact: bool
    ) -> datetime:
        due = base
        for s in shifts:
            if s["kind"] == "pause":
                start = datetime.fromisoformat(s["from"])
                end = datetime.fromisoformat(s["to"])
                if exact:
                    due = due + (end - start)
                    continue
                a, b = cal.local_date(start), cal.local_date(end)
                if s.get("unit") == "working_days":
                    n = sum(
                        1
                        for i in range(1, (b - a).days + 1)
                        if cal.is_working_day(a + timedelta(days=i))
                    )
                    if n:
                        due = cal.after(due, Duration(n, "working_days"))
                elif (b - a).days > 0:
                    due = cal.after(due, Duration((b - a).days, "days"))
            elif s["kind"] == "extension":
                if s.get("until"):
                    until = _as_moment(s["until"])
                    if isinstance(until, datetime):
                        due = until
                    elif isinstance(until, date):
                        due = cal.end_of_day(until)
                else:
                    due = cal.after(due, parse_duration(s["by"]))
        return due

    def _base_due(
        self, cal: Calendar, anchor: datetime | None, period: str | None, at: datetime | None
    ) -> datetime:
        if period is not None and anchor is not None:
            return cal.due(anchor, parse_duration(period))
        assert at is not None
        return at

    def timers_for(
        self,
        cal: Calendar,
        spec: DeadlineSpec,
        due: datetime,
        now: datetime,
        *,
        escalations_from: int = 0,
        reminders: bool = True,
    ) -> list[tuple[str, int, datetime]]:
        out: list[tuple[str, int, datetime]] = []
        if reminders:
            for i, r in enumerate(spec.remind):
                at = cal.before(due, parse_duration(r))
                if at < due:
                    out.append(("remind", i, at))
        if escalations_from == 0:
            out.append(("due", 0, due))
        for j, step in enumerate(spec.escalate):
            if j >= escalations_from:
                out.append(("escalate", j, cal.after(due, parse_duration(step.after))))
        out.sort(key=lambda x: (x[2], {"remind": 0, "due": 1, "escalate": 2}[x[0]], x[1]))
        return out

    # ------------------------------------------------------------ creation

    def create(
        self,
        conn: sa.Connection,
        definition: Definition,
        inst: Any,
        *,
        kind: str,
        name: str,
        spec: DeadlineSpec,
        entry_seq: int,
        now: datetime,
        scope: Mapping[str, Any],
    ) -> bool:
        """Create a deadline (and its timers); False if it has no due time yet."""
        cal = self.engine.calendar(definition.model.calendar)
        source = spec.at or spec.from_
        computed = self._anchor_and_base(cal, definition, spec, scope, now)
        if computed is None:
            self._unset(inst, name, str(source))
            return False
        anchor, base = computed
        self._fast.insert_deadline(
            conn,
            {
                "instance_id": inst.id,
                "kind": kind,
                "name": name,
                "entry_seq": entry_seq,
                "status": "active",
                "workflow": inst.workflow,
                "unit": inst.unit,
                "calendar": cal.name,
                "anchor_at": anchor,
                "period": spec.after,
                "base_due_at": base,
                "shifts": [],
                "due_at": base,
                "paused_at": None,
                "escalations_done": 0,
                "calendar_fingerprint": cal.fingerprint,
                "created_at": now,
            },
            self.timers_for(cal, spec, base, now),
        )
        when_committed(
            _hot_log.get().info,
            "deadline.set",
            instance_id=inst.id,
            workflow=inst.workflow,
            deadline=f"{kind}:{name}",
            due_at=base.isoformat(),
        )
        return True

    def _anchor_and_base(
        self,
        cal: Calendar,
        definition: Definition,
        spec: DeadlineSpec,
        scope: Mapping[str, Any],
        now: datetime,
    ) -> tuple[datetime | None, datetime] | None:
        """What a deadline counts from (None for `at:`) and its due time; None if unset."""
        if spec.at is None and spec.from_ is None:
            return now, self._base_due(cal, now, spec.after, None)
        moment = self._evaluate(definition, str(spec.at or spec.from_), scope)
        if moment is None:
            return None
        point = moment if isinstance(moment, datetime) else cal.end_of_day(moment)
        if spec.at is not None:
            return None, point
        return point, self._base_due(cal, point, spec.after, None)

    def _evaluate(
        self, definition: Definition, source: str, scope: Mapping[str, Any]
    ) -> datetime | date | None:
        try:
            value = definition.expression(source).evaluate(scope)
        except ExpressionError:
            return None
        return _as_moment(value, date_field=self._is_date_field(definition, source))

    def _is_date_field(self, definition: Definition, source: str) -> bool:
        """Whether *source* is just ``data.X`` / ``parent.data.X`` of a field of type date."""
        m = _FIELD_REF.match(source)
        if m is None:
            return False
        fields = definition.model.fields
        if m.group(1):
            if definition.model.parent is None:
                return False
            try:
                fields = self.engine.definition(definition.model.parent).model.fields
            except SangkienError:
                return False
        spec = fields.get(m.group(2))
        return spec is not None and spec.type == "date"

    def _unset(self, inst: Any, name: str, source: str) -> None:
        when_committed(
            log.warning,
            "deadline.unset",
            instance_id=inst.id,
            workflow=inst.workflow,
            deadline=name,
            reason=f"`{source}` has no date value yet",
        )

    def _insert_timers(
        self,
        conn: sa.Connection,
        deadline_id: int,
        instance_id: str,
        timers: Sequence[tuple[str, int, datetime]],
    ) -> None:
        if timers:
            self._fast.insert_timers(
                conn,
                [
                    {
                        "deadline_id": deadline_id,
                        "instance_id": instance_id,
                        "kind": k,
                        "step": s,
                        "fire_at": at,
                        "status": "pending",
                    }
                    for k, s, at in timers
                ],
            )

    def _cancel_timers(self, conn: sa.Connection, deadline_ids: Sequence[int], note: str) -> None:
        if deadline_ids:
            self._fast.cancel_timers(conn, list(deadline_ids), note)

    # ------------------------------------------------------------ transitions

    def on_change(
        self,
        conn: sa.Connection,
        definition: Definition,
        inst: Any,
        *,
        trigger: str | None,
        entered: bool,
        entry_seq: int,
        now: datetime,
        scope: Mapping[str, Any],
        changed: Sequence[str] = (),
        left: str | None = None,
        new_instance: bool = False,
    ) -> None:
        """Keep deadlines in step with a change of *inst* (already written).

        *left* is the state the instance entered *inst.state* from (None: unknown): only a
        state with a deadline can leave one open to close, and a new instance has none.
        """
        wf = definition.model
        if not entered and changed:
            self._follow_data(conn, definition, inst, changed, now, scope)
        if entered and not new_instance and (left is None or wf.states[left].deadline is not None):
            self._fast.close_state(conn, inst.id, now, "left the state")
        if entered:
            spec = wf.states[inst.state].deadline
            if spec is not None:
                self.create(
                    conn,
                    definition,
                    inst,
                    kind="state",
                    name=inst.state,
                    spec=spec,
                    entry_seq=entry_seq,
                    now=now,
                    scope=scope,
                )
        if wf.clocks:
            self._clocks(
                conn,
                definition,
                inst,
                trigger=trigger,
                entered=entered,
                entry_seq=entry_seq,
                now=now,
                scope=scope,
            )

    def _follow_data(
        self,
        conn: sa.Connection,
        definition: Definition,
        inst: Any,
        changed: Sequence[str],
        now: datetime,
        scope: Mapping[str, Any],
    ) -> None:
        """A recorded action changed a date an `at:`/`from:` deadline reads: move the due."""
        wf = definition.model
        specs: list[tuple[str, str, DeadlineSpec]] = []
        state_spec = wf.states[inst.state].deadline
        if state_spec is not None:
            specs.append(("state", inst.state, state_spec))
        specs.extend(("clock", name, clock) for name, clock in wf.clocks.items())
        for kind, name, spec in specs:
            source = spec.at or spec.from_
            if source is None:
                continue
            refs = {r.name for r in definition.expression(source).field_refs if not r.parent}
            if not refs & set(changed):
                continue
            row = conn.execute(
                sa.select(t.deadlines).where(
                    t.deadlines.c.instance_id == inst.id,
                    t.deadlines.c.kind == kind,
                    t.deadlines.c.name == name,
                    t.deadlines.c.status.in_(("active", "paused")),
                )
            ).first()
            if row is None:
                continue
            cal = self.engine.calendar(wf.calendar)
            computed = self._anchor_and_base(cal, definition, spec, scope, now)
            if computed is None:
                continue
            anchor, base = computed
            exact = parse_duration(row.period).exact if row.period else False
            due = self._apply_shifts(cal, base, row.shifts, exact=exact)
            if due != row.due_at:
                self.reschedule(
                    conn,
                    row,
                    definition,
                    due,
                    now,
                    base_due_at=base,
                    anchor_at=anchor,
                    escalations_done=0,
                )
                when_committed(
                    log.info,
                    "deadline.moved",
                    instance_id=inst.id,
                    deadline=f"{kind}:{name}",
                    old_due=row.due_at.isoformat(),
                    new_due=due.isoformat(),
                    reason="data",
                )

    def _clocks(
        self,
        conn: sa.Connection,
        definition: Definition,
        inst: Any,
        *,
        trigger: str | None,
        entered: bool,
        entry_seq: int,
        now: datetime,
        scope: Mapping[str, Any],
    ) -> None:
        rows = {
            r.name: r
            for r in conn.execute(
                sa.select(t.deadlines).where(
                    t.deadlines.c.instance_id == inst.id,
                    t.deadlines.c.kind == "clock",
                    t.deadlines.c.status.in_(("active", "paused")),
                )
            )
        }
        cal = self.engine.calendar(definition.model.calendar)
        for cname, clock in definition.model.clocks.items():
            row = rows.get(cname)
            state = inst.state
            if row is None:
                starts = (trigger in clock.starts_on) if clock.starts_on else entered
                if starts and state in clock.runs_in:
                    self.create(
                        conn,
                        definition,
                        inst,
                        kind="clock",
                        name=cname,
                        spec=clock,
                        entry_seq=entry_seq,
                        now=now,
                        scope=scope,
                    )
                continue
            if trigger is not None and trigger in clock.stops_on:
                conn.execute(
                    t.deadlines.update()
                    .where(t.deadlines.c.id == row.id)
                    .values(status="closed", closed_at=now)
                )
                self._cancel_timers(conn, [row.id], f"clock stopped by {trigger}")
                when_committed(
                    log.info, "clock.stopped", instance_id=inst.id, clock=cname, trigger=trigger
                )
                continue
            if not entered:
                continue
            if state in clock.pauses_in and row.status == "active":
                conn.execute(
                    t.deadlines.update()
                    .where(t.deadlines.c.id == row.id)
                    .values(status="paused", paused_at=now)
                )
                self._cancel_timers(conn, [row.id], "clock paused")
                when_committed(log.info, "clock.paused", instance_id=inst.id, clock=cname)
            elif state in clock.runs_in and row.status == "paused":
                unit = parse_duration(row.period).unit if row.period else "days"
                shifts = [
                    *row.shifts,
                    {
                        "kind": "pause",
                        "from": row.paused_at.isoformat(),
                        "to": now.isoformat(),
                        "unit": unit,
                    },
                ]
                exact = parse_duration(row.period).exact if row.period else False
                due = self._apply_shifts(cal, row.base_due_at, shifts, exact=exact)
                conn.execute(
                    t.deadlines.update()
                    .where(t.deadlines.c.id == row.id)
                    .values(status="active", paused_at=None, shifts=shifts, due_at=due)
                )
                self._insert_timers(
                    conn,
                    row.id,
                    inst.id,
                    [
                        x
                        for x in self.timers_for(
                            cal, clock, due, now, escalations_from=row.escalations_done
                        )
                        if x[0] != "remind" or x[2] > now
                    ],
                )
                when_committed(
                    log.info,
                    "clock.resumed",
                    instance_id=inst.id,
                    clock=cname,
                    due_at=due.isoformat(),
                )
            elif state not in clock.runs_in and state not in clock.pauses_in:
                conn.execute(
                    t.deadlines.update()
                    .where(t.deadlines.c.id == row.id)
                    .values(status="closed", closed_at=now)
                )
                self._cancel_timers(conn, [row.id], "clock stopped")
                when_committed(
                    log.info, "clock.stopped", instance_id=inst.id, clock=cname, state=state
                )

    # ------------------------------------------------------------ extension & recompute

    def reschedule(
        self,
        conn: sa.Connection,
        row: Any,
        definition: Definition,
        due: datetime,
        now: datetime,
        *,
        rearm: bool = True,
        **values: Any,
    ) -> None:
        """Set a new due time on an open deadline and replace its pending timers.

        With *rearm* false (a recompute), a reminder, due notice or escalation step that
        already fired is not scheduled again when its new time has passed too.
        """
        spec = spec_of(definition, row.kind, row.name)
        cal = self.engine.calendar(row.calendar)
        escalations_from = values.pop("escalations_done", row.escalations_done)
        done: set[tuple[str, int]] = set()
        if not rearm:
            done = {
                (r.kind, r.step)
                for r in conn.execute(
                    sa.select(t.timers.c.kind, t.timers.c.step).where(
                        t.timers.c.deadline_id == row.id,
                        t.timers.c.status.in_(("fired", "skipped")),
                    )
                )
            }
        conn.execute(
            t.deadlines.update()
            .where(t.deadlines.c.id == row.id)
            .values(due_at=due, escalations_done=escalations_from, **values)
        )
        self._cancel_timers(conn, [row.id], "rescheduled")
        if row.status == "active" and spec is not None:
            self._insert_timers(
                conn,
                row.id,
                row.instance_id,
                [
                    x
                    for x in self.timers_for(cal, spec, due, now, escalations_from=escalations_from)
                    if (x[2] > now or x[0] != "remind")
                    and not ((x[0], x[1]) in done and x[2] <= now)
                ],
            )

    def recomputed_due(self, row: Any) -> tuple[datetime, datetime]:
        """(base, due) of *row* under the current calendar."""
        cal = self.engine.calendar(row.calendar)
        at = None if row.period else row.base_due_at
        base = self._base_due(cal, row.anchor_at, row.period, at)
        exact = parse_duration(row.period).exact if row.period else False
        return base, self._apply_shifts(cal, base, row.shifts, exact=exact)


class Runner:
    """Fires due timers: reminders, due notices, escalation steps."""

    def __init__(self, engine: Engine, *, skip_late_reminders: bool = True) -> None:
        self.engine = engine
        self.skip_late_reminders = skip_late_reminders

    def tick(self, *, now: datetime | None = None, limit: int = 200) -> TickResult:
        """Process every timer due by *now*, oldest first, in batches of about *limit*."""
        result = TickResult()
        while True:
            claimed, progressed = self._batch(now or self.engine.clock.now(), limit, result)
            if claimed == 0 or progressed == 0:
                return result

    def _batch(self, now: datetime, limit: int, result: TickResult) -> tuple[int, int]:
        engine = self.engine
        tm = t.timers
        cols = (tm.c.id, tm.c.deadline_id, tm.c.instance_id, tm.c.kind, tm.c.step, tm.c.fire_at)
        due = sa.and_(tm.c.status == "pending", tm.c.fire_at <= now)
        if engine.dialect == "postgresql":
            # Claim whole instances, not single timers: each instance then belongs to one
            # runner per batch, so runners never deadlock on instance rows and every
            # instance's timers are recorded in fire order.
            # The LIMIT applies after SKIP LOCKED: a second runner takes the next instances
            # that are due rather than waiting for the first runner's.
            first_due = (
                sa.select(tm.c.instance_id, sa.func.min(tm.c.fire_at).label("first"))
                .where(due)
                .group_by(tm.c.instance_id)
                .subquery()
            )
            owned = (
                sa.select(t.instances.c.id)
                .join(first_due, first_due.c.instance_id == t.instances.c.id)
                .order_by(first_due.c.first, t.instances.c.id)
                .limit(max(1, limit // 4))
                .with_for_update(skip_locked=True, of=t.instances)
            )
            q = (
                sa.select(*cols)
                .where(due, tm.c.instance_id.in_(owned.scalar_subquery()))
                .order_by(tm.c.fire_at, tm.c.id)
            )
        else:
            q = sa.select(*cols).where(due).order_by(tm.c.fire_at, tm.c.id).limit(limit)
        before = result.processed
        with engine._write() as conn:
            rows = conn.execute(q).all()
            for row in rows:
                started = time.perf_counter()
                try:
                    with held_until_commit(), conn.begin_nested():
                        outcome = self._process(conn, row, now, result)
                except ConcurrencyConflict:
                    result.retried += 1
                    when_committed(
                        log.info,
                        "timer.retry",
                        timer_id=row.id,
                        instance_id=row.instance_id,
                        reason="instance changed concurrently",
                    )
                    continue
                when_committed(
                    log.info,
                    "timer",
                    timer_id=row.id,
                    instance_id=row.instance_id,
                    kind=row.kind,
                    step=row.step,
                    fire_at=row.fire_at.isoformat(),
                    outcome=outcome,
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                )
        return len(rows), result.processed - before

    def _mark(
        self,
        conn: sa.Connection,
        timer_id: int,
        status: str,
        now: datetime,
        note: str | None = None,
    ) -> None:
        done = conn.execute(
            t.timers.update()
            .where(t.timers.c.id == timer_id, t.timers.c.status == "pending")
            .values(status=status, fired_at=now, note=note)
        )
        if done.rowcount != 1:
            raise ConcurrencyConflict(f"timer {timer_id}", 0, None)

    def _process(self, conn: sa.Connection, timer: Any, now: datetime, result: TickResult) -> str:
        engine = self.engine
        d = conn.execute(sa.select(t.deadlines).where(t.deadlines.c.id == timer.deadline_id)).one()
        inst: Any = conn.execute(
            sa.select(t.instances).where(t.instances.c.id == timer.instance_id)
        ).one()
        stale = d.status != "active" or (
            d.kind == "state" and (inst.state != d.name or inst.entered_seq != d.entry_seq)
        )
        if stale:
            self._mark(conn, timer.id, "cancelled", now, "instance no longer in that state entry")
            result.cancelled += 1
            return "cancelled"
        definition = engine._load_definition(conn, inst.workflow, inst.workflow_version)
        spec = spec_of(definition, d.kind, d.name)
        if spec is None:  # pragma: no cover - definitions are immutable per version
            self._mark(conn, timer.id, "cancelled", now, "deadline no longer defined")
            result.cancelled += 1
            return "cancelled"
        label = _label(spec.label, engine.lang) or d.name
        detail: dict[str, Any] = {
            "deadline": f"{d.kind}:{d.name}",
            "label": label,
            "due_at": d.due_at.isoformat(),
            "fire_at": timer.fire_at.isoformat(),
            "step": timer.step,
        }
        system = Actor.system(f"system:deadline:{d.name}")
        late_reminder = timer.kind == "remind" and now > d.due_at and self.skip_late_reminders
        if not late_reminder:
            # marked first: a transition fired below closes the deadline and cancels the
            # timers still pending, which must not include this one
            self._mark(conn, timer.id, "fired", now)
        if timer.kind == "remind":
            late = now > d.due_at
            if late and self.skip_late_reminders:
                detail["reason"] = "the deadline had already passed when the reminder was due"
                engine._append_system_event(
                    conn, inst, definition, "reminder_skipped", system, detail=detail, now=now
                )
                self._mark(conn, timer.id, "skipped", now, detail["reason"])
                result.skipped += 1
                result.events.append({"kind": "reminder_skipped", **detail, "instance_id": inst.id})
                return "skipped"
            detail["notify"] = _recipients(spec.notify)
            detail["of"] = len(spec.remind)
            engine._append_system_event(
                conn,
                inst,
                definition,
                "reminder",
                system,
                detail=detail,
                now=now,
                notify=spec.notify,
            )
            kind = "reminder"
        elif timer.kind == "due":
            detail["notify"] = _recipients(spec.notify)
            engine._append_system_event(
                conn,
                inst,
                definition,
                "deadline_missed",
                system,
                detail=detail,
                now=now,
                notify=spec.notify,
            )
            kind = "deadline_missed"
        else:
            step = spec.escalate[timer.step]
            detail["escalation"] = timer.step + 1
            detail["of"] = len(spec.escalate)
            detail["notify"] = _recipients(step.notify)
            if step.fire:
                detail["fire"] = step.fire
            kind = "escalation"
            inst = engine._append_system_event(
                conn,
                inst,
                definition,
                "escalation",
                system,
                detail=detail,
                now=now,
                set_=step.set,
                notify=step.notify,
            )
            conn.execute(
                t.deadlines.update()
                .where(t.deadlines.c.id == d.id)
                .values(escalations_done=timer.step + 1)
            )
            if step.fire:
                reason = (
                    f"escalation {timer.step + 1}/{len(spec.escalate)} of deadline "
                    f"{label!r} (due {d.due_at.isoformat()})"
                )
                try:
                    with held_until_commit(), conn.begin_nested():
                        engine._fire_row(conn, inst, step.fire, system, {}, reason, now=now)
                    result.events.append(
                        {
                            "kind": "auto_transition",
                            "trigger": step.fire,
                            "instance_id": inst.id,
                            **detail,
                        }
                    )
                except TransitionNotAllowed as exc:
                    fresh = conn.execute(
                        sa.select(t.instances).where(t.instances.c.id == inst.id)
                    ).one()
                    engine._append_system_event(
                        conn,
                        fresh,
                        definition,
                        "escalation_failed",
                        system,
                        detail={**detail, "reasons": exc.reasons},
                        now=now,
                    )
                    kind = "escalation_failed"
        result.fired += 1
        result.events.append({"kind": kind, "instance_id": inst.id, **detail})
        return kind


def _recipients(items: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for item in items:
        out.extend([item] if isinstance(item, str) else item.to)
    return out


__all__ += ["Runner", "Scheduler", "spec_of"]

_ = SangkienError  # re-exported names used in type checks by callers
