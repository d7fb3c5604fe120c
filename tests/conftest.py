"""Shared fixtures: one store contract over SQLite and PostgreSQL.

PostgreSQL tests use SANGKIEN_TEST_POSTGRESQL_URL (CI sets it). Without it they skip with
that reason, except under CI=true, where a missing server is a failure, never a skip.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
PG_URL = os.environ.get("SANGKIEN_TEST_POSTGRESQL_URL", "")


def _pg_unavailable() -> str | None:
    if not PG_URL:
        return "SANGKIEN_TEST_POSTGRESQL_URL is not set (no PostgreSQL to test against)"
    try:
        eng = sa.create_engine(PG_URL)
        with eng.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        eng.dispose()
    except Exception as exc:
        return f"PostgreSQL at SANGKIEN_TEST_POSTGRESQL_URL is unreachable: {exc}"
    return None


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Each test finds logging as configured before it: a CLI or an app run in-process
    configures structlog and the root logger for the whole process, and a later test's
    ``capture_logs`` would keep that configuration's level."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


_PG_REASON: str | None = None
_PG_CHECKED = False


def require_postgresql() -> None:
    """Skip (or, under CI, fail) when PostgreSQL is not available."""
    global _PG_REASON, _PG_CHECKED
    if not _PG_CHECKED:
        _PG_REASON = _pg_unavailable()
        _PG_CHECKED = True
    if _PG_REASON:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"PostgreSQL is required in CI: {_PG_REASON}")
        pytest.skip(_PG_REASON)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL to a fresh, empty PostgreSQL schema dropped after the test."""
    require_postgresql()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL to a fresh SQLite file (WAL)."""
    return f"sqlite:///{tmp_path / 'sangkien.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store contract runs on every backend: SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sangkien.db'}"
    return str(request.getfixturevalue("pg_url"))
