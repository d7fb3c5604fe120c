"""``sangkien simulate``: run workflows against a moving clock and print the timeline.

A scenario file (YAML) names the workflows, the actors, and the steps people take at given
times; between steps the clock jumps from one due timer to the next, so the timeline shows
every due date set, reminder, escalation and automatic transition a definition would cause,
before anyone publishes it. Nothing touches a real database: it runs on a temporary SQLite.

    workflows: [workflows/campaign.yaml, workflows/initiative.yaml]   # optional
    start: 2026-03-02T08:00:00+07:00
    until: 2026-12-31
    units: {tinh: null, xa: tinh}                                      # optional hierarchy
    actors:
      chair: {id: pham.van.duc, roles: [committee_chair], unit: xa}
    steps:
      - {at: 2026-03-02T09:00:00+07:00, start: campaign, as: c, actor: chair, data: {...}}
      - {after: 2 days, fire: launch, on: c, actor: chair, data: {...}}
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sangkien._yaml import Located, load_yaml
from sangkien.calendar import Calendar, Duration, DurationError, _add_calendar, parse_duration
from sangkien.clock import FrozenClock
from sangkien.definition import load_definition
from sangkien.errors import DefinitionError, SangkienError
from sangkien.model import Actor
from sangkien.runtime import Engine
from sangkien.store import schema as t
from sangkien.units import StaticUnitTree

__all__ = ["ScenarioError", "TimelineEntry", "simulate"]


class ScenarioError(SangkienError):
    """A scenario file is invalid (message starts with file:line:col)."""


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of the simulated timeline."""

    at: datetime
    instance: str
    kind: str
    text: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "instance": self.instance,
            "kind": self.kind,
            "text": self.text,
            **({"detail": dict(self.detail)} if self.detail else {}),
        }


_STEP_KEYS = (
    "at",
    "after",
    "start",
    "fire",
    "extend",
    "on",
    "as",
    "actor",
    "unit",
    "parent",
    "data",
    "comment",
)


def _fail(doc: Located, path: tuple[Any, ...], message: str, *, key: bool = False) -> ScenarioError:
    line, col = doc.position(path, key=key)
    return ScenarioError(f"{doc.file}:{line}:{col}: {message}")


def _moment(doc: Located, path: tuple[Any, ...], value: Any, tz: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=tz)
    text = str(value)
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(8), tzinfo=tz)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(doc, path, f"{text!r} is not a date or ISO 8601 date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def simulate(
    scenario: str | Path,
    *,
    extra_workflows: list[Path] | None = None,
    lang: str = "vi",
    echo: Callable[[TimelineEntry], None] | None = None,
) -> list[TimelineEntry]:
    """Run *scenario* and return its timeline (also passed to *echo* as it happens)."""
    path = Path(scenario)
    try:
        doc = load_yaml(path.read_bytes(), str(path))
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror}") from None
    except DefinitionError as exc:
        raise ScenarioError(str(exc.problems[0])) from None
    spec = doc.data
    if not isinstance(spec, dict):
        raise _fail(doc, (), "a scenario is a mapping with 'start' and 'steps'")
    allowed = ("workflows", "start", "until", "units", "actors", "steps", "calendar")
    unknown = set(spec) - set(allowed)
    if unknown:
        key = sorted(unknown)[0]
        raise _fail(
            doc,
            (key,),
            f"unknown key {key!r} (allowed: {', '.join(allowed)})",
            key=True,
        )
    base = path.parent
    files = [base / str(f) for f in spec.get("workflows") or []]
    files += list(extra_workflows or [])
    if not files:
        from sangkien.config import shipped_workflows_dir

        files = sorted(shipped_workflows_dir().glob("*.yaml"))
    definitions = []
    for f in files:
        try:
            definitions.append(load_definition(f))
        except DefinitionError as exc:
            raise ScenarioError(f"{exc.problems[0]}") from None
    with tempfile.TemporaryDirectory(prefix="sangkien-sim-") as tmp:
        clock = FrozenClock()
        units = spec.get("units")
        engine = Engine(
            f"sqlite:///{Path(tmp) / 'sim.db'}",
            workflows=definitions,
            clock=clock,
            units=StaticUnitTree(units) if isinstance(units, dict) else None,
            lang=lang,
        )
        try:
            return _Run(doc, engine, clock, lang, echo).run()
        finally:
            engine.close()


class _Run:
    def __init__(
        self,
        doc: Located,
        engine: Engine,
        clock: FrozenClock,
        lang: str,
        echo: Callable[[TimelineEntry], None] | None,
    ) -> None:
        self.doc = doc
        self.spec: dict[str, Any] = doc.data
        self.engine = engine
        self.clock = clock
        self.lang = lang
        self.echo = echo
        self.cal = engine.calendar(str(self.spec.get("calendar") or "vn"))
        self.tz = self.cal.timezone
        self.names: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        self.timeline: list[TimelineEntry] = []
        self.seen_events: set[tuple[str, int]] = set()
        self.seen_deadlines: set[int] = set()
        self.actors: dict[str, Actor] = {}
        for name, a in (self.spec.get("actors") or {}).items():
            if not isinstance(a, dict) or "id" not in a:
                raise _fail(doc, ("actors", name), "an actor needs at least 'id' (and roles, unit)")
            self.actors[name] = Actor(str(a["id"]), a.get("roles") or [], a.get("unit"))

    def run(self) -> list[TimelineEntry]:
        if "start" not in self.spec:
            raise _fail(self.doc, (), "missing 'start' (when the simulation begins)")
        now = _moment(self.doc, ("start",), self.spec["start"], self.tz)
        until_raw = self.spec.get("until")
        until = (
            _moment(self.doc, ("until",), until_raw, self.tz)
            if until_raw is not None
            else now + timedelta(days=366)
        )
        if until_raw is not None and len(str(until_raw)) == 10:
            until = self.cal.end_of_day(date.fromisoformat(str(until_raw)))
        self.clock.set(now)
        steps = self.spec.get("steps") or []
        if not isinstance(steps, list):
            raise _fail(self.doc, ("steps",), "'steps' is a list")
        for i, step in enumerate(steps):
            path = ("steps", i)
            if not isinstance(step, dict):
                raise _fail(self.doc, path, "a step is a mapping (start: or fire:)")
            if "at" in step:
                when = _moment(self.doc, (*path, "at"), step["at"], self.tz)
            elif "after" in step:
                try:
                    delta = parse_duration(str(step["after"]))
                except DurationError as exc:
                    raise _fail(self.doc, (*path, "after"), str(exc)) from None
                when = _after(self.cal, now, delta)
            else:
                when = now
            if when < now:
                raise _fail(self.doc, path, "steps must be in time order")
            self._advance(when)
            now = when
            self._step(path, step)
            self._collect()
        self._advance(until)
        return self.timeline

    def _advance(self, target: datetime) -> None:
        """Move the clock to *target*, stopping at every timer that falls due on the way."""
        while True:
            with self.engine._read() as conn:
                nxt = conn.execute(
                    sa.select(sa.func.min(t.timers.c.fire_at)).where(
                        t.timers.c.status == "pending", t.timers.c.fire_at <= target
                    )
                ).scalar()
            if nxt is None:
                break
            self.clock.set(max(nxt, self.clock.now()))
            self.engine.tick()
            self._collect()
        self.clock.set(max(target, self.clock.now()))

    def _step(self, path: tuple[Any, ...], step: dict[str, Any]) -> None:
        for k in step:
            if k not in _STEP_KEYS:
                raise _fail(
                    self.doc,
                    (*path, k),
                    f"unknown step key {k!r} (allowed: {', '.join(_STEP_KEYS)})",
                    key=True,
                )
        actor_name = step.get("actor")
        if actor_name is None:
            actor = Actor.system("system:scenario")
        elif actor_name not in self.actors:
            raise _fail(
                self.doc,
                (*path, "actor"),
                f"unknown actor {actor_name!r}; declare it under 'actors'",
            )
        else:
            actor = self.actors[actor_name]
        data = step.get("data") or {}
        try:
            if "start" in step:
                alias = str(step.get("as") or f"#{len(self.ids) + 1}")
                parent = step.get("parent")
                inst = self.engine.start(
                    str(step["start"]),
                    actor=actor,
                    unit=step.get("unit"),
                    data=data,
                    parent=self.ids.get(str(parent), parent) if parent else None,
                    comment=step.get("comment"),
                )
                self.ids[alias] = inst.id
                self.names[inst.id] = alias
            elif "fire" in step:
                target = str(step.get("on", ""))
                if target not in self.ids:
                    raise _fail(
                        self.doc,
                        (*path, "on"),
                        f"unknown instance {target!r}; name it with 'as:' when starting it",
                    )
                self.engine.fire(
                    self.ids[target],
                    str(step["fire"]),
                    actor=actor,
                    data=data,
                    comment=step.get("comment"),
                )
            elif "extend" in step:
                target = str(step.get("on", ""))
                if target not in self.ids:
                    raise _fail(self.doc, (*path, "on"), f"unknown instance {target!r}")
                self.engine.extend_deadline(
                    self.ids[target],
                    actor=actor,
                    reason=str(step.get("comment") or "scenario"),
                    by=str(step["extend"]),
                )
            else:
                raise _fail(self.doc, path, "a step needs 'start', 'fire' or 'extend'")
        except ScenarioError:
            raise
        except SangkienError as exc:
            self._add(
                self.clock.now(),
                str(step.get("on") or step.get("as") or "?"),
                "refused",
                f"{step.get('fire') or step.get('start')} refused: {exc}",
            )

    def _add(
        self,
        at: datetime,
        instance: str,
        kind: str,
        text: str,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        entry = TimelineEntry(at, instance, kind, text, dict(detail or {}))
        self.timeline.append(entry)
        if self.echo:
            self.echo(entry)

    def _local(self, moment: datetime) -> str:
        return self.cal.local(moment).strftime("%Y-%m-%d %H:%M")

    def _collect(self) -> None:
        """Turn new history events and deadlines into timeline entries, in time order."""
        new: list[tuple[datetime, int, TimelineEntry]] = []
        with self.engine._read() as conn:
            events = conn.execute(sa.select(t.events).order_by(t.events.c.at, t.events.c.id)).all()
            deadlines = conn.execute(sa.select(t.deadlines).order_by(t.deadlines.c.id)).all()
        for e in events:
            if (e.instance_id, e.seq) in self.seen_events:
                continue
            self.seen_events.add((e.instance_id, e.seq))
            name = self.names.get(e.instance_id, e.instance_id[:8])
            d = dict(e.detail or {})
            if e.kind == "started":
                text = f"started in {e.to_state}"
            elif e.kind == "transition":
                auto = " (automatic)" if e.actor_id.startswith("system:") else ""
                text = f"{e.trigger}: {e.from_state} -> {e.to_state}{auto}"
            elif e.kind == "action":
                text = f"{e.trigger} (recorded in {e.to_state})"
            elif e.kind in ("reminder", "reminder_skipped"):
                what = "reminder" if e.kind == "reminder" else "reminder skipped (already late)"
                who = f" to {', '.join(d.get('notify') or [])}" if d.get("notify") else ""
                text = (
                    f"{what} {d.get('step', 0) + 1} for {d.get('label')}{who}, due "
                    f"{self._local(datetime.fromisoformat(d['due_at']))}"
                )
            elif e.kind == "deadline_missed":
                text = f"deadline {d.get('label')} missed"
            elif e.kind in ("escalation", "escalation_failed"):
                parts = [f"escalation {d.get('escalation')}/{d.get('of')} of {d.get('label')}"]
                if d.get("notify"):
                    parts.append(f"notify {', '.join(d['notify'])}")
                if d.get("fire"):
                    parts.append(f"fire {d['fire']}")
                if e.data_delta:
                    parts.append(f"set {json.dumps(e.data_delta, ensure_ascii=False)}")
                if e.kind == "escalation_failed":
                    parts.append("FAILED: " + "; ".join(d.get("reasons", [])))
                text = ", ".join(parts)
            elif e.kind == "deadline_extended":
                text = f"deadline extended: {e.comment}"
            else:
                text = e.kind
            new.append((e.at, 0, TimelineEntry(e.at, name, e.kind, text, d)))
        for dl in deadlines:
            if dl.id in self.seen_deadlines:
                continue
            self.seen_deadlines.add(dl.id)
            name = self.names.get(dl.instance_id, dl.instance_id[:8])
            what = f"state {dl.name}" if dl.kind == "state" else f"clock {dl.name}"
            new.append(
                (
                    dl.created_at,
                    1,
                    TimelineEntry(
                        dl.created_at,
                        name,
                        "deadline_set",
                        f"{what} due {self._local(dl.due_at)}",
                        {"due_at": dl.due_at.isoformat()},
                    ),
                )
            )
        for _, _, entry in sorted(new, key=lambda x: (x[0], x[1])):
            self.timeline.append(entry)
            if self.echo:
                self.echo(entry)


def _after(cal: Calendar, now: datetime, delta: Duration) -> datetime:
    """*delta* after *now*, keeping the local time of day (working days skip days off)."""
    if delta.exact:
        return now + delta.timedelta()
    local = cal.local(now)
    day = local.date()
    if delta.unit == "working_days":
        day = cal.add_working_days(day, delta.amount)
    else:
        day = _add_calendar(day, delta.amount, delta.unit, +1)
    return datetime.combine(day, local.timetz())


def format_entry(entry: TimelineEntry, tz: Any) -> str:
    """One human line of the timeline in local time."""
    local = entry.at.astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M}  {entry.instance:<12} {entry.text}"
