"""Alembic owns the schema, and the models never drift from the migrations."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sangkien import Engine, SchemaOutOfDate
from sangkien.store.db import create_db_engine, current_revision, head_revision, upgrade
from sangkien.store.schema import metadata


def test_models_match_migrations(db_url: str) -> None:
    """After `upgrade head`, autogenerate finds no difference between models and database."""
    engine = create_db_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": "sk_alembic_version"}
        )
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_is_idempotent(db_url: str) -> None:
    """Upgrading twice leaves the database at head."""
    engine = create_db_engine(db_url)
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_sqlite_default_migrates_itself(sqlite_url: str) -> None:
    """The embedded SQLite default creates its schema on start."""
    Engine(sqlite_url).close()
    engine = create_db_engine(sqlite_url)
    assert current_revision(engine) == head_revision()
    assert sa.inspect(engine).has_table("sk_instances")
    engine.dispose()


@pytest.mark.postgresql
def test_postgresql_requires_explicit_upgrade(pg_url: str) -> None:
    """On PostgreSQL the engine refuses an unmigrated database and says what to run."""
    with pytest.raises(SchemaOutOfDate, match="sangkien db upgrade"):
        Engine(pg_url)
    engine = create_db_engine(pg_url)
    upgrade(engine)
    engine.dispose()
    Engine(pg_url).close()


def test_sqlite_uses_wal(sqlite_url: str) -> None:
    """The SQLite file runs in WAL mode so readers never block the writer."""
    Engine(sqlite_url).close()
    engine = create_db_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
