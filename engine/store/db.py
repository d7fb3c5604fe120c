"""Database engines: SQLite (WAL, immediate transactions) and PostgreSQL; migrations."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

from sangkien.errors import SchemaOutOfDate, StoreError

__all__ = ["create_db_engine", "current_revision", "head_revision", "upgrade"]

_VERSION_TABLE = "sk_alembic_version"


def create_db_engine(url: str, **kwargs: Any) -> sa.Engine:
    """Create an engine for *url* with the settings sangkien relies on.

    SQLite: WAL journal, a busy timeout, foreign keys on, and ``BEGIN IMMEDIATE`` for every
    transaction so that two writers queue on the lock instead of failing when a read
    transaction tries to upgrade to a write.
    """
    u = make_url(url)
    if u.drivername.startswith("postgresql") and u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        engine = sa.create_engine(u, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            if u.database and u.database != ":memory:":
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            # reads (marked by the engine) take no write lock; writes queue for it up front
            deferred = conn.get_execution_options().get("sangkien_read_only", False)
            # straight to the driver: this runs once per transaction, on the hot path
            driver: Any = conn.connection.driver_connection
            if not driver.in_transaction:  # a Writer began it already
                driver.execute("BEGIN" if deferred else "BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(u, **kwargs)


def _alembic_config(connection: sa.Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "sangkien.store:migrations")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """Return the newest migration this version of sangkien ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """Return the database's migration revision, or None if it was never migrated."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(_VERSION_TABLE):
            return None
        row = conn.exec_driver_sql(f"SELECT version_num FROM {_VERSION_TABLE}").first()  # noqa: S608
        return row[0] if row else None


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Apply migrations up to *revision* (idempotent)."""
    from alembic import command

    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
    except sa.exc.OperationalError as exc:
        raise StoreError(f"cannot migrate the database: {exc.orig}") from exc


def ensure_schema(engine: sa.Engine, *, migrate: bool) -> None:
    """Migrate (if *migrate*) or check that the schema is current."""
    if migrate:
        upgrade(engine)
        return
    current = current_revision(engine)
    if current != head_revision():
        raise SchemaOutOfDate(
            f"database schema is at {current or 'nothing'}, this sangkien needs "
            f"{head_revision()}; run `sangkien db upgrade`"
        )


__all__ += ["ensure_schema"]
