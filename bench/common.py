"""Shared helpers of the benchmarks: databases, workflows, timing statistics, Markdown tables.

Every benchmark measures sangkien and its baseline in the same run, interleaving rounds so
that noise from other processes on the machine falls on both, and reports medians with the
min–max over rounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

UNIT = "so-noi-vu"  # a unit of the shipped demo directory (the API resolves units through it)
ROLES = ["clerk"]

# Plain transitions: a <-> b, no deadline anywhere in the workflow.
PLAIN = """
workflow: bench_plain
version: 1
title: Bench (plain)
roles: [clerk]
fields:
  title: {type: string}
states:
  a: {initial: true}
  b: {}
  z: {final: true}
transitions:
  - {trigger: go_b, from: a, to: b, roles: [clerk]}
  - {trigger: go_a, from: b, to: a, roles: [clerk]}
  - {trigger: stop, from: [a, b], to: z, roles: [clerk]}
"""

# Entering 'c' opens a deadline with a reminder (one deadline row, two timers); leaving it
# closes the deadline and cancels the timers still pending.
DEADLINE = """
workflow: bench_deadline
version: 1
title: Bench (deadline)
roles: [clerk]
fields:
  title: {type: string}
states:
  a: {initial: true}
  c:
    deadline:
      after: 10 days
      remind: [1 day]
  z: {final: true}
transitions:
  - {trigger: go_c, from: a, to: c, roles: [clerk]}
  - {trigger: go_a, from: c, to: a, roles: [clerk]}
  - {trigger: stop, from: [a, c], to: z, roles: [clerk]}
"""

# The five-step lifecycle the peers also run (one of its states has a deadline).
LIFECYCLE = """
workflow: lifecycle
version: 1
title: Lifecycle
roles: [clerk]
fields:
  title: {type: string}
states:
  draft: {initial: true}
  submitted:
    deadline:
      after: 10 days
      remind: [1 day]
  reviewing: {}
  scored: {}
  decided: {}
  recognized: {final: true}
transitions:
  - {trigger: submit, from: draft, to: submitted, roles: [clerk]}
  - {trigger: review, from: submitted, to: reviewing, roles: [clerk]}
  - {trigger: score, from: reviewing, to: scored, roles: [clerk]}
  - {trigger: decide, from: scored, to: decided, roles: [clerk]}
  - {trigger: recognize, from: decided, to: recognized, roles: [clerk]}
"""
LIFECYCLE_STEPS = ["submit", "review", "score", "decide", "recognize"]
# the same lifecycle without the deadline (the peers' like-for-like comparison without timers)
LIFECYCLE_PLAIN = LIFECYCLE.replace("workflow: lifecycle", "workflow: lifecycle_plain").replace(
    """  submitted:
    deadline:
      after: 10 days
      remind: [1 day]
""",
    "  submitted: {}\n",
)
assert "deadline" not in LIFECYCLE_PLAIN


def workflow_files(directory: Path) -> list[Path]:
    """Write the bench workflows as YAML files in *directory* (for the API server)."""
    out = []
    for name, text in (
        ("bench_plain", PLAIN),
        ("bench_deadline", DEADLINE),
        ("lifecycle", LIFECYCLE),
        ("lifecycle_plain", LIFECYCLE_PLAIN),
    ):
        p = directory / f"{name}.yaml"
        p.write_text(text, encoding="utf-8")
        out.append(p)
    return out


def definitions() -> list[Any]:
    from sangkien import parse_definition

    return [
        parse_definition(PLAIN),
        parse_definition(DEADLINE),
        parse_definition(LIFECYCLE),
        parse_definition(LIFECYCLE_PLAIN),
    ]


def actor() -> Any:
    from sangkien import Actor

    return Actor("bench.clerk", ROLES, UNIT)


def quiet() -> None:
    """Engine logs at WARNING: the benchmarks time the work, not the log sink."""
    from sangkien.logs import configure_logging

    configure_logging("json", "WARNING")


# ---------------------------------------------------------------------- databases


@contextlib.contextmanager
def sqlite_url() -> Iterator[str]:
    """A URL to a SQLite file in a fresh temporary directory."""
    with tempfile.TemporaryDirectory(prefix="skbench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


@contextlib.contextmanager
def pg_schema(base_url: str, app: str = "sangkien-bench") -> Iterator[str]:
    """A URL to a fresh scratch schema of *base_url* (dropped at the end)."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    # pre-ping: the chaos run restarts the server under this engine's kept connection
    admin = sa.create_engine(driver_url(base_url), pool_pre_ping=True)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = (
        sa.engine.make_url(driver_url(base_url))
        .update_query_dict({"options": f"-csearch_path={schema}", "application_name": app})
        .render_as_string(hide_password=False)
    )
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def driver_url(url: str) -> str:
    u = sa.engine.make_url(url)
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def libpq(url: str) -> tuple[str, dict[str, Any]]:
    """(conninfo, kwargs) for psycopg.connect from a SQLAlchemy URL (keeps search_path)."""
    u = sa.engine.make_url(url)
    parts = {
        "host": u.host or "127.0.0.1",
        "port": u.port or 5432,
        "user": u.username or "postgres",
        "dbname": u.database,
    }
    if u.password:
        parts["password"] = u.password
    for key in ("options", "application_name"):
        if key in u.query:
            parts[key] = u.query[key]
    return " ".join(f"{k}='{v}'" for k, v in parts.items()), {}


def sqlite_path(url: str) -> str:
    return str(sa.engine.make_url(url).database)


def migrated_engine(url: str, **kwargs: Any) -> Any:
    """An Engine on a migrated database with the bench workflows registered."""
    from sangkien import Engine

    return Engine(url, workflows=definitions(), migrate=True, **kwargs)


def dialect_of(url: str) -> str:
    return sa.engine.make_url(url).get_backend_name()


_INSERT = (
    "INSERT INTO sk_instances (id, workflow, workflow_version, state, state_entered_at, data,"
    " unit, created_by, created_at, updated_at, version, last_seq, last_hash, entered_seq)"
)
_BULK_SQLITE = (
    "WITH RECURSIVE s(i) AS (SELECT :a UNION ALL SELECT i + 1 FROM s WHERE i < :b) "
    + _INSERT
    + " SELECT :p || printf('%08d', i), :wf, 1, :st, :t, '{\"title\": \"x\"}', :unit,"
    " 'bench.clerk', :t, :t, 1, 1, :h, 1 FROM s"
)
_BULK_PG = (
    _INSERT + " SELECT :p || lpad(i::text, 8, '0'), :wf, 1, :st, CAST(:t AS timestamptz),"
    " '{\"title\": \"x\"}'::jsonb, :unit, 'bench.clerk', CAST(:t AS timestamptz),"
    " CAST(:t AS timestamptz), 1, 1, :h, 1"
    " FROM generate_series(CAST(:a AS integer), CAST(:b AS integer)) AS i"
)


def bulk_instances(
    url: str, workflow: str, state: str, n: int, *, prefix: str = "i", start: int = 1
) -> None:
    """Insert *n* instances of *workflow* in *state* straight in SQL.

    Their ids are ``<prefix>%08d`` numbered from *start*. Their history heads point at
    nothing (no started event): fires chain on from there, which is all the benchmarks
    need; ``verify()`` would report them.
    """
    dialect = dialect_of(url)
    db = sa.create_engine(driver_url(url))
    params = {
        "a": start,
        "b": start + n - 1,
        "p": prefix,
        "wf": workflow,
        "st": state,
        "unit": UNIT,
        "h": "0" * 64,
    }
    try:
        with db.begin() as conn:
            if dialect == "sqlite":
                conn.execute(sa.text(_BULK_SQLITE), {**params, "t": "2030-01-01 00:00:00.000000"})
            else:
                conn.execute(sa.text(_BULK_PG), {**params, "t": "2030-01-01T00:00:00Z"})
        if dialect == "postgresql":
            with db.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "VACUUM ANALYZE sk_instances"
                )
    finally:
        db.dispose()


def ids(prefix: str, n: int, start: int = 1) -> list[str]:
    return [f"{prefix}{i:08d}" for i in range(start, start + n)]


# ---------------------------------------------------------------------- statistics


@dataclass
class Series:
    """Per-round values of one measurement (seconds, or operations per second)."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(v)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")

    def span(self, fmt: str = "{:,.0f}") -> str:
        return f"{fmt.format(self.lo)}–{fmt.format(self.hi)}"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The *q* quantile (0..1) of already sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


# ---------------------------------------------------------------------- Markdown


@dataclass
class Section:
    """One benchmark's results: a title, a short note, one or more tables, target lines."""

    title: str
    note: str = ""
    tables: list[tuple[list[str], list[list[str]], int]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def table(self, headers: list[str], rows: list[list[str]], left: int = 1) -> None:
        self.tables.append((headers, rows, left))

    def target(self, name: str, goal: str, measured: str, ok: bool, by: str = "") -> None:
        self.targets.append({"name": name, "goal": goal, "measured": measured, "ok": ok, "by": by})

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        if self.note:
            out += [self.note, ""]
        for headers, rows, left in self.tables:
            out.append(md_table(headers, rows, left))
            out.append("")
        return "\n".join(out)


def md_table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    right = [i >= left for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(sections: Sequence[Section]) -> str:
    rows = []
    for s in sections:
        for t in s.targets:
            rows.append([t["name"], t["goal"], t["measured"], verdict(t["ok"]), t["by"]])
    return md_table(["target", "goal", "measured", "result", "margin"], rows, left=5)


# ---------------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    import sqlite3

    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": _ram(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sa.__version__,
    }
    for mod in ("psycopg", "transitions", "SpiffWorkflow", "fastapi", "uvicorn", "httpx"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[mod.lower()] = version(mod)
    return info


def pg_version(url: str) -> str:
    db = sa.create_engine(driver_url(url))
    try:
        with db.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar())
    finally:
        db.dispose()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def rss_kib() -> tuple[int, int]:
    """(current VmRSS, peak VmHWM) of this process in KiB, from /proc/self/status."""
    now = peak = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            now = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1])
    return now, peak


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
