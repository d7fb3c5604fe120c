"""The transition hot path in plain driver SQL.

``Engine.fire`` runs three statements per transition: read the instance, write it under its
version lock, append the history event. Built through SQLAlchemy Core each costs more in
statement construction and cache-key hashing than the database spends executing it, so these
three go straight to the DBAPI cursor of the SQLAlchemy connection — same connection, same
transaction, the schema still owned by the models and Alembic (a test keeps them in step).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from sangkien.store.writer import Pending, StaleRead, pending_of

__all__ = ["DeadlineWrites", "HotPath"]

_T = TypeVar("_T")

_INSTANCE_COLUMNS = (
    "id",
    "workflow",
    "workflow_version",
    "state",
    "state_entered_at",
    "data",
    "unit",
    "parent_id",
    "external_ref",
    "created_by",
    "created_at",
    "updated_at",
    "version",
    "last_seq",
    "last_hash",
    "entered_seq",
)
_EVENT_COLUMNS = (
    "instance_id",
    "seq",
    "kind",
    "trigger",
    "from_state",
    "to_state",
    "actor_id",
    "actor_roles",
    "actor_unit",
    "at",
    "data_delta",
    "comment",
    "detail",
    "prev_hash",
    "hash",
)


# PostgreSQL types of the columns written through INSERT ... SELECT (where a parameter
# psycopg sends untyped — a str, None — needs its type spelled out)
_PG_TYPES = {
    "instance_id": "text",
    "seq": "int",
    "kind": "text",
    "trigger": "text",
    "from_state": "text",
    "to_state": "text",
    "actor_id": "text",
    "actor_roles": "jsonb",
    "actor_unit": "text",
    "at": "timestamptz",
    "data_delta": "jsonb",
    "comment": "text",
    "detail": "jsonb",
    "prev_hash": "text",
    "hash": "text",
    "name": "text",
    "entry_seq": "int",
    "status": "text",
    "workflow": "text",
    "unit": "text",
    "calendar": "text",
    "anchor_at": "timestamptz",
    "period": "text",
    "base_due_at": "timestamptz",
    "shifts": "jsonb",
    "due_at": "timestamptz",
    "paused_at": "timestamptz",
    "escalations_done": "int",
    "calendar_fingerprint": "text",
    "created_at": "timestamptz",
}


def _prefixed(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    return {prefix + k: v for k, v in values.items()}


# a deadline's timers, whatever their number, as three array parameters (one query text)
_TIMERS_FROM = (
    "SELECT {d}.id, {d}.instance_id, t.kind, t.step, t.fire_at, 'pending' FROM {d}, "
    "jsonb_to_recordset(%(t_timers)s::jsonb) AS t(kind text, step int, fire_at timestamptz)"
)
_JSON = json.JSONEncoder(ensure_ascii=False).encode

_EVENT_OWN = (
    "kind",
    "trigger",
    "from_state",
    "actor_id",
    "actor_roles",
    "actor_unit",
    "data_delta",
    "comment",
    "detail",
    "prev_hash",
)


class _Statement:
    """A queued write with no single-statement form: it needs a transaction."""

    __slots__ = ("params", "sql")
    instance_write = False
    composable = False

    def __init__(self, sql: str, params: Any) -> None:
        self.sql = sql
        self.params = params

    def run(self, cursor: Any) -> None:
        cursor.execute(self.sql, self.params)

    def parts(self, n: int) -> None:
        return None


class _InstanceWrite:
    """The version-checked instance update and its event (PostgreSQL)."""

    __slots__ = ("event", "hot", "values")
    instance_write = True
    composable = True

    def __init__(self, hot: HotPath, values: dict[str, Any], event: dict[str, Any]) -> None:
        self.hot = hot
        self.values = values
        self.event = event

    @property
    def instance_id(self) -> str:
        return str(self.values["id"])

    def run(self, cursor: Any) -> None:
        cursor.execute(self.hot.update_sql, self.values)
        if cursor.rowcount != 1:
            raise StaleRead(self.instance_id)
        cursor.execute(self.hot.insert_sql, self.event)

    def parts(self, n: int) -> tuple[list[str], dict[str, Any]]:
        params = _prefixed(f"u{n}_", self.values)
        ev = self.event
        for k in _EVENT_OWN:
            params[f"e{n}_{k}"] = ev[k]
        return self.hot.cte_parts(n), params


# the last datetime written and its text: a transition writes its moment several times
_last_dt: tuple[datetime | None, str] = (None, "")


def _sqlite_dt_out(value: datetime) -> str:
    global _last_dt
    last = _last_dt  # one read: another thread may replace it meanwhile
    if value is last[0]:
        return last[1]
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    text = utc.isoformat(" ", timespec="microseconds")[:26]  # without the "+00:00"
    _last_dt = (value, text)
    return text


def _sqlite_dt_in(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return datetime.fromisoformat(value + "+00:00")  # stored as UTC without the zone
    except ValueError:  # written with a zone by something else
        found = datetime.fromisoformat(value)
        return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


def _sqlite_json_in(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _identity(value: Any) -> Any:
    return value


def _pg_dt_in(value: datetime) -> datetime:
    return value.astimezone(UTC)


class HotPath:
    """Driver-level SQL for the three statements of a transition, per dialect."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        cols = ", ".join(_INSTANCE_COLUMNS)
        ev_cols = ", ".join(_EVENT_COLUMNS)
        if dialect == "sqlite":
            self._p: Callable[[str], str] = lambda name: "?"
            self.dt_out: Callable[[datetime], Any] = _sqlite_dt_out
            self.dt_in: Callable[[Any], datetime] = _sqlite_dt_in
            self.json_out: Callable[[Any], Any] = json.JSONEncoder(ensure_ascii=False).encode
            self.json_in: Callable[[Any], Any] = _sqlite_json_in
            self.positional = True
        else:
            self._p = lambda name: f"%({name})s"
            self.dt_out = _identity
            self.dt_in = _pg_dt_in
            # JSON goes as text the server casts (psycopg's Jsonb wrapper costs 10x more)
            self.json_out = _JSON
            self.json_in = _identity
            self.positional = False
        p = self._p
        self.select_sql = f"SELECT {cols} FROM sk_instances WHERE id = {p('id')}"
        self.update_sql = (
            "UPDATE sk_instances SET state = {s}, state_entered_at = {e}, data = {d}, "
            "version = {nv}, last_seq = {q}, last_hash = {h}, updated_at = {u}, "
            "entered_seq = {es} WHERE id = {i} AND version = {v}"
        ).format(
            s=p("state"),
            e=p("entered"),
            d=p("data"),
            nv=p("new_version"),
            q=p("seq"),
            h=p("hash"),
            u=p("now"),
            es=p("entered_seq"),
            i=p("id"),
            v=p("version"),
        )
        self.insert_sql = (
            f"INSERT INTO sk_events ({ev_cols}) VALUES ({', '.join(p(c) for c in _EVENT_COLUMNS)})"
        )
        self.postgres = dialect == "postgresql"
        self._getters: dict[tuple[str, ...], Callable[[Mapping[str, Any]], Any]] = {}
        self._roles: dict[tuple[str, ...], Any] = {}
        self._cte_parts: dict[int, list[str]] = {}
        self._update_order = (
            "state",
            "entered",
            "data",
            "new_version",
            "seq",
            "hash",
            "now",
            "entered_seq",
            "id",
            "version",
        )

    def _params(self, order: tuple[str, ...], values: Mapping[str, Any]) -> Any:
        if self.positional:
            getter = self._getters.get(order)
            if getter is None:
                getter = self._getters[order] = operator.itemgetter(*order)
            got = getter(values)
            return got if len(order) > 1 else (got,)
        return values

    @staticmethod
    def cursor(conn: sa.Connection) -> Any:
        return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def cte_parts(self, n: int) -> list[str]:
        """The instance write as CTEs u<n> (update, gating the rest) and e<n> (event)."""
        found = self._cte_parts.get(n)
        if found is None:
            update = self.update_sql.replace("%(", f"%(u{n}_")
            # what the event shares with the instance comes from the updated row
            shared = {
                "instance_id": "id",
                "seq": "last_seq",
                "to_state": "state",
                "at": "updated_at",
                "hash": "last_hash",
            }
            select = ", ".join(
                f"u{n}.{shared[c]}" if c in shared else f"%(e{n}_{c})s::{_PG_TYPES[c]}"
                for c in _EVENT_COLUMNS
            )
            event = f"INSERT INTO sk_events ({', '.join(_EVENT_COLUMNS)}) SELECT {select} FROM u{n}"
            returning = "RETURNING id, last_seq, state, updated_at, last_hash"
            found = self._cte_parts[n] = [f"u{n} AS ({update} {returning})", f"e{n} AS ({event})"]
        return found

    def pending(self, conn: sa.Connection) -> Pending | None:
        """The queue of the connection's transaction, if it runs in a Writer on PostgreSQL."""
        if not self.postgres:
            return None
        return pending_of(conn)

    def submit(self, conn: sa.Connection, op: Any) -> None:
        """Queue *op* with the transaction's write (a PostgreSQL Writer) or run it now."""
        pending = self.pending(conn)
        if pending is not None:
            pending.add(op)
            return
        cur = self.cursor(conn)
        try:
            op.run(cur)
        finally:
            cur.close()

    def run(self, conn: sa.Connection, sql: str, params: Any) -> None:
        """Execute a write whose result is not needed (queued if the transaction queues)."""
        self.submit(conn, _Statement(sql, params))

    def queue_outbox(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> bool:
        """Queue outbox rows with the transition's write (PostgreSQL); False: not queued."""
        pending = self.pending(conn)
        if pending is None:
            return False
        pending.add(_OutboxRows(rows))
        return True

    def load(self, conn: sa.Connection, instance_id: str, make: Callable[..., _T]) -> _T | None:
        """The instance row, or None: ``make(*columns, data_text)`` with Python values.

        *make* receives the columns of ``_INSTANCE_COLUMNS`` in order, then the stored JSON
        of ``data`` as text when the driver returns it so (None otherwise): a transition that
        leaves the data alone writes it back as it was read.
        """
        pending = self.pending(conn)
        if pending is not None:
            row = pending.query(self.select_sql, {"id": instance_id}).fetchone()
        else:
            cur = self.cursor(conn)
            try:
                cur.execute(
                    self.select_sql, (instance_id,) if self.positional else {"id": instance_id}
                )
                row = cur.fetchone()
            finally:
                cur.close()
        if row is None:
            return None
        (iid, wf, wf_version, state, entered, data, unit, parent, ref, by, created, updated,
         version, seq, last_hash, entered_seq) = row  # fmt: skip
        dt_in = self.dt_in
        return make(
            iid,
            wf,
            wf_version,
            state,
            dt_in(entered),
            self.json_in(data),
            unit,
            parent,
            ref,
            by,
            dt_in(created),
            dt_in(updated),
            version,
            seq,
            last_hash,
            entered_seq,
            data if isinstance(data, str) else None,
        )

    def write(
        self, conn: sa.Connection, *, instance: Mapping[str, Any], event: Mapping[str, Any]
    ) -> int:
        """UPDATE the instance under its version lock and INSERT the event; return rowcount."""
        now = self.dt_out(instance["now"])
        entered = instance["entered"]
        text = instance.get("data_text")
        values = {
            "state": instance["state"],
            "entered": now if entered is instance["now"] else self.dt_out(entered),
            "data": text if text is not None else self.json_out(instance["data"]),
            "new_version": instance["version"] + 1,
            "seq": instance["seq"],
            "hash": instance["hash"],
            "now": now,
            "entered_seq": instance["entered_seq"],
            "id": instance["id"],
            "version": instance["version"],
        }
        ev = dict(event)
        roles = tuple(ev["actor_roles"])
        encoded = self._roles.get(roles)
        if encoded is None:
            encoded = self._roles[roles] = self.json_out(list(roles))
            if len(self._roles) > 256:  # a handful of role sets in practice
                self._roles.clear()
        ev["actor_roles"] = encoded
        ev["at"] = now if ev["at"] is instance["now"] else self.dt_out(ev["at"])
        ev["data_delta"] = self.json_out(dict(ev["data_delta"])) if ev["data_delta"] else "{}"
        ev["detail"] = self.json_out(dict(ev["detail"])) if ev["detail"] is not None else None
        pending = self.pending(conn)
        if pending is not None:
            pending.add(_InstanceWrite(self, values, ev))
            return 1
        cur = self.cursor(conn)
        try:
            cur.execute(self.update_sql, self._params(self._update_order, values))
            if cur.rowcount != 1:
                return int(cur.rowcount)
            cur.execute(self.insert_sql, self._params(_EVENT_COLUMNS, ev))
            return 1
        finally:
            cur.close()


_DEADLINE_COLUMNS = (
    "instance_id",
    "kind",
    "name",
    "entry_seq",
    "status",
    "workflow",
    "unit",
    "calendar",
    "anchor_at",
    "period",
    "base_due_at",
    "shifts",
    "due_at",
    "paused_at",
    "escalations_done",
    "calendar_fingerprint",
    "created_at",
)
_TIMER_COLUMNS = ("deadline_id", "instance_id", "kind", "step", "fire_at", "status")


class DeadlineWrites:
    """Driver-level SQL for the deadline rows a transition writes (same connection)."""

    def __init__(self, hot: HotPath) -> None:
        self.hot = hot
        p = hot._p
        deadline_values = ", ".join(p(c) for c in _DEADLINE_COLUMNS)
        self.insert_deadline_sql = (
            f"INSERT INTO sk_deadlines ({', '.join(_DEADLINE_COLUMNS)}) VALUES "
            f"({deadline_values}) RETURNING id"
        )
        self._timer_into = f"INSERT INTO sk_timers ({', '.join(_TIMER_COLUMNS)}) VALUES "
        self._timer_row = f"({', '.join(p(c) for c in _TIMER_COLUMNS)})"
        self.insert_timer_sql = self._timer_into + self._timer_row
        self._timer_rows: dict[int, str] = {}  # SQLite: n rows in one INSERT, by n
        # PostgreSQL: the deadline and its timers in one statement (no id comes back)
        self.insert_deadline_timers_sql = (
            f"WITH d AS (INSERT INTO sk_deadlines ({', '.join(_DEADLINE_COLUMNS)}) VALUES "
            f"({deadline_values}) RETURNING id, instance_id) "
            f"INSERT INTO sk_timers ({', '.join(_TIMER_COLUMNS)}) {_TIMERS_FROM.format(d='d')}"
        )
        if hot.postgres:
            self.close_sql = (
                "WITH closed AS (UPDATE sk_deadlines SET status = 'closed', closed_at = "
                "%(now)s WHERE instance_id = %(instance_id)s AND kind = 'state' AND "
                "status = 'active' RETURNING id) UPDATE sk_timers SET status = 'cancelled', "
                "note = %(note)s WHERE deadline_id = ANY (ARRAY(SELECT id FROM closed)) AND "
                "status = 'pending'"
            )
        else:
            self.cancel_open_sql = (
                "UPDATE sk_timers SET status = 'cancelled', note = ? WHERE status = 'pending' "
                "AND deadline_id IN (SELECT id FROM sk_deadlines WHERE instance_id = ? AND "
                "kind = 'state' AND status = 'active')"
            )
            self.close_sql = (
                "UPDATE sk_deadlines SET status = 'closed', closed_at = ? "
                "WHERE instance_id = ? AND kind = 'state' AND status = 'active'"
            )
        self.cancel_sql = (
            f"UPDATE sk_timers SET status = 'cancelled', note = {p('note')} "
            f"WHERE deadline_id = {p('deadline_id')} AND status = 'pending'"
        )

    def insert_deadline(
        self,
        conn: sa.Connection,
        values: Mapping[str, Any],
        timers: list[tuple[str, int, datetime]],
    ) -> None:
        """Insert a deadline and its timers (kind, step, fire_at)."""
        h = self.hot
        v = dict(values)
        for k in ("anchor_at", "base_due_at", "due_at", "paused_at", "created_at"):
            if v[k] is not None:
                v[k] = h.dt_out(v[k])
        v["shifts"] = h.json_out(list(v["shifts"])) if v["shifts"] else "[]"
        if h.postgres:
            h.submit(conn, _InsertDeadline(self, v, timers))
            return
        cur = h.cursor(conn)
        try:
            cur.execute(self.insert_deadline_sql, h._params(_DEADLINE_COLUMNS, v))
            did = int(cur.fetchone()[0])
            iid = v["instance_id"]
            self._insert_timer_rows(
                cur, [(did, iid, kind, step, h.dt_out(at), "pending") for kind, step, at in timers]
            )
        finally:
            cur.close()

    def insert_timers(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        h = self.hot
        params = [h._params(_TIMER_COLUMNS, {**r, "fire_at": h.dt_out(r["fire_at"])}) for r in rows]
        pending = h.pending(conn)
        if pending is not None:
            for one in params:
                pending.add(_Statement(self.insert_timer_sql, one))
            return
        cur = h.cursor(conn)
        try:
            self._insert_timer_rows(cur, params)
        finally:
            cur.close()

    def _insert_timer_rows(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        """SQLite: timer rows (in ``_TIMER_COLUMNS`` order) as one INSERT."""
        if not rows:
            return
        sql = self._timer_rows.get(len(rows))
        if sql is None:
            sql = self._timer_rows[len(rows)] = self._timer_into + ", ".join(
                [self._timer_row] * len(rows)
            )
        cur.execute(sql, [x for row in rows for x in row])

    def close_state(self, conn: sa.Connection, instance_id: str, now: datetime, note: str) -> None:
        """Close the instance's open state deadline and cancel its pending timers."""
        h = self.hot
        if h.postgres:
            params = {"now": now, "instance_id": instance_id, "note": note}
            h.submit(conn, _CloseState(params, self))
            return
        cur = h.cursor(conn)
        try:
            cur.execute(self.cancel_open_sql, (note, instance_id))
            cur.execute(self.close_sql, (h.dt_out(now), instance_id))
        finally:
            cur.close()

    def cancel_timers(self, conn: sa.Connection, deadline_ids: list[int], note: str) -> None:
        h = self.hot
        for did in deadline_ids:
            h.run(
                conn,
                self.cancel_sql,
                h._params(("note", "deadline_id"), {"note": note, "deadline_id": did}),
            )


class _CloseState:
    """Close the open state deadline and cancel its timers (PostgreSQL)."""

    __slots__ = ("params", "writes")
    instance_write = False
    composable = True

    def __init__(self, params: dict[str, Any], writes: DeadlineWrites) -> None:
        self.params = params
        self.writes = writes

    def run(self, cursor: Any) -> None:
        cursor.execute(self.writes.close_sql, self.params)

    def parts(self, n: int) -> tuple[list[str], dict[str, Any]]:
        c = f"c{n}_"
        params = _prefixed(c, self.params)
        return [
            f"c{n} AS (UPDATE sk_deadlines SET status = 'closed', closed_at = %({c}now)s "
            f"WHERE instance_id = %({c}instance_id)s AND kind = 'state' AND status = 'active' "
            "AND EXISTS (SELECT FROM u0) RETURNING id)",
            # ANY(ARRAY(...)): looked up by deadline, never a scan of every pending timer
            f"t{n} AS (UPDATE sk_timers SET status = 'cancelled', note = %({c}note)s "
            f"WHERE deadline_id = ANY (ARRAY(SELECT id FROM c{n})) AND status = 'pending')",
        ], params


class _InsertDeadline:
    """A deadline and its timers (kind, step, fire_at), in one statement (PostgreSQL)."""

    __slots__ = ("timers", "values", "writes")
    instance_write = False
    composable = True

    def __init__(
        self, writes: DeadlineWrites, values: dict[str, Any], timers: list[tuple[str, int, Any]]
    ) -> None:
        self.writes = writes
        self.values = values
        self.timers = timers

    def _timer_params(self, prefix: str = "") -> dict[str, Any]:
        rows = [{"kind": k, "step": s, "fire_at": a.isoformat()} for k, s, a in self.timers]
        return {f"{prefix}t_timers": _JSON(rows)}

    def run(self, cursor: Any) -> None:
        w = self.writes
        if not self.timers:
            cursor.execute(w.insert_deadline_sql, self.values)
            return
        cursor.execute(w.insert_deadline_timers_sql, {**self.values, **self._timer_params()})

    def parts(self, n: int) -> tuple[list[str], dict[str, Any]]:
        d = f"d{n}_"
        params = _prefixed(d, self.values)
        del params[d + "instance_id"]
        select = ", ".join(
            "u0.id" if c == "instance_id" else f"%({d}{c})s::{_PG_TYPES[c]}"
            for c in _DEADLINE_COLUMNS
        )
        ctes = [
            f"d{n} AS (INSERT INTO sk_deadlines ({', '.join(_DEADLINE_COLUMNS)}) "
            f"SELECT {select} FROM u0 RETURNING id, instance_id)"
        ]
        if self.timers:
            params.update(self._timer_params(d))
            timers_from = _TIMERS_FROM.format(d=f"d{n}").replace("%(t_", f"%({d}t_")
            ctes.append(
                f"dt{n} AS (INSERT INTO sk_timers ({', '.join(_TIMER_COLUMNS)}) {timers_from})"
            )
        return ctes, params


_OUTBOX_COLUMNS = (
    "id, kind, channel, recipient, recipient_id, recipient_name, instance_id, event_seq, "
    "template, subject, body, payload, status, attempts, next_attempt_at, lease_owner, "
    "lease_until, last_error, created_at, delivered_at"
)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_JSON_ROWS = json.JSONEncoder(ensure_ascii=False, default=_json_default).encode


class _OutboxRows:
    """Outbox rows written with the transition (PostgreSQL): one JSON parameter."""

    __slots__ = ("rows",)
    instance_write = False
    composable = True
    sql = (
        f"INSERT INTO sk_outbox ({_OUTBOX_COLUMNS}) SELECT {_OUTBOX_COLUMNS} "
        "FROM jsonb_populate_recordset(NULL::sk_outbox, %(rows)s::jsonb)"
    )

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def run(self, cursor: Any) -> None:
        cursor.execute(self.sql, {"rows": _JSON_ROWS(self.rows)})

    def parts(self, n: int) -> tuple[list[str], dict[str, Any]]:
        sql = self.sql.replace("%(rows)s", f"%(o{n}_rows)s")
        return [f"o{n} AS ({sql} WHERE EXISTS (SELECT FROM u0))"], {
            f"o{n}_rows": _JSON_ROWS(self.rows)
        }
