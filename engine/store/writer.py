"""Write transactions on connections kept between transactions.

A transition is a short transaction: read the instance, write it, append its event. Run
through ``sa.Engine.begin()`` it pays the pool's checkout and check-in, a pre-ping round
trip on PostgreSQL and SQLAlchemy's transaction bookkeeping, which together cost more than
the statements. :class:`Writer` keeps a few connections checked out (a LIFO list, bounded),
begins and ends the transaction through the driver, and on PostgreSQL sends the
transaction's statements in as few round trips as the work allows:

* ``BEGIN`` is not sent on its own: it goes with the transaction's first statement.
* Writes the engine issues through :meth:`Pending.run` (the instance update, its event, the
  deadline rows) are queued and sent with ``COMMIT`` as one multi-statement query (values
  bound on the client by psycopg's own quoting). A plain transition is thus two round trips
  — ``BEGIN; SELECT … FOR UPDATE`` and ``UPDATE …; INSERT …; COMMIT`` — where the pooled
  path took eight.
* Any statement SQLAlchemy runs on the connection in the meantime (outbox rows, clocks,
  idempotency records) first flushes what is queued, so statements always run in the order
  they were issued.

A connection the server dropped (a restart, ``pg_terminate_backend``) is noticed on the
transaction's first statement: nothing was sent, so the caller may retry on a fresh
connection (:class:`StaleConnection`); the other kept connections are dropped with it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

__all__ = ["PENDING", "Pending", "StaleConnection", "Writer"]

PENDING = "sangkien_pending"


class StaleConnection(Exception):
    """The kept connection was dead before anything was sent; retry on a fresh one."""


class Pending:
    """Statements of the current PostgreSQL transaction not yet sent to the server."""

    __slots__ = ("_cursor", "_mogrify", "began", "sql")

    def __init__(self, driver_connection: Any, mogrify: Any) -> None:
        self._cursor = driver_connection.cursor()
        self._mogrify = mogrify
        self.sql: list[str] = ["BEGIN"]
        self.began = False  # whether anything reached the server in this transaction

    def run(self, sql: str, params: Any) -> None:
        """Queue *sql* with *params* bound (sent before the next read, or with COMMIT)."""
        self.sql.append(self._mogrify(sql, params))

    def query(self, sql: str, params: Any) -> Any:
        """Send what is queued followed by *sql*; return the cursor on *sql*'s result."""
        cur = self._cursor
        if not self.sql:
            cur.execute(sql, params)
            return cur
        self.sql.append(self._mogrify(sql, params))
        self._send()
        while cur.nextset():
            pass
        return cur

    def flush(self) -> None:
        if self.sql:
            self._send()

    def commit(self) -> None:
        if self.began or len(self.sql) > 1:
            self.sql.append("COMMIT")
            self._send()
        self.sql = []

    def _send(self) -> None:
        sql, self.sql = "; ".join(self.sql), []
        self._cursor.execute(sql)
        self.began = True


def _flush_before(
    conn: sa.Connection, cursor: Any, statement: Any, params: Any, context: Any, many: bool
) -> None:
    pending: Pending | None = conn.info.get(PENDING)
    if pending is not None:
        pending.flush()


class Writer:
    """Write transactions on up to *keep* connections kept between transactions."""

    def __init__(self, db: sa.Engine, *, keep: int = 4) -> None:
        self._db = db
        self._keep = keep
        self._idle: list[sa.Connection] = []
        self._lock = threading.Lock()
        self.postgres = db.dialect.name == "postgresql"
        # Engine.dispose() (a host recycling its pool, a forked child) drops ours too
        event.listen(db, "engine_disposed", self._on_dispose)

    def _on_dispose(self, _db: sa.Engine) -> None:
        self.close()

    # ---------------------------------------------------------------- connections

    def _acquire(self) -> sa.Connection:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        conn = self._db.connect()
        if self.postgres:
            import psycopg

            driver = conn.connection.driver_connection
            # the transaction is begun in SQL, with its first statement (see Pending)
            driver.autocommit = True  # type: ignore[union-attr]
            conn.info["sangkien_mogrify"] = psycopg.ClientCursor(driver).mogrify
            event.listen(conn, "before_cursor_execute", _flush_before)
        return conn

    def _release(self, conn: sa.Connection, reusable: bool) -> None:
        if reusable and not conn.invalidated and len(self._idle) < self._keep:
            self._idle.append(conn)
            return
        self._discard(conn)

    def _discard(self, conn: sa.Connection) -> None:
        try:
            if self.postgres and not conn.invalidated:
                driver = conn.connection.driver_connection
                if not driver.closed:  # type: ignore[union-attr]
                    driver.rollback()  # type: ignore[union-attr]
                    driver.autocommit = False  # type: ignore[union-attr]
            conn.close()
        except Exception:  # a dead connection is being thrown away
            conn.invalidate()
            conn.close()

    def close(self) -> None:
        """Return every kept connection to the pool."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        conn = self._acquire()
        driver: Any = conn.connection.driver_connection
        pending: Pending | None = None
        reusable = True
        try:
            if self.postgres:
                pending = Pending(driver, conn.info["sangkien_mogrify"])
                conn.info[PENDING] = pending
            else:
                driver.execute("BEGIN IMMEDIATE")
            yield conn
            if pending is not None:
                pending.commit()
                self._forget(conn)
            if conn.in_transaction():
                conn.commit()  # SQLAlchemy's own bookkeeping; on PostgreSQL already committed
            elif not self.postgres:
                driver.commit()
        except BaseException as exc:
            stale = pending is not None and not pending.began and self._is_disconnect(exc, conn)
            self._forget(conn)
            reusable = self._rollback(conn, driver) and not self._is_disconnect(exc, conn)
            if stale:
                self.close()
                raise StaleConnection(str(exc)) from exc
            raise
        finally:
            self._release(conn, reusable)

    @staticmethod
    def _forget(conn: sa.Connection) -> None:
        with contextlib.suppress(sa.exc.SQLAlchemyError):  # invalidated: info went with it
            conn.info.pop(PENDING, None)

    def _rollback(self, conn: sa.Connection, driver: Any) -> bool:
        """Roll back whatever is open; return whether the connection is still usable."""
        try:
            if conn.in_transaction():
                conn.rollback()
            if not conn.invalidated and not self._closed(driver):
                driver.rollback()
            return not conn.invalidated and not self._closed(driver)
        except Exception:  # the connection is unusable; it is discarded
            return False

    def _closed(self, driver: Any) -> bool:
        return bool(driver.closed) if self.postgres else False

    def _is_disconnect(self, exc: BaseException, conn: sa.Connection) -> bool:
        if isinstance(exc, sa.exc.DBAPIError):
            return bool(exc.connection_invalidated)
        dbapi = self._db.dialect.dbapi
        if dbapi is None or not isinstance(exc, dbapi.Error):
            return False
        try:
            driver = conn.connection.driver_connection
        except sa.exc.SQLAlchemyError:
            return True
        return bool(self._db.dialect.is_disconnect(exc, driver, None)) or self._closed(driver)
