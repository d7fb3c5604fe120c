"""Cost of one deadline tick with 1,000 due timers among 10k, 100k and 1M open ones.

The claim query reads only pending timers through a partial index ordered by fire time, so
a tick must cost O(due), not O(open). This benchmark builds each population directly in SQL
(the open timers fall due in ten years), then times ``Engine.tick()`` firing exactly 1,000
due reminders (each one a hash-chained history event) and reports the ratio to the smallest
population, measured in the same run.

    python bench/bench_tick.py                      # SQLite (WAL) in a temp dir
    python bench/bench_tick.py --postgresql URL     # also PostgreSQL
    python bench/bench_tick.py --sizes 10000 100000 1000000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sangkien import Actor, Engine, FrozenClock, parse_definition
from sangkien.store.db import create_db_engine, upgrade

WORKFLOW = """
workflow: bench
version: 1
title: Bench
roles: [clerk]
fields:
  title: {type: string}
states:
  open:
    initial: true
    deadline:
      after: 10 days
      remind: [1 day]
  done: {final: true}
transitions:
  - {trigger: close, from: open, to: done, roles: [clerk]}
"""

NOW = datetime(2030, 1, 1, tzinfo=UTC)
FAR = NOW + timedelta(days=3650)


def _fill_open(conn: sa.Connection, dialect: str, n: int) -> None:
    """Insert *n* open (pending, far-future) timers on one parked deadline."""
    ts = FAR.replace(tzinfo=None).isoformat(" ") if dialect == "sqlite" else FAR.isoformat()
    now = NOW.replace(tzinfo=None).isoformat(" ") if dialect == "sqlite" else NOW.isoformat()
    conn.execute(
        sa.text(
            "INSERT INTO sk_instances (id, workflow, workflow_version, state, state_entered_at,"
            " data, unit, created_by, created_at, updated_at, version, last_seq, last_hash,"
            " entered_seq)"
            " VALUES ('parked', 'bench', 1, 'open', :now, '{}', 'u', 'x', :now, :now, 1, 1, '', 1)"
        ),
        {"now": now},
    )
    did = conn.execute(
        sa.text(
            "INSERT INTO sk_deadlines (instance_id, kind, name, entry_seq, status, workflow, unit,"
            " calendar, anchor_at, period, base_due_at, shifts, due_at, escalations_done,"
            " calendar_fingerprint, created_at) VALUES ('parked', 'state', 'open', 1, 'active',"
            " 'bench', 'u', 'vn', :now, '10 days', :far, '[]', :far, 0, '', :now) RETURNING id"
        ),
        {"now": now, "far": ts},
    ).scalar_one()
    if dialect == "sqlite":
        conn.execute(
            sa.text(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n)"
                " INSERT INTO sk_timers (deadline_id, instance_id, kind, step, fire_at, status)"
                " SELECT :d, 'parked', 'remind', 0, :far, 'pending' FROM s"
            ),
            {"n": n, "d": did, "far": ts},
        )
    else:
        conn.execute(
            sa.text(
                "INSERT INTO sk_timers (deadline_id, instance_id, kind, step, fire_at, status)"
                " SELECT :d, 'parked', 'remind', 0, CAST(:far AS timestamptz)"
                " + (i || ' seconds')::interval, 'pending' FROM generate_series(1, :n) AS i"
            ),
            {"n": n, "d": did, "far": ts},
        )


def _drop_all(db: sa.Engine, dialect: str) -> None:
    """Drop every table of the scratch database (each round starts from an empty store)."""
    with db.begin() as conn:
        if dialect == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        for table in sa.inspect(conn).get_table_names():
            conn.exec_driver_sql(
                f'DROP TABLE IF EXISTS "{table}"' + (" CASCADE" if dialect == "postgresql" else "")
            )


def _due_batch(engine: Engine, clock: FrozenClock, count: int) -> None:
    """Start *count* instances whose reminder falls due at NOW + 9 days."""
    clock.set(NOW)
    actor = Actor("clerk", ["clerk"], "u")
    for _ in range(count):
        engine.start("bench", actor=actor, data={"title": "x"})


def run(url: str, dialect: str, sizes: list[int], due: int, rounds: int) -> list[dict[str, float]]:
    out = []
    for n in sizes:
        times = []
        for _ in range(rounds):
            if dialect == "sqlite":  # a fresh file each round
                path = Path(str(sa.engine.make_url(url).database))
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            db = create_db_engine(url)
            _drop_all(db, dialect)
            upgrade(db)
            with db.begin() as conn:
                _fill_open(conn, dialect, n - due)
            if dialect == "postgresql":
                with db.connect() as conn:
                    conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
            clock = FrozenClock(NOW)
            engine = Engine(db, clock=clock, workflows=[parse_definition(WORKFLOW)], migrate=False)
            _due_batch(engine, clock, due)
            clock.set(NOW + timedelta(days=9, hours=12))
            started = time.perf_counter()
            result = engine.tick(limit=200)
            elapsed = time.perf_counter() - started
            assert result.fired == due, result
            times.append(elapsed)
            engine.close()
            db.dispose()
        out.append(
            {
                "open": n,
                "due": due,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
            }
        )
    return out


def section(urls: dict[str, str], *, quick: bool = False) -> Any:
    """The tick benchmark as a results section for ``bench/run.py`` (target: 1M ≤ 1.5× 10k)."""
    from common import Section

    sizes, rounds = ([2_000, 20_000], 1) if quick else ([10_000, 100_000, 1_000_000], 3)
    due = 200 if quick else 1_000
    sec = Section(
        "Deadline tick",
        f"One `Engine.tick()` firing {due:,} due reminders (each a hash-chained history event) "
        f"among N open timers (median of {rounds} rounds, each on a freshly built population), "
        f"and the ratio to the smallest population.",
    )
    rows = []
    for backend, url in urls.items():
        dialect = sa.engine.make_url(url).get_backend_name()
        res = run(url, dialect, sizes, due, rounds)
        sec.data[backend] = res
        base = res[0]["median_s"]
        for r in res:
            rows.append(
                [
                    backend,
                    f"{int(r['open']):,}",
                    f"{int(r['due']):,}",
                    f"{r['median_s']:.3f}",
                    f"{r['min_s']:.3f}–{r['max_s']:.3f}",
                    f"{r['median_s'] / base:.2f}",
                ]
            )
        ratio = res[-1]["median_s"] / base
        sec.target(
            f"tick at {sizes[-1]:,} vs {sizes[0]:,} open timers, {backend}",
            "≤ 1.5×",
            f"{ratio:.2f}×",
            ratio <= 1.5,
            f"{(1.5 / ratio - 1) * 100:+.0f} % vs goal",
        )
    sec.table(
        [
            "backend",
            "open timers",
            "due",
            "tick median (s)",
            "min–max (s)",
            f"ratio to {sizes[0]:,}",
        ],
        rows,
    )
    return sec


def main() -> None:
    from sangkien.logs import configure_logging

    configure_logging("console", "WARNING")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--due", type=int, default=1_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--postgresql", default=None, help="PostgreSQL URL (a scratch database!)")
    args = p.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite (WAL)"] = run(
            f"sqlite:///{Path(tmp) / 'bench.db'}", "sqlite", args.sizes, args.due, args.rounds
        )
    if args.postgresql:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.postgresql)
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        url = (
            sa.engine.make_url(args.postgresql)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
        try:
            results["PostgreSQL"] = run(url, "postgresql", args.sizes, args.due, args.rounds)
        finally:
            with admin.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            admin.dispose()
    first = f"{args.sizes[0]:,}"
    print(f"| backend | open timers | due | tick median (s) | min–max (s) | ratio to {first} |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend, rows in results.items():
        base = rows[0]["median_s"]
        for r in rows:
            print(
                f"| {backend} | {int(r['open']):,} | {int(r['due']):,} | {r['median_s']:.3f} | "
                f"{r['min_s']:.3f}–{r['max_s']:.3f} | {r['median_s'] / base:.2f} |"
            )


if __name__ == "__main__":
    main()
