"""The Engine: start instances, fire triggers, read state and history.

Every change is one database transaction: read the instance, authorize and check the
transition, write the instance with an optimistic-lock version check, append the
hash-chained history event. Everything it causes commits or rolls back together.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog

from sangkien.calendar import Calendar, Duration, load_calendar, parse_duration
from sangkien.clock import Clock, SystemClock
from sangkien.deadlines import DeadlineStatus, Runner, Scheduler, TickResult, spec_of
from sangkien.definition import (
    Definition,
    TransitionSpec,
    guards_of,
    load_definition,
    parse_definition,
)
from sangkien.errors import (
    ConcurrencyConflict,
    DefinitionConflict,
    DefinitionError,
    IdempotencyKeyReused,
    InstanceNotFound,
    InvalidData,
    SangkienError,
    StoreConflict,
    StoreError,
    TransitionNotAllowed,
    WorkflowNotFound,
    first_line,
)
from sangkien.expressions import ExpressionError
from sangkien.fields import check_data, check_value, normalize
from sangkien.history import GENESIS, ChainBreak, event_hash, verify_chain
from sangkien.logs import held_until_commit, hot_logger, when_committed
from sangkien.machine import machine_for
from sangkien.model import Actor, Event, Instance, TriggerOption
from sangkien.outbox import Notifier
from sangkien.store import schema as t
from sangkien.store.db import create_db_engine, ensure_schema
from sangkien.store.fast import HotPath
from sangkien.store.writer import StaleConnection, StaleRead, Writer
from sangkien.units import FlatUnits, StaticUnitTree, UnitTree

__all__ = ["Engine", "new_id"]

log = structlog.get_logger("sangkien")
_hot_log = hot_logger("sangkien")  # the per-fire line

_READ = {"sangkien_read_only": True}
_T = TypeVar("_T")
_ATTEMPTS = 4  # a fire read again after a dead kept connection or a concurrent write


_id_lock = threading.Lock()
_id_last = [0, 0]  # last millisecond, counter within it


def new_id() -> str:
    """Return a time-ordered UUID (version 7 layout) that sorts in creation order.

    Within one millisecond the 12-bit ``rand_a`` field is a counter (RFC 9562, method 1),
    so ids made by one process always increase.
    """
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _id_last[0]:
            ms = _id_last[0]
            _id_last[1] += 1
            if _id_last[1] > 0xFFF:
                ms += 1
                _id_last[1] = 0
        else:
            _id_last[1] = 0
        _id_last[0] = ms
        counter = _id_last[1]
    rand = int.from_bytes(os.urandom(8), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64
    value |= 0b10 << 62 | rand & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


class Engine:
    """Run workflow instances against a database.

    *database* is a SQLAlchemy URL, an ``Engine``, or a ``Connection``. Given a connection
    that is already in a transaction, the engine works inside it and never commits: the
    host's own writes and the transition commit or roll back together.

    *migrate* applies the schema migrations on start; it defaults to on for SQLite (the
    embedded default) and off elsewhere, where ``sangkien db upgrade`` is run on deploy.

    Write transactions run on up to *keep_connections* connections kept checked out of
    the pool between transactions (0: check one out per transaction); ``close()`` and the
    pool's ``dispose()`` return them.
    """

    def __init__(
        self,
        database: str | sa.Engine | sa.Connection = "sqlite:///sangkien.db",
        *,
        workflows: Iterable[Definition | str | Path] = (),
        clock: Clock | None = None,
        units: UnitTree | None = None,
        migrate: bool | None = None,
        lang: str = "vi",
        calendars: Mapping[str, Calendar] | None = None,
        calendar_dirs: Iterable[str | Path] = (),
        skip_late_reminders: bool = True,
        directory: Any = None,
        templates: Any = None,
        channels: Iterable[str] = ("log",),
        link_pattern: str = "",
        subscribers: Iterable[Any] = (),
        keep_connections: int = 4,
    ) -> None:
        self._conn: sa.Connection | None = None
        self.lang = lang
        self._calendars: dict[str, Calendar] = dict(calendars or {})
        self.calendar_dirs = tuple(calendar_dirs)
        self.directory = directory
        self._notifier = Notifier(
            self,
            directory=directory,
            templates=templates,
            channels=list(channels),
            link_pattern=link_pattern,
            subscribers=list(subscribers),
        )
        self._runner = Runner(self, skip_late_reminders=skip_late_reminders)
        self._owns_engine = False
        if isinstance(database, str):
            self._db = create_db_engine(database)
            self._owns_engine = True
        elif isinstance(database, sa.Connection):
            self._conn = database
            self._db = database.engine
        else:
            self._db = database
        self._hot = HotPath(self._db.dialect.name)
        # write transactions on connections kept between them (see store.writer); not on
        # a host's Connection, whose transaction is the host's
        self._writer: Writer | None = None
        if (
            self._conn is None
            and keep_connections > 0
            and self._db.url.database not in (None, "", ":memory:")
        ):
            self._writer = Writer(self._db, keep=keep_connections)
        self._scheduler = Scheduler(self)
        self.clock: Clock = clock or SystemClock()
        self.units: UnitTree = units or directory or FlatUnits()
        self._defs: dict[tuple[str, int], Definition] = {}
        self._latest: dict[str, Definition] = {}
        self._uses_parent: dict[tuple[str, int], bool] = {}
        if migrate is None:
            migrate = self._db.dialect.name == "sqlite"
        try:
            if self._conn is None:
                ensure_schema(self._db, migrate=migrate)
        except sa.exc.SQLAlchemyError as exc:
            raise _store_error(exc) from exc
        for wf in workflows:
            self.register(wf)

    @property
    def db(self) -> sa.Engine:
        """The SQLAlchemy engine this Engine stores into."""
        return self._db

    def ping(self) -> None:
        """Check the database answers (raises StoreError otherwise)."""
        with self._read() as conn:
            conn.exec_driver_sql("SELECT 1")

    def published(self) -> builtins.list[tuple[str, int, str]]:
        """Every (key, version, content_hash) registered in the database."""
        d = t.definitions
        with self._read() as conn:
            rows = conn.execute(
                sa.select(d.c.key, d.c.version, d.c.content_hash).order_by(d.c.key, d.c.version)
            ).all()
        return [(r.key, r.version, r.content_hash) for r in rows]

    def bind(self, connection: sa.Connection) -> Engine:
        """This Engine working on the host's *connection* (sharing its caches).

        Inside ``with host_engine.begin() as conn: engine.bind(conn).fire(...)`` the
        transition joins the host's transaction and never commits it.
        """
        bound = copy.copy(self)
        bound._conn = connection
        bound._owns_engine = False
        bound._scheduler = Scheduler(bound)
        bound._runner = Runner(bound, skip_late_reminders=self._runner.skip_late_reminders)
        bound._notifier = copy.copy(self._notifier)
        bound._notifier.engine = bound
        return bound

    @property
    def dialect(self) -> str:
        return self._db.dialect.name

    # ------------------------------------------------------------------ deadlines

    def calendar(self, name: str = "vn") -> Calendar:
        """The business calendar *name* (shipped data plus ``calendar_dirs``), cached."""
        cal = self._calendars.get(name)
        if cal is None:
            cal = self._calendars[name] = load_calendar(name, self.calendar_dirs)
        return cal

    def reload_calendars(self) -> None:
        """Forget cached calendars so the next use reads the data files again."""
        self._calendars.clear()

    def tick(self, *, now: datetime | None = None, limit: int = 200) -> TickResult:
        """Fire every reminder, due notice and escalation due by *now* (default: the clock)."""
        return self._runner.tick(now=now, limit=limit)

    def deadlines(self, instance_id: str, *, actor: Actor | None = None) -> list[DeadlineStatus]:
        """Open deadlines (state and clocks) of one instance."""
        self.get(instance_id, actor=actor)
        return self._deadline_query(instance_id=instance_id, statuses=("active", "paused"))

    def overdue(
        self,
        *,
        unit: str | None = None,
        workflow: str | None = None,
        actor: Actor | None = None,
        now: datetime | None = None,
        limit: int = 500,
    ) -> list[DeadlineStatus]:
        """Deadlines already past due, most late first, per unit and workflow."""
        now = now or self.clock.now()
        return self._deadline_query(
            unit=unit, workflow=workflow, actor=actor, until=now, limit=limit, now=now
        )

    def due_soon(
        self,
        within: str | Duration = "5 working days",
        *,
        unit: str | None = None,
        workflow: str | None = None,
        actor: Actor | None = None,
        now: datetime | None = None,
        limit: int = 500,
    ) -> list[DeadlineStatus]:
        """Deadlines not yet due that fall due *within* the given period."""
        now = now or self.clock.now()
        horizon = self.calendar().due(now, parse_duration(within))
        return self._deadline_query(
            unit=unit,
            workflow=workflow,
            actor=actor,
            since=now,
            through=horizon,
            limit=limit,
            now=now,
        )

    def _deadline_query(
        self,
        *,
        instance_id: str | None = None,
        unit: str | None = None,
        workflow: str | None = None,
        actor: Actor | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        through: datetime | None = None,
        statuses: tuple[str, ...] = ("active",),
        limit: int = 500,
        now: datetime | None = None,
    ) -> list[DeadlineStatus]:
        d, i = t.deadlines, t.instances
        q = (
            sa.select(
                d,
                i.c.state.label("instance_state"),
                i.c.data.label("instance_data"),
                i.c.workflow_version.label("instance_version"),
            )
            .join(i, i.c.id == d.c.instance_id)
            .where(d.c.status.in_(statuses))
            .order_by(d.c.due_at, d.c.id)
            .limit(limit)
        )
        if instance_id is not None:
            q = q.where(d.c.instance_id == instance_id)
        if unit is not None:
            q = q.where(d.c.unit == unit)
        if workflow is not None:
            q = q.where(d.c.workflow == workflow)
        if since is not None:
            q = q.where(d.c.due_at >= since)
        if until is not None:
            q = q.where(d.c.due_at < until)
        if through is not None:
            q = q.where(d.c.due_at <= through)
        if actor is not None and not actor.is_system:
            if actor.unit is None:
                return []
            scope = self.units.subtree(actor.unit)
            if scope is not None:
                q = q.where(d.c.unit.in_(sorted(scope)))
        now = now or self.clock.now()
        with self._read() as conn:
            rows = conn.execute(q).all()
            nxt = {}
            if rows:
                nxt = dict(
                    conn.execute(
                        sa.select(t.timers.c.deadline_id, sa.func.min(t.timers.c.fire_at))
                        .where(
                            t.timers.c.deadline_id.in_([r.id for r in rows]),
                            t.timers.c.status == "pending",
                        )
                        .group_by(t.timers.c.deadline_id)
                    ).all()
                )
            out = []
            for r in rows:
                if actor is not None and not self._visible(actor, r.unit):
                    continue
                cal = self.calendar(r.calendar)
                # a paused clock does not run late: measure it at the moment it paused
                late = (r.paused_at if r.status == "paused" and r.paused_at else now) - r.due_at
                wd_late = 0
                if late > timedelta(0):
                    a, b = cal.local_date(r.due_at), cal.local_date(now)
                    wd_late = sum(
                        1
                        for k in range(1, (b - a).days + 1)
                        if cal.is_working_day(a + timedelta(days=k))
                    )
                inst_def = None
                with suppress(SangkienError):
                    inst_def = self._load_definition(conn, r.workflow, r.instance_version)
                spec = spec_of(inst_def, r.kind, r.name) if inst_def else None
                title = r.instance_data.get("title") if isinstance(r.instance_data, dict) else None
                out.append(
                    DeadlineStatus(
                        instance_id=r.instance_id,
                        workflow=r.workflow,
                        unit=r.unit,
                        state=r.instance_state,
                        kind=r.kind,
                        name=r.name,
                        label=_label(spec.label, self.lang) if spec else None,
                        due_at=r.due_at,
                        status=r.status,
                        late_by=late,
                        working_days_late=wd_late,
                        escalation_step=r.escalations_done,
                        escalation_steps=len(spec.escalate) if spec else 0,
                        next_action_at=nxt.get(r.id),
                        title=title,
                    )
                )
        if until is not None and since is None:
            out.sort(key=lambda x: x.due_at)
        return out

    def extend_deadline(
        self,
        instance_id: str,
        *,
        actor: Actor,
        reason: str,
        by: str | Duration | None = None,
        until: date | datetime | None = None,
        deadline: str | None = None,
    ) -> list[DeadlineStatus]:
        """Move an instance's open deadline(s) later, with a reason recorded in history.

        *by* adds a period to the current due time; *until* sets a new due date (end of that
        day) or time. *deadline* names one ('state' or a clock name); default: all open.
        """
        self._extend(
            [instance_id], actor=actor, reason=reason, by=by, until=until, deadline=deadline
        )
        return self.deadlines(instance_id)

    def extend_children(
        self,
        parent_id: str,
        *,
        actor: Actor,
        reason: str,
        by: str | Duration | None = None,
        until: date | datetime | None = None,
        deadline: str | None = None,
    ) -> int:
        """Extend the open deadlines of every instance under *parent_id* (a whole campaign)."""
        self.get(parent_id, actor=actor)
        with self._read() as conn:
            ids = [
                r.id
                for r in conn.execute(
                    sa.select(t.instances.c.id)
                    .where(t.instances.c.parent_id == parent_id)
                    .order_by(t.instances.c.id)
                )
            ]
        return self._extend(ids, actor=actor, reason=reason, by=by, until=until, deadline=deadline)

    def _extend(
        self,
        instance_ids: list[str],
        *,
        actor: Actor,
        reason: str,
        by: str | Duration | None,
        until: date | datetime | None,
        deadline: str | None,
    ) -> int:
        if not reason or not reason.strip():
            raise TransitionNotAllowed(
                None, "extend", ["a reason is required to extend a deadline"]
            )
        if (by is None) == (until is None):
            raise TransitionNotAllowed(
                None, "extend", ["give either by= (a period) or until= (a date)"]
            )
        period = str(parse_duration(by)) if by is not None else None
        now = self.clock.now()
        count = 0
        with self._write() as conn:
            for iid in instance_ids:
                row = conn.execute(sa.select(t.instances).where(t.instances.c.id == iid)).first()
                if row is None or not self._visible(actor, row.unit):
                    raise InstanceNotFound(iid)
                q = sa.select(t.deadlines).where(
                    t.deadlines.c.instance_id == iid, t.deadlines.c.status.in_(("active", "paused"))
                )
                if deadline is not None:
                    q = q.where(
                        sa.or_(t.deadlines.c.name == deadline, t.deadlines.c.kind == deadline)
                    )
                drows = conn.execute(q.order_by(t.deadlines.c.id)).all()
                if not drows:
                    continue
                definition = self._load_definition(conn, row.workflow, row.workflow_version)
                changes = []
                for d in drows:
                    shift: dict[str, Any] = {
                        "kind": "extension",
                        "reason": reason,
                        "actor": actor.id,
                        "at": now.isoformat(),
                    }
                    if period is not None:
                        shift["by"] = period
                    else:
                        shift["until"] = until.isoformat()  # type: ignore[union-attr]
                    shifts = [*d.shifts, shift]
                    cal = self.calendar(d.calendar)
                    exact = parse_duration(d.period).exact if d.period else False
                    new_due = self._scheduler._apply_shifts(cal, d.base_due_at, shifts, exact=exact)
                    self._scheduler.reschedule(
                        conn, d, definition, new_due, now, shifts=shifts, escalations_done=0
                    )
                    changes.append(
                        {
                            "deadline": f"{d.kind}:{d.name}",
                            "from": d.due_at.isoformat(),
                            "to": new_due.isoformat(),
                        }
                    )
                    when_committed(
                        log.info,
                        "deadline.extended",
                        instance_id=iid,
                        deadline=f"{d.kind}:{d.name}",
                        old_due=d.due_at.isoformat(),
                        new_due=new_due.isoformat(),
                        actor=actor.id,
                    )
                self._append(
                    conn,
                    row,
                    kind="deadline_extended",
                    trigger=None,
                    actor=actor,
                    to_state=row.state,
                    data=row.data,
                    delta={},
                    comment=reason,
                    now=now,
                    detail={
                        "changes": changes,
                        "by": period,
                        "until": until.isoformat() if until else None,
                    },
                )
                count += 1
        return count

    def recompute_deadlines(self) -> list[dict[str, Any]]:
        """Recompute open deadlines after calendar data changed; return what moved."""
        self.reload_calendars()
        now = self.clock.now()
        moved: list[dict[str, Any]] = []
        with self._write() as conn:
            rows = conn.execute(
                sa.select(t.deadlines)
                .where(t.deadlines.c.status.in_(("active", "paused")))
                .order_by(t.deadlines.c.id)
            ).all()
            for d in rows:
                cal = self.calendar(d.calendar)
                if d.calendar_fingerprint == cal.fingerprint:
                    continue
                base, due = self._scheduler.recomputed_due(d)
                inst = conn.execute(
                    sa.select(t.instances).where(t.instances.c.id == d.instance_id)
                ).one()
                definition = self._load_definition(conn, inst.workflow, inst.workflow_version)
                if due != d.due_at:
                    self._scheduler.reschedule(
                        conn,
                        d,
                        definition,
                        due,
                        now,
                        rearm=False,
                        base_due_at=base,
                        calendar_fingerprint=cal.fingerprint,
                    )
                    change = {
                        "instance_id": d.instance_id,
                        "deadline": f"{d.kind}:{d.name}",
                        "from": d.due_at.isoformat(),
                        "to": due.isoformat(),
                    }
                    self._append(
                        conn,
                        inst,
                        kind="deadline_recomputed",
                        trigger=None,
                        actor=Actor.system("system:calendar"),
                        to_state=inst.state,
                        data=inst.data,
                        delta={},
                        comment=None,
                        now=now,
                        detail={**change, "calendar": cal.name, "fingerprint": cal.fingerprint},
                    )
                    log.info("deadline.recomputed", **change, calendar=cal.name)
                    moved.append(change)
                else:
                    conn.execute(
                        t.deadlines.update()
                        .where(t.deadlines.c.id == d.id)
                        .values(calendar_fingerprint=cal.fingerprint)
                    )
        return moved

    @property
    def writes_on_loop(self) -> bool:
        """Whether a write may run on an asyncio event loop through
        :func:`sangkien.store.writer.run_on_loop` without blocking it: kept connections, no
        host transaction (PostgreSQL awaits the server there, SQLite never waits for its
        lock), and the shipped in-memory directory and unit tree, since a host's own may
        look people up over the network."""
        if self._writer is None or self._conn is not None or not self._writer.runs_on_loop:
            return False
        from sangkien.directory import YamlDirectory

        shipped = (FlatUnits, StaticUnitTree, YamlDirectory)  # not subclasses: a host's code
        return type(self.units) in shipped and type(self.directory) in (type(None), YamlDirectory)

    def close(self) -> None:
        """Release the kept connections and the pool (the pool only if this Engine made it)."""
        if self._writer is not None and self._conn is None:
            self._writer.close()
        if self._owns_engine:
            self._db.dispose()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _write(self, *, retryable: bool = False) -> Iterator[sa.Connection]:
        """A write transaction: the host's, one on a kept connection, or a pooled one.

        With *retryable*, a kept connection found dead on the first statement (nothing
        sent) raises :class:`StaleConnection`, and an instance that moved between its read
        and its write (nothing written) :class:`StaleRead`, for the caller to run the body
        again; otherwise they become StoreError and StoreConflict.
        """
        try:
            # lines about what the transaction did are logged once it has committed
            if self._conn is not None:
                if self._conn.in_transaction():
                    yield self._conn  # the host's: its commit is not ours to see
                else:
                    with held_until_commit(), self._conn.begin():
                        yield self._conn
            elif self._writer is not None:
                with held_until_commit(), self._writer.transaction() as conn:
                    yield conn
            else:
                with held_until_commit(), self._db.begin() as conn:
                    yield conn
        except StaleConnection as exc:
            if retryable:
                raise
            raise StoreError(f"the database connection was lost: {exc}") from exc
        except StaleRead as exc:
            if retryable:
                raise
            raise StoreConflict(
                f"instance {exc.instance_id!r} was changed by another writer; retry"
            ) from exc
        except (sa.exc.SQLAlchemyError, self._dbapi_errors) as exc:
            raise self._database_error(exc) from exc

    def _database_error(self, exc: Exception) -> SangkienError:
        """A StoreError for *exc*, from SQLAlchemy or (on the hot path) from the driver."""
        if not isinstance(exc, sa.exc.SQLAlchemyError):
            exc = sa.exc.DBAPIError.instance(None, None, exc, self._dbapi_errors)
        return _store_error(exc)

    def _transact(self, body: Callable[[sa.Connection], _T], *, reread: int = 0) -> _T:
        """Run *body* in a write transaction, again if nothing was written.

        Once more if the kept connection was found dead before anything was sent; up to
        *reread* more times if the instance moved between its read and its write, after
        which :class:`StaleRead` is raised for the caller to report.
        """
        lost = moved = 0
        writer = self._writer if self._conn is None else None
        while True:
            try:
                if writer is None:
                    with self._write(retryable=True) as conn:
                        return body(conn)
                try:  # what _write does, without a generator (this runs on every fire)
                    with held_until_commit(), writer.transaction() as conn:
                        return body(conn)
                except (sa.exc.SQLAlchemyError, self._dbapi_errors) as exc:
                    raise self._database_error(exc) from exc
            except StaleConnection as exc:
                if lost:
                    raise StoreError(f"the database connection was lost: {exc}") from exc
                lost += 1
            except StaleRead:
                if moved >= reread:
                    raise
                moved += 1  # check the trigger again against what the other writer left

    @property
    def _dbapi_errors(self) -> type[Exception]:
        dbapi = self._db.dialect.dbapi
        if dbapi is None:  # pragma: no cover - every dialect we support has a driver
            return sa.exc.SQLAlchemyError
        error: type[Exception] = dbapi.Error
        return error

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        try:
            if self._conn is not None:
                yield self._conn
            else:
                with self._db.connect() as conn:
                    conn = conn.execution_options(**_READ)
                    yield conn
                    conn.rollback()
        except sa.exc.SQLAlchemyError as exc:
            raise _store_error(exc) from exc

    # ------------------------------------------------------------------ definitions

    def register(self, workflow: Definition | str | Path) -> Definition:
        """Publish a workflow definition (a :class:`Definition` or a YAML path).

        The same key and version with different content is refused while instances use
        it: they must keep the rules they started with. Bump ``version`` instead.
        """
        definition = workflow if isinstance(workflow, Definition) else load_definition(workflow)
        if self._notifier.templates is not None:
            from sangkien.adapters import known_channel_names
            from sangkien.validation import check_notifications

            problems = check_notifications(
                definition,
                self._notifier.templates,
                {*known_channel_names(), *self._notifier.channels},
                self.lang,
            )
            if any(p.severity == "error" for p in problems):
                raise DefinitionError(problems)
        key, version = definition.key, definition.version
        with self._write() as conn:
            row = conn.execute(
                sa.select(t.definitions.c.content_hash).where(
                    t.definitions.c.key == key, t.definitions.c.version == version
                )
            ).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            t.definitions.insert().values(
                                key=key,
                                version=version,
                                content_hash=definition.content_hash,
                                source=definition.source,
                                registered_at=self.clock.now(),
                            )
                        )
                except sa.exc.IntegrityError:
                    # another process published this version at the same moment
                    row = conn.execute(
                        sa.select(t.definitions.c.content_hash).where(
                            t.definitions.c.key == key, t.definitions.c.version == version
                        )
                    ).first()
            if row is not None and row.content_hash != definition.content_hash:
                used = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(t.instances)
                    .where(t.instances.c.workflow == key, t.instances.c.workflow_version == version)
                ).scalar_one()
                if used:
                    raise DefinitionConflict(
                        f"{definition.file}: workflow {key!r} version {version} changed but "
                        f"{used} instance(s) already run on version {version}; bump 'version' "
                        f"to {self._next_version(conn, key)} to publish the change (instances keep "
                        "the version they started with)"
                    )
                conn.execute(
                    t.definitions.update()
                    .where(t.definitions.c.key == key, t.definitions.c.version == version)
                    .values(
                        content_hash=definition.content_hash,
                        source=definition.source,
                        registered_at=self.clock.now(),
                    )
                )
        self._defs[(key, version)] = definition
        current = self._latest.get(key)
        if current is None or current.version <= version:
            self._latest[key] = definition
        return definition

    def _next_version(self, conn: sa.Connection, key: str) -> int:
        top = conn.execute(
            sa.select(sa.func.max(t.definitions.c.version)).where(t.definitions.c.key == key)
        ).scalar_one()
        return int(top or 0) + 1

    def definition(self, key: str, version: int | None = None) -> Definition:
        """Return a registered definition (the newest version if *version* is None).

        The database is the reference: a version registered by another process is seen,
        and cached content whose hash no longer matches the stored one is reloaded.
        """
        with self._read() as conn:
            return self._definition_on(conn, key, version)

    def _definition_on(self, conn: sa.Connection, key: str, version: int | None) -> Definition:
        d = t.definitions
        q = sa.select(d.c.version, d.c.content_hash).where(d.c.key == key)
        q = q.where(d.c.version == version) if version is not None else q
        row = conn.execute(q.order_by(d.c.version.desc()).limit(1)).first()
        if row is None:
            # the database's list, not this process's: another process may have published
            stored = sorted(set(conn.execute(sa.select(d.c.key).distinct()).scalars()))
            what = f"{key!r} version {version}" if version is not None else repr(key)
            hint = (
                ""
                if key in stored  # only that version is missing
                else "; publish its file first (`sangkien publish FILE` or Engine.register)"
            )
            raise WorkflowNotFound(
                f"no workflow {what} is registered (registered: {', '.join(stored) or 'none'})"
                + hint
            )
        cached = self._defs.get((key, row.version))
        if cached is not None and cached.content_hash == row.content_hash:
            return cached
        self._defs.pop((key, row.version), None)
        return self._load_definition(conn, key, row.version)

    def _load_definition(self, conn: sa.Connection, key: str, version: int) -> Definition:
        found = self._defs.get((key, version))
        if found is not None:
            return found
        row = conn.execute(
            sa.select(t.definitions.c.source).where(
                t.definitions.c.key == key, t.definitions.c.version == version
            )
        ).first()
        if row is None:
            raise WorkflowNotFound(f"workflow {key!r} version {version} is not registered")
        definition = parse_definition(row.source, f"<stored {key} v{version}>")
        self._defs[(key, version)] = definition
        return definition

    def workflows(self) -> list[Definition]:
        """Definitions registered through this Engine (newest version of each key)."""
        return [self._latest[k] for k in sorted(self._latest)]

    def _parent_scope(
        self, conn: sa.Connection, parent_id: str | None, definition: Definition
    ) -> dict[str, Any] | None:
        """The parent as expressions see it, loaded only if an expression reads it."""
        if parent_id is None or not self._parent_used(definition):
            return None
        row = conn.execute(sa.select(t.instances).where(t.instances.c.id == parent_id)).first()
        if row is None:
            return None
        return _parent_view(row, self._load_definition(conn, row.workflow, row.workflow_version))

    def _parent_used(self, d: Definition) -> bool:
        key = (d.key, d.version)
        used = self._uses_parent.get(key)
        if used is None:
            used = self._uses_parent[key] = any("parent" in e.names for e in d.expressions.values())
        return used

    # ------------------------------------------------------------------ start

    def start(
        self,
        workflow: str,
        *,
        actor: Actor,
        unit: str | None = None,
        data: Mapping[str, Any] | None = None,
        parent: str | None = None,
        external_ref: str | None = None,
        comment: str | None = None,
        idempotency_key: str | None = None,
        version: int | None = None,
    ) -> Instance:
        """Start an instance of *workflow* in *unit* (default: the actor's unit)."""
        started = time.perf_counter()
        unit = unit or actor.unit
        incoming = dict(data or {})
        if unit is None:
            raise TransitionNotAllowed(
                None, "start", ["a unit is required: give unit= or an actor with a unit"]
            )
        if not actor.is_system and (actor.unit is None or not self.units.covers(actor.unit, unit)):
            raise TransitionNotAllowed(
                None, "start", [f"your unit {actor.unit!r} does not cover unit {unit!r}"]
            )
        request = {
            "op": "start",
            "workflow": workflow,
            "version": version,
            "unit": unit,
            "data": incoming,
            "parent": parent,
            "external_ref": external_ref,
            "comment": comment,
        }

        def run(conn: sa.Connection) -> tuple[Instance, bool]:
            if idempotency_key:
                replay = self._replay(conn, actor, idempotency_key, request)
                if replay is not None:
                    return replay, True
            # the newest version, read in the same transaction that starts the instance
            definition = self._definition_on(conn, workflow, version)
            wf = definition.model
            reasons: list[str] = []
            parent_row = None
            if wf.parent and parent is None:
                reasons.append(
                    f"workflow {workflow!r} instances belong to a {wf.parent!r}; give parent="
                )
            if parent is not None:
                parent_row = conn.execute(
                    sa.select(t.instances).where(t.instances.c.id == parent)
                ).first()
                if parent_row is None:
                    raise InstanceNotFound(parent)
                if wf.parent != parent_row.workflow:
                    reasons.append(
                        f"parent {parent!r} is a {parent_row.workflow!r}; "
                        f"{workflow!r} instances belong to {wf.parent or 'no parent'}"
                    )
                elif not self.units.covers(parent_row.unit, unit):
                    reasons.append(
                        f"parent {parent!r} belongs to unit {parent_row.unit!r}, "
                        f"which does not cover unit {unit!r}"
                    )
            parent_view = None
            if parent_row is not None:
                pdef = self._load_definition(conn, parent_row.workflow, parent_row.workflow_version)
                parent_view = _parent_view(parent_row, pdef)
            starters = definition.starter_roles
            roles = set(actor.roles) | set(starters)
            allowed = wf.start.roles
            if allowed is not None and not actor.is_system and not roles & set(allowed):
                reasons.append(
                    f"role {' or '.join(allowed)} required to start; you have "
                    f"{', '.join(sorted(actor.roles)) or 'no role'}"
                )
            defaults = {n: f.default for n, f in wf.fields.items() if f.default is not None}
            given, errors = check_data(wf.fields, incoming, wf.start.accepts)
            reasons.extend(errors)
            if reasons:
                raise _refusal(None, "start", reasons, bool(errors) and reasons == errors)
            values = {**{k: normalize(wf.fields[k], v) for k, v in defaults.items()}, **given}
            now = self.clock.now()
            iid = new_id()
            instance_view = {
                "id": iid,
                "workflow": workflow,
                "version": definition.version,
                "state": definition.initial_state,
                "unit": unit,
                "created_by": actor.id,
                "external_ref": external_ref,
                "parent_id": parent,
            }
            scope = _Scope(
                definition,
                values,
                incoming,
                actor,
                now,
                None,
                instance_view,
                parent_view,
                self.lang,
            )
            if wf.start.when:
                reasons.extend(scope.guard(wf.start.when))
            reasons.extend(scope.apply_set(wf.start.set, values))
            for f in wf.start.requires:
                if _empty(values.get(f)):
                    reasons.append(f"field {f!r} is required to start")
            reasons.extend(_missing_required(wf.fields, values))
            if reasons:
                raise TransitionNotAllowed(None, "start", reasons)
            state = definition.initial_state
            event: dict[str, Any] = {
                "instance_id": iid,
                "seq": 1,
                "kind": "started",
                "trigger": None,
                "from_state": None,
                "to_state": state,
                "actor_id": actor.id,
                "actor_roles": sorted(actor.roles),
                "actor_unit": actor.unit,
                "at": now,
                "data_delta": values,
                "comment": comment,
            }
            h = event_hash(prev_hash=GENESIS, **event)
            new_row = _Row(
                id=iid,
                workflow=workflow,
                workflow_version=definition.version,
                state=state,
                state_entered_at=now,
                data=values,
                unit=unit,
                parent_id=parent,
                external_ref=external_ref,
                created_by=actor.id,
                created_at=now,
                updated_at=now,
                version=1,
                last_seq=1,
                last_hash=h,
                entered_seq=1,
            )
            columns = dataclasses.asdict(new_row)
            del columns["data_text"]  # not a column
            conn.execute(t.instances.insert().values(**columns))
            conn.execute(t.events.insert().values(**event, prev_hash=GENESIS, hash=h))
            start_event = {**event, "detail": {}, "hash": h}
            self._notifier.on_event(conn, new_row, start_event, now)
            self._notifier.notify(
                conn,
                definition,
                new_row,
                definition.model.states[state].notify,
                context_kind="state_entered",
                event=start_event,
                now=now,
            )
            if definition.has_deadlines:
                self._scheduler.on_change(
                    conn,
                    definition,
                    new_row,
                    trigger=None,
                    entered=True,
                    entry_seq=1,
                    now=now,
                    new_instance=True,
                    scope=_Scope(
                        definition,
                        values,
                        incoming,
                        actor,
                        now,
                        now,
                        instance_view,
                        parent_view,
                        self.lang,
                    ).build(),
                )
            instance = _instance(new_row)
            if idempotency_key:
                self._remember(conn, actor, idempotency_key, request, instance, now)
            return instance, False

        instance, replayed = self._transact(run)
        if replayed:
            return instance
        log.info(
            "instance.started",
            instance_id=instance.id,
            workflow=workflow,
            state=instance.state,
            unit=unit,
            actor=actor.id,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return instance

    # ------------------------------------------------------------------ fire

    def fire(
        self,
        instance_id: str,
        trigger: str,
        *,
        actor: Actor,
        data: Mapping[str, Any] | None = None,
        comment: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> Instance:
        """Fire *trigger* on an instance as *actor*; return the instance after it.

        Raises :class:`TransitionNotAllowed` (with the rule that refused it),
        :class:`InstanceNotFound` (also for instances outside the actor's units) or
        :class:`ConcurrencyConflict` (another writer changed it first).
        """
        started = time.perf_counter()
        incoming = dict(data or {})
        request = {
            "op": "fire",
            "instance": instance_id,
            "trigger": trigger,
            "data": incoming,
            "comment": comment,
        }
        read_version = -1

        def run(conn: sa.Connection) -> tuple[Instance, _Row | None]:
            nonlocal read_version
            if idempotency_key:
                replay = self._replay(conn, actor, idempotency_key, request)
                if replay is not None:
                    return replay, None
            row = self._hot.load(conn, instance_id, _Row)
            if row is None or not self._visible(actor, row.unit):
                raise InstanceNotFound(instance_id)
            read_version = row.version
            if expected_version is not None and row.version != expected_version:
                raise ConcurrencyConflict(instance_id, expected_version, row.state)
            now = self.clock.now()
            instance = self._fire_row(conn, row, trigger, actor, incoming, comment, now=now)
            if idempotency_key:
                self._remember(conn, actor, idempotency_key, request, instance, now)
            return instance, row

        try:
            # a caller that pinned the version it saw is told at once when it moved
            instance, row = self._transact(
                run, reread=0 if expected_version is not None else _ATTEMPTS - 1
            )
        except StaleRead as exc:
            pinned = expected_version if expected_version is not None else read_version
            raise ConcurrencyConflict(instance_id, pinned, None) from exc
        if row is None:  # replayed
            return instance
        _hot_log.get().info(
            "transition",
            instance_id=instance_id,
            workflow=row.workflow,
            trigger=trigger,
            from_state=row.state,
            to_state=instance.state,
            actor=actor.id,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return instance

    def _fire_row(
        self,
        conn: sa.Connection,
        row: Any,
        trigger: str,
        actor: Actor,
        incoming: Mapping[str, Any],
        comment: str | None,
        *,
        now: datetime,
    ) -> Instance:
        """Check and apply *trigger* to the instance *row* inside the caller's transaction."""
        definition = self._load_definition(conn, row.workflow, row.workflow_version)
        parent = self._parent_scope(conn, row.parent_id, definition)
        ctx = _FireContext(definition, row, parent, actor, incoming, comment, now, lang=self.lang)
        machine = machine_for(definition)
        new_state = machine.fire(row.state, trigger, ctx)
        if new_state is None or ctx.chosen is None:
            raise _refusal(
                row.id, trigger, ctx.refusals(machine, row.state, trigger), ctx.data_only()
            )
        spec = ctx.chosen
        entered = spec.to is not None
        kind = "transition" if entered else "action"
        new = self._append(
            conn,
            row,
            kind=kind,
            trigger=trigger,
            actor=actor,
            to_state=new_state,
            data=ctx.new_data,
            delta=ctx.delta,
            comment=comment,
            now=now,
            entered=entered,
            data_text=None if ctx.delta else getattr(row, "data_text", None),
        )
        if definition.has_deadlines:
            self._scheduler.on_change(
                conn,
                definition,
                new,
                trigger=trigger,
                entered=entered,
                entry_seq=new.entered_seq,
                now=now,
                scope=_LazyScope(lambda: ctx.scope_after(new)),
                changed=list(ctx.delta),
                left=row.state,
            )
        state_notify = definition.model.states[new_state].notify if entered else []
        if spec.notify or state_notify:
            event = {
                "seq": new.last_seq,
                "kind": kind,
                "trigger": trigger,
                "from_state": row.state,
                "to_state": new_state,
                "actor_id": actor.id,
                "comment": comment,
                "at": now,
            }
            self._notifier.notify(
                conn, definition, new, spec.notify, context_kind=kind, event=event, now=now
            )
            self._notifier.notify(
                conn,
                definition,
                new,
                state_notify,
                context_kind="state_entered",
                event=event,
                now=now,
            )
        return _instance(new)

    def _append(
        self,
        conn: sa.Connection,
        row: Any,
        *,
        kind: str,
        trigger: str | None,
        actor: Actor,
        to_state: str,
        data: Mapping[str, Any],
        delta: Mapping[str, Any],
        comment: str | None,
        now: datetime,
        entered: bool = False,
        detail: Mapping[str, Any] | None = None,
        data_text: str | None = None,
    ) -> _Row:
        """Append one hash-chained event and write the instance under its version lock.

        *data_text* is the stored JSON of *data* when it is unchanged (written back as is).
        """
        seq = row.last_seq + 1
        event: dict[str, Any] = {
            "instance_id": row.id,
            "seq": seq,
            "kind": kind,
            "trigger": trigger,
            "from_state": row.state,
            "to_state": to_state,
            "actor_id": actor.id,
            "actor_roles": sorted(actor.roles),
            "actor_unit": actor.unit,
            "at": now,
            "data_delta": delta,
            "comment": comment,
            "detail": detail,
        }
        h = event_hash(prev_hash=row.last_hash, **event)
        entered_at = now if entered else row.state_entered_at
        entered_seq = seq if entered else row.entered_seq
        written = self._hot.write(
            conn,
            instance={
                "id": row.id,
                "state": to_state,
                "entered": entered_at,
                "data": data,
                "version": row.version,
                "seq": seq,
                "hash": h,
                "now": now,
                "entered_seq": entered_seq,
                "data_text": data_text,
            },
            event={**event, "prev_hash": row.last_hash, "hash": h},
        )
        if written != 1:
            current = conn.execute(
                sa.select(t.instances.c.state).where(t.instances.c.id == row.id)
            ).scalar()
            raise ConcurrencyConflict(row.id, row.version, current)
        new = _Row(
            id=row.id,
            workflow=row.workflow,
            workflow_version=row.workflow_version,
            state=to_state,
            state_entered_at=entered_at,
            data=dict(data),
            unit=row.unit,
            parent_id=row.parent_id,
            external_ref=row.external_ref,
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=now,
            version=row.version + 1,
            last_seq=seq,
            last_hash=h,
            entered_seq=entered_seq,
        )
        if self._notifier.subscribers:
            self._notifier.on_event(
                conn, new, {**event, "detail": dict(detail or {}), "hash": h}, now
            )
        return new

    def _append_system_event(
        self,
        conn: sa.Connection,
        row: Any,
        definition: Definition,
        kind: str,
        actor: Actor,
        *,
        detail: Mapping[str, Any],
        now: datetime,
        set_: Mapping[str, str] | None = None,
        notify: Any = None,
    ) -> _Row:
        """Record a deadline event (reminder, escalation...) in the instance's history."""
        values = dict(row.data)
        delta: dict[str, Any] = {}
        if set_:
            parent = self._parent_scope(conn, row.parent_id, definition)
            scope = _Scope(
                definition,
                values,
                {},
                actor,
                now,
                row.state_entered_at,
                _instance_view(row),
                parent,
                self.lang,
            )
            reasons = scope.apply_set(set_, values)
            if reasons:
                detail = {**detail, "set_errors": reasons}
            delta = {k: v for k, v in values.items() if row.data.get(k) != v}
        new = self._append(
            conn,
            row,
            kind=kind,
            trigger=None,
            actor=actor,
            to_state=row.state,
            data=values,
            delta=delta,
            comment=None,
            now=now,
            detail=detail,
        )
        if notify:
            due = detail.get("due_at")
            self._notifier.notify(
                conn,
                definition,
                new,
                notify,
                context_kind=kind,
                event={
                    "seq": new.last_seq,
                    "kind": kind,
                    "trigger": None,
                    "from_state": row.state,
                    "to_state": row.state,
                    "actor_id": actor.id,
                    "comment": None,
                    "at": now,
                },
                now=now,
                escalation=kind == "escalation",
                deadline={
                    "label": detail.get("label"),
                    "due_at": datetime.fromisoformat(due) if due else None,
                    "step": detail.get("escalation") or (detail.get("step", 0) + 1),
                    "steps": detail.get("of"),
                },
            )
        return new

    def available(self, instance_id: str, *, actor: Actor) -> list[TriggerOption]:
        """Triggers leaving the instance's state, each allowed or refused with reasons.

        Data-dependent checks (fields sent with the action, comments) are left to
        :meth:`fire`; a guard that needs such data is reported as allowed.
        """
        with self._read() as conn:
            row = conn.execute(
                sa.select(t.instances).where(t.instances.c.id == instance_id)
            ).first()
            if row is None or not self._visible(actor, row.unit):
                raise InstanceNotFound(instance_id)
            definition = self._load_definition(conn, row.workflow, row.workflow_version)
            parent = self._parent_scope(conn, row.parent_id, definition)
        now = self.clock.now()
        machine = machine_for(definition)
        by_trigger: dict[str, TriggerOption] = {}
        for spec in machine.candidates(row.state):
            ctx = _FireContext(
                definition, row, parent, actor, {}, None, now, probe=True, lang=self.lang
            )
            ok = ctx.check(spec)
            label = _label(spec.label, self.lang)
            option = TriggerOption(spec.trigger, spec.to, ok, tuple(ctx.reasons), label)
            prev = by_trigger.get(spec.trigger)
            if prev is None or (option.allowed and not prev.allowed):
                by_trigger[spec.trigger] = option
            elif not prev.allowed and not option.allowed:
                by_trigger[spec.trigger] = TriggerOption(
                    spec.trigger, prev.to_state, False, prev.reasons + option.reasons, prev.label
                )
        return list(by_trigger.values())

    # ------------------------------------------------------------------ reads

    def _visible(self, actor: Actor | None, unit: str) -> bool:
        if actor is None or actor.is_system:
            return True
        return actor.unit is not None and self.units.covers(actor.unit, unit)

    def get(self, instance_id: str, *, actor: Actor | None = None) -> Instance:
        """Return an instance; outside *actor*'s units it does not exist."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(t.instances).where(t.instances.c.id == instance_id)
            ).first()
        if row is None or not self._visible(actor, row.unit):
            raise InstanceNotFound(instance_id)
        return _instance(row)

    def list(
        self,
        *,
        workflow: str | None = None,
        state: str | None = None,
        unit: str | None = None,
        parent: str | None = None,
        actor: Actor | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Instance]:
        """List instances matching the filters, oldest first; page with *after* (an id)."""
        q = sa.select(t.instances).order_by(t.instances.c.id).limit(max(1, min(limit, 1000)))
        c = t.instances.c
        if workflow is not None:
            q = q.where(c.workflow == workflow)
        if state is not None:
            q = q.where(c.state == state)
        if unit is not None:
            q = q.where(c.unit == unit)
        if parent is not None:
            q = q.where(c.parent_id == parent)
        if after is not None:
            q = q.where(c.id > after)
        post_filter = False
        if actor is not None and not actor.is_system:
            if actor.unit is None:
                return []
            scope = self.units.subtree(actor.unit)
            if scope is None:
                post_filter = True
            else:
                q = q.where(c.unit.in_(sorted(scope)))
        with self._read() as conn:
            rows = conn.execute(q).all()
        out = [_instance(r) for r in rows]
        if post_filter:
            out = [i for i in out if self._visible(actor, i.unit)]
        return out

    def history(self, instance_id: str, *, actor: Actor | None = None) -> builtins.list[Event]:
        """Return the instance's history, oldest first."""
        self.get(instance_id, actor=actor)
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.events)
                .where(t.events.c.instance_id == instance_id)
                .order_by(t.events.c.seq)
            ).all()
        return [_event(r) for r in rows]

    def verify(self, instance_id: str | None = None) -> builtins.list[ChainBreak]:
        """Check the hash chains of one instance (or all); return every break found."""
        breaks: builtins.list[ChainBreak] = []
        with self._read() as conn:
            q = sa.select(
                t.instances.c.id,
                t.instances.c.last_seq,
                t.instances.c.last_hash,
                t.instances.c.state,
                t.instances.c.data,
            )
            if instance_id is not None:
                q = q.where(t.instances.c.id == instance_id)
            heads = conn.execute(q.order_by(t.instances.c.id)).all()
            if instance_id is not None and not heads:
                raise InstanceNotFound(instance_id)
            for head in heads:
                rows = conn.execute(
                    sa.select(t.events)
                    .where(t.events.c.instance_id == head.id)
                    .order_by(t.events.c.seq)
                ).all()
                chain = [_event(r) for r in rows]
                breaks.extend(
                    verify_chain(
                        head.id, chain, (head.last_seq, head.last_hash), (head.state, head.data)
                    )
                )
        return breaks

    # ------------------------------------------------------------------ idempotency

    def _replay(
        self, conn: sa.Connection, actor: Actor, key: str, request: Mapping[str, Any]
    ) -> Instance | None:
        row = conn.execute(
            sa.select(t.idempotency).where(
                t.idempotency.c.actor_id == actor.id, t.idempotency.c.key == key
            )
        ).first()
        if row is None:
            return None
        if row.request_hash != _request_hash(request):
            raise IdempotencyKeyReused(
                f"idempotency key {key!r} was already used by {actor.id!r} for a different "
                "request; use a new key for a new request"
            )
        return Instance.from_dict(row.result, replayed=True)

    def _remember(
        self,
        conn: sa.Connection,
        actor: Actor,
        key: str,
        request: Mapping[str, Any],
        instance: Instance,
        now: datetime,
    ) -> None:
        conn.execute(
            t.idempotency.insert().values(
                actor_id=actor.id,
                key=key,
                request_hash=_request_hash(request),
                instance_id=instance.id,
                result=instance.to_dict(),
                created_at=now,
            )
        )


# ---------------------------------------------------------------------- helpers


def _request_hash(request: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(request).encode()).hexdigest()


def _store_error(exc: sa.exc.SQLAlchemyError) -> SangkienError:
    if isinstance(exc, sa.exc.IntegrityError):
        text = str(exc.orig)
        if "sk_events" in text or "instance_id, seq" in text or "sk_idempotency" in text:
            return StoreConflict(f"a concurrent writer got there first; retry: {exc.orig}")
    orig = getattr(exc, "orig", None) or exc
    message = first_line(orig)
    low = message.lower()
    if "readonly" in low or "read-only" in low or "read only" in low:
        return StoreError(f"the database is read-only: {message}")
    if "disk" in low and "full" in low:
        return StoreError(f"the disk holding the database is full: {message}")
    return StoreError(f"database error: {message}")


def _refusal(
    instance_id: str | None, trigger: str, reasons: list[str], data_only: bool
) -> TransitionNotAllowed:
    """InvalidData when every refusal was about the data sent, else TransitionNotAllowed."""
    if data_only:
        return InvalidData(instance_id, trigger, reasons)
    return TransitionNotAllowed(instance_id, trigger, reasons)


def _empty(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == {}


def _missing_required(fields: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    return [
        f"field {n!r} is required"
        for n, f in fields.items()
        if f.required and _empty(values.get(n))
    ]


def _label(label: Any, lang: str = "vi") -> str | None:
    if label is None or isinstance(label, str):
        return label
    return str(label.get(lang) or next(iter(label.values()), None))


def _instance(row: Any) -> Instance:
    return Instance(
        row.id,
        row.workflow,
        row.workflow_version,
        row.state,
        row.state_entered_at,
        dict(row.data),
        row.unit,
        row.parent_id,
        row.external_ref,
        row.created_by,
        row.created_at,
        row.updated_at,
        row.version,
    )


def _event(row: Any) -> Event:
    return Event(
        row.instance_id,
        row.seq,
        row.kind,
        row.trigger,
        row.from_state,
        row.to_state,
        row.actor_id,
        tuple(row.actor_roles),
        row.actor_unit,
        row.at,
        dict(row.data_delta),
        row.comment,
        row.prev_hash,
        row.hash,
        dict(row.detail) if row.detail is not None else None,
    )


class _LazyScope(Mapping[str, Any]):
    """An expression scope built on first use (most deadlines never read one)."""

    __slots__ = ("_build", "_scope")

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build
        self._scope: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._scope is None:
            self._scope = self._build()
        return self._scope

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


@dataclass(slots=True)
class _Row:
    """An instance row the engine just wrote (same attributes as a selected row)."""

    id: str
    workflow: str
    workflow_version: int
    state: str
    state_entered_at: datetime
    data: dict[str, Any]
    unit: str
    parent_id: str | None
    external_ref: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int
    last_seq: int
    last_hash: str
    entered_seq: int
    data_text: str | None = None  # the stored JSON of data, when read as text


def _instance_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "workflow": row.workflow,
        "version": row.workflow_version,
        "state": row.state,
        "unit": row.unit,
        "created_by": row.created_by,
        "external_ref": row.external_ref,
        "parent_id": row.parent_id,
    }


def _parent_view(row: Any, definition: Definition) -> dict[str, Any]:
    return {
        "id": row.id,
        "workflow": row.workflow,
        "state": row.state,
        "unit": row.unit,
        "data": definition.coerce_for_cel(row.data),
    }


class _Scope:
    """Builds the expression scope lazily and evaluates guards and set effects."""

    def __init__(
        self,
        definition: Definition,
        data: Mapping[str, Any],
        incoming: Mapping[str, Any],
        actor: Actor,
        now: datetime,
        entered: datetime | None,
        instance: Mapping[str, Any],
        parent: Mapping[str, Any] | None,
        lang: str = "vi",
    ) -> None:
        self.definition = definition
        self.lang = lang
        self.data = data
        self.incoming = incoming
        self.actor = actor
        self.now = now
        self.entered = entered
        self.instance = instance
        self.parent = parent
        self._built: dict[str, Any] | None = None

    def build(self) -> dict[str, Any]:
        if self._built is None:
            d = self.definition
            scope: dict[str, Any] = {
                "data": d.coerce_for_cel(self.data),
                "input": d.coerce_for_cel(self.incoming),
                "actor": {
                    "id": self.actor.id,
                    "roles": sorted(self.actor.roles),
                    "unit": self.actor.unit or "",
                },
                "now": self.now,
                "instance": {k: ("" if v is None else v) for k, v in self.instance.items()},
            }
            if self.entered is not None:
                scope["state_entered_at"] = self.entered
            if self.parent is not None:
                scope["parent"] = self.parent
            self._built = scope
        return self._built

    def guard(self, when: Any, *, probe: bool = False) -> list[str]:
        reasons: list[str] = []
        for source, message in guards_of(when):
            expr = self.definition.expression(source)
            try:
                value = expr.evaluate(self.build())
            except ExpressionError as exc:
                if not probe:
                    reasons.append(f"guard `{source}` could not be evaluated: {exc}")
                continue
            if value is not True:
                text = _label(message, self.lang) if message is not None else None
                reasons.append(text or f"guard `{source}` is not satisfied")
        return reasons

    def apply_set(self, effects: Mapping[str, str], values: dict[str, Any]) -> list[str]:
        reasons: list[str] = []
        fields = self.definition.model.fields
        for target, source in effects.items():
            try:
                value = self.definition.expression(source).evaluate(self.build())
            except ExpressionError as exc:
                reasons.append(f"set {target}: `{source}` could not be evaluated: {exc}")
                continue
            spec = fields[target]
            value = _from_cel(value, spec.type)
            err = check_value(target, spec, value)
            if err:
                reasons.append(f"set {target}: {err}")
                continue
            values[target] = normalize(spec, value)
            self._built = None  # later effects see earlier ones
            self.data = values
        return reasons


def _from_cel(value: Any, kind: str) -> Any:
    if isinstance(value, datetime):
        if kind == "date":
            from zoneinfo import ZoneInfo

            return value.astimezone(ZoneInfo("Asia/Ho_Chi_Minh")).date()
        return value
    return value


class _FireContext:
    """Checks one candidate transition for the machine; remembers why others failed."""

    def __init__(
        self,
        definition: Definition,
        row: Any,
        parent: Any,
        actor: Actor,
        incoming: Mapping[str, Any],
        comment: str | None,
        now: datetime,
        *,
        probe: bool = False,
        lang: str = "vi",
    ) -> None:
        self.definition = definition
        self.lang = lang
        self.row = row
        self.parent = parent
        self.actor = actor
        self.incoming = incoming
        self.comment = comment
        self.now = now
        self.probe = probe
        self.reasons: list[str] = []
        self.data_refused: set[int] = set()
        self.tried: list[tuple[TransitionSpec, list[str]]] = []
        self.chosen: TransitionSpec | None = None
        self.new_data: dict[str, Any] = {}
        self.delta: dict[str, Any] = {}

    def effective_roles(self) -> set[str]:
        starters = self.definition.starter_roles
        roles = set(self.actor.roles) - starters
        if self.actor.id == self.row.created_by and not self.actor.is_system:
            roles |= starters
        return roles

    def check(self, spec: TransitionSpec) -> bool:
        reasons: list[str] = []
        roles = self.effective_roles()
        if not roles & set(spec.roles):
            have = ", ".join(sorted(self.actor.roles)) or "no role"
            msg = f"role {' or '.join(spec.roles)} required; you have {have}"
            held = set(spec.roles) & self.definition.starter_roles & set(self.actor.roles)
            if held:
                msg += (
                    f" (role {', '.join(sorted(held))} is held on this instance only by "
                    f"its starter, {self.row.created_by!r})"
                )
            reasons.append(msg)
        if not self.probe and spec.comment == "required" and not (self.comment or "").strip():
            reasons.append(f"a comment giving the reasons is required for {spec.trigger!r}")
        wf = self.definition.model
        given, errors = check_data(wf.fields, self.incoming, spec.accepts)
        if not self.probe:
            reasons.extend(errors)
            if errors and reasons == errors:
                self.data_refused.add(id(spec))
        if reasons:
            return self._refuse(spec, reasons)
        values = {**self.row.data, **given}
        self.given = given
        if spec.when or spec.set:
            scope = _Scope(
                self.definition,
                values,
                given,
                self.actor,
                self.now,
                self.row.state_entered_at,
                _instance_view(self.row),
                self.parent,
                self.lang,
            )
            if spec.when:
                reasons.extend(scope.guard(spec.when, probe=self.probe))
            if reasons:
                return self._refuse(spec, reasons)
            if self.probe:
                return True
            reasons.extend(scope.apply_set(spec.set, values))
        elif self.probe:
            return True
        for f in spec.requires:
            if _empty(values.get(f)):
                reasons.append(f"field {f!r} is required for {spec.trigger!r}")
        reasons.extend(_missing_required(wf.fields, values))
        if reasons:
            return self._refuse(spec, reasons)
        self.chosen = spec
        self.new_data = values
        old = self.row.data
        self.delta = {k: v for k, v in values.items() if k not in old or old[k] != v}
        return True

    def scope_after(self, row: Any) -> dict[str, Any]:
        """The expression scope once the transition is applied (for deadline anchors)."""
        return _Scope(
            self.definition,
            row.data,
            getattr(self, "given", {}),
            self.actor,
            self.now,
            row.state_entered_at,
            _instance_view(row),
            self.parent,
            self.lang,
        ).build()

    def data_only(self) -> bool:
        """True if every candidate was refused only because of the data sent."""
        return bool(self.tried) and all(id(s) in self.data_refused for s, _ in self.tried)

    def _refuse(self, spec: TransitionSpec, reasons: list[str]) -> bool:
        self.tried.append((spec, reasons))
        self.reasons.extend(reasons)
        return False

    def refusals(self, machine: Any, state: str, trigger: str) -> list[str]:
        if not self.tried:
            if trigger not in machine.triggers:
                known = ", ".join(sorted(machine.triggers))
                key = self.definition.key
                return [f"workflow {key!r} has no trigger {trigger!r} (triggers: {known})"]
            here = sorted({s.trigger for s in machine.candidates(state)})
            return [
                f"{trigger!r} cannot be fired from state {state!r}; "
                f"from there: {', '.join(here) or 'nothing (final state)'}"
            ]
        if len(self.tried) == 1:
            return self.tried[0][1]
        out = []
        for spec, reasons in self.tried:
            out.append(f"to {spec.to or state!r}: " + "; ".join(reasons))
        return out
