"""The baseline: the same writes as one sangkien transition, done with the raw driver.

A transition reads the instance, writes it under its optimistic-lock version, and appends a
hash-chained history event; entering a state with a deadline also inserts the deadline and
its two timers (reminder, due), and leaving it closes the deadline and cancels its pending
timers. No authorization, guards, data validation, machine or logging: this is the floor.

* SQLite: the ``sqlite3`` module, ``BEGIN IMMEDIATE`` … ``COMMIT``, SHA-256 in Python over
  the same canonical JSON sangkien hashes.
* PostgreSQL: psycopg 3 in its best form, one round trip per transition — a single statement
  whose CTEs read the row, update it under the version check, compute the chained SHA-256
  in the server and insert the event (and the deadline rows), in autocommit (the statement
  is its own transaction; psycopg prepares it server-side after a few executions).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from common import UNIT, libpq, sqlite_path

ACTOR = "bench.clerk"
ROLES_JSON = '["clerk"]'


class Conflict(Exception):
    """The version check failed (another writer changed the instance first)."""


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(" ", timespec="microseconds")


def _hash(prev: str, iid: str, seq: int, trigger: str, frm: str, to: str, at: datetime) -> str:
    body = json.dumps(
        [
            prev,
            iid,
            seq,
            "transition",
            trigger,
            frm,
            to,
            ACTOR,
            ["clerk"],
            UNIT,
            at.isoformat(timespec="microseconds"),
            {},
            None,
            None,
        ],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class RawSQLite:
    """One sqlite3 connection (WAL, synchronous=NORMAL, as sangkien configures SQLite).

    SQLite checkpoints the WAL in the commit that takes it past 1,000 pages. With
    *checkpoint_thread*, the connection does what the Engine's write connections do instead
    (sangkien's :class:`~sangkien.store.writer.Checkpointer`): a thread checkpoints every
    64 commits, the connection itself only at 4,000 pages.
    """

    def __init__(self, url: str, *, checkpoint_thread: bool = False) -> None:
        self.con = sqlite3.connect(
            sqlite_path(url), isolation_level=None, timeout=30, check_same_thread=False
        )
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=NORMAL")
        self.con.execute("PRAGMA foreign_keys=ON")
        self.con.execute("PRAGMA busy_timeout=30000")
        self.checkpointer: Any = None
        if checkpoint_thread:
            from sangkien.store.writer import Checkpointer

            self.checkpointer = Checkpointer(sqlite_path(url))
            self.checkpointer.adopt(self.con)

    def fire(
        self,
        iid: str,
        trigger: str,
        frm: str,
        to: str,
        *,
        enter_deadline: bool = False,
        leave_deadline: bool = False,
    ) -> None:
        con = self.con
        now = datetime.now(UTC)
        ts = _ts(now)
        con.execute("BEGIN IMMEDIATE")
        try:
            state, version, last_seq, last_hash = con.execute(
                "SELECT state, version, last_seq, last_hash FROM sk_instances WHERE id = ?",
                (iid,),
            ).fetchone()
            if state != frm:
                raise Conflict(iid)
            seq = last_seq + 1
            h = _hash(last_hash, iid, seq, trigger, frm, to, now)
            cur = con.execute(
                "UPDATE sk_instances SET state = ?, state_entered_at = ?, version = ?,"
                " last_seq = ?, last_hash = ?, updated_at = ?, entered_seq = ?"
                " WHERE id = ? AND version = ?",
                (to, ts, version + 1, seq, h, ts, seq, iid, version),
            )
            if cur.rowcount != 1:
                raise Conflict(iid)
            con.execute(
                'INSERT INTO sk_events (instance_id, seq, kind, "trigger", from_state, to_state,'
                " actor_id, actor_roles, actor_unit, at, data_delta, comment, detail, prev_hash,"
                " hash) VALUES (?, ?, 'transition', ?, ?, ?, ?, ?, ?, ?, '{}', NULL, NULL, ?, ?)",
                (iid, seq, trigger, frm, to, ACTOR, ROLES_JSON, UNIT, ts, last_hash, h),
            )
            if leave_deadline:
                con.execute(
                    "UPDATE sk_timers SET status = 'cancelled', note = 'left the state'"
                    " WHERE status = 'pending' AND deadline_id IN (SELECT id FROM sk_deadlines"
                    " WHERE instance_id = ? AND kind = 'state' AND status = 'active')",
                    (iid,),
                )
                con.execute(
                    "UPDATE sk_deadlines SET status = 'closed', closed_at = ?"
                    " WHERE instance_id = ? AND kind = 'state' AND status = 'active'",
                    (ts, iid),
                )
            if enter_deadline:
                due = now + timedelta(days=10)
                did = con.execute(
                    "INSERT INTO sk_deadlines (instance_id, kind, name, entry_seq, status,"
                    " workflow, unit, calendar, anchor_at, period, base_due_at, shifts, due_at,"
                    " escalations_done, calendar_fingerprint, created_at) VALUES (?, 'state', ?,"
                    " ?, 'active', 'bench_deadline', ?, 'vn', ?, '10 days', ?, '[]', ?, 0, '', ?)"
                    " RETURNING id",
                    (iid, to, seq, UNIT, ts, _ts(due), _ts(due), ts),
                ).fetchone()[0]
                con.executemany(
                    "INSERT INTO sk_timers (deadline_id, instance_id, kind, step, fire_at, status)"
                    " VALUES (?, ?, ?, 0, ?, 'pending')",
                    [
                        (did, iid, "remind", _ts(due - timedelta(days=1))),
                        (did, iid, "due", _ts(due)),
                    ],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        if self.checkpointer is not None:
            self.checkpointer.committed()

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.con.close()


_PG_HEAD = """
WITH cur AS (
  SELECT id, state, version, last_seq, last_hash FROM sk_instances WHERE id = %(id)s
), upd AS (
  UPDATE sk_instances AS i
     SET state = %(to)s::text, state_entered_at = %(now)s, version = cur.version + 1,
         last_seq = cur.last_seq + 1, entered_seq = cur.last_seq + 1, updated_at = %(now)s,
         last_hash = encode(sha256(convert_to(concat_ws('|', cur.last_hash, cur.id,
             cur.last_seq + 1, 'transition', %(trigger)s::text, cur.state, %(to)s::text,
             %(actor)s::text, %(roles)s::text, %(unit)s::text, %(now)s::text, '{}'), 'UTF8')),
             'hex')
    FROM cur
   WHERE i.id = cur.id AND i.version = cur.version AND cur.state = %(frm)s::text
  RETURNING i.id, i.last_seq, i.last_hash, cur.last_hash AS prev_hash, cur.state AS from_state
)"""

_PG_EVENT = """
INSERT INTO sk_events (instance_id, seq, kind, "trigger", from_state, to_state, actor_id,
                       actor_roles, actor_unit, at, data_delta, comment, detail, prev_hash, hash)
SELECT id, last_seq, 'transition', %(trigger)s::text, from_state, %(to)s::text, %(actor)s::text,
       %(roles)s::jsonb, %(unit)s::text, %(now)s, '{}'::jsonb, NULL, NULL, prev_hash, last_hash
  FROM upd
RETURNING seq"""

_PG_LEAVE = """,
closed AS (
  UPDATE sk_deadlines AS d SET status = 'closed', closed_at = %(now)s
    FROM upd WHERE d.instance_id = upd.id AND d.kind = 'state' AND d.status = 'active'
  RETURNING d.id
), cancelled AS (
  UPDATE sk_timers AS tm SET status = 'cancelled', note = 'left the state'
    FROM closed WHERE tm.deadline_id = closed.id AND tm.status = 'pending'
)"""

_PG_ENTER = """,
dl AS (
  INSERT INTO sk_deadlines (instance_id, kind, name, entry_seq, status, workflow, unit, calendar,
                            anchor_at, period, base_due_at, shifts, due_at, escalations_done,
                            calendar_fingerprint, created_at)
  SELECT id, 'state', %(to)s::text, last_seq, 'active', 'bench_deadline', %(unit)s::text, 'vn',
         %(now)s, '10 days', %(due)s, '[]'::jsonb, %(due)s, 0, '', %(now)s FROM upd
  RETURNING id, instance_id
), tm AS (
  INSERT INTO sk_timers (deadline_id, instance_id, kind, step, fire_at, status)
  SELECT dl.id, dl.instance_id, k.kind, 0, k.at, 'pending'
    FROM dl, (VALUES ('remind', %(remind)s::timestamptz),
                     ('due', %(due)s::timestamptz)) AS k(kind, at)
)"""

PG_PLAIN = _PG_HEAD + _PG_EVENT
PG_ENTER = _PG_HEAD + _PG_ENTER + _PG_EVENT
PG_LEAVE = _PG_HEAD + _PG_LEAVE + _PG_EVENT


class RawPostgres:
    """One psycopg 3 connection in autocommit: a transition is one statement, one round trip."""

    def __init__(self, url: str) -> None:
        import psycopg

        conninfo, kwargs = libpq(url)
        self.con = psycopg.connect(conninfo, autocommit=True, **kwargs)

    def fire(
        self,
        iid: str,
        trigger: str,
        frm: str,
        to: str,
        *,
        enter_deadline: bool = False,
        leave_deadline: bool = False,
    ) -> None:
        now = datetime.now(UTC)
        params: dict[str, Any] = {
            "id": iid,
            "trigger": trigger,
            "frm": frm,
            "to": to,
            "now": now,
            "actor": ACTOR,
            "roles": ROLES_JSON,
            "unit": UNIT,
        }
        if enter_deadline:
            sql = PG_ENTER
            params["due"] = now + timedelta(days=10)
            params["remind"] = now + timedelta(days=9)
        elif leave_deadline:
            sql = PG_LEAVE
        else:
            sql = PG_PLAIN
        row = self.con.execute(sql, params).fetchone()
        if row is None:
            raise Conflict(iid)

    def close(self) -> None:
        self.con.close()


def raw_for(url: str) -> RawSQLite | RawPostgres:
    return RawPostgres(url) if url.startswith("postgresql") else RawSQLite(url)
