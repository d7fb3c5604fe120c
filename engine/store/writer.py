"""Write transactions on connections kept between transactions.

A transition is a short transaction: read the instance, write it, append its event. Run
through ``sa.Engine.begin()`` it pays the pool's checkout and check-in, a pre-ping round
trip on PostgreSQL and SQLAlchemy's transaction bookkeeping, which together cost more than
the statements. :class:`Writer` keeps a few connections checked out (a LIFO list, bounded)
and begins and ends the transaction through the driver.

On PostgreSQL it also sends the transaction in as few round trips as the work allows
(:class:`Pending`): the instance is read on its own, and its write — the version-checked
update, the event, the deadline rows that go with it — is one statement of data-modifying
CTEs, prepared by psycopg like any repeated statement. A plain transition is thus two
round trips, where the pooled path took eight. Should the version have moved in between,
nothing is written and the caller reads again (:class:`StaleRead`). Any statement
SQLAlchemy runs on the connection (outbox rows, clocks, idempotency records) first sends
``BEGIN`` and what is queued, so statements always run in the order they were issued.

A connection the server dropped (a restart, ``pg_terminate_backend``) is noticed on the
transaction's first statement: nothing was sent, so the caller may retry on a fresh
connection (:class:`StaleConnection`); the other kept connections are dropped with it.

On a SQLite file the kept connections leave WAL checkpoints to a thread of the Writer
(:class:`Checkpointer`), so that no transition pays for copying the log back.

An asyncio server may run a write on its event loop instead of in a thread
(:func:`run_on_loop`): a hop to a worker thread and back cost about a fifth of an HTTP
fire's server time. The write runs in a greenlet, so the Engine stays synchronous. On
PostgreSQL each wait for the server awaits the socket on the loop, as an async driver
would. On SQLite nothing waits but the write lock: the transaction is begun without
waiting for it. A write that would have to open a connection, or find the SQLite file
locked by another writer, raises :class:`OffLoop` before anything is written, for the
caller to run it in a thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar
from urllib.request import pathname2url

import sqlalchemy as sa
from sqlalchemy import event

try:  # writes on an event loop
    import greenlet
except ImportError:  # pragma: no cover - every write then runs where it is called
    greenlet = None  # type: ignore[assignment]

__all__ = [
    "Checkpointer",
    "OffLoop",
    "Op",
    "Pending",
    "StaleConnection",
    "StaleRead",
    "Writer",
    "pending_of",
    "run_on_loop",
]

_T = TypeVar("_T")

# the open Pending of each connection in a Writer transaction, by id(connection): a dict
# lookup, where Connection.info walks three objects (this is read several times per fire)
_PENDING: dict[int, Pending] = {}


def pending_of(conn: sa.Connection) -> Pending | None:
    """The queue of *conn*'s transaction if it runs in a Writer on PostgreSQL."""
    return _PENDING.get(id(conn))


class StaleConnection(Exception):
    """The kept connection was dead before anything was sent; retry on a fresh one."""


class StaleRead(Exception):
    """The instance changed between its read and the write; nothing was written."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(instance_id)
        self.instance_id = instance_id


class OffLoop(Exception):
    """A write on the event loop would block it: a connection to open, a lock to wait for.

    Nothing was sent and nothing committed: the caller runs the write again in a thread.
    """


if greenlet is not None:

    class _LoopTask(greenlet.greenlet):
        """A write running on an event loop (see :func:`run_on_loop`)."""

        committed = False  # whether a transaction of it was committed (no rerun then)


def _loop_task() -> Any:
    """The :func:`run_on_loop` write running now, or None."""
    if greenlet is None:
        return None
    task = greenlet.getcurrent()
    return task if type(task) is _LoopTask else None


def _may_go_off_loop() -> bool:
    """Whether a write on the loop that would block may still be sent to a thread: nothing
    of it committed yet."""
    task = _loop_task()
    return task is not None and not task.committed


async def run_on_loop(func: Callable[..., _T], *args: Any) -> _T:
    """Run the synchronous write *func(*args)* on the running event loop.

    Its waits for PostgreSQL on a Writer's kept connections await the socket on the loop,
    so other requests go on meanwhile; its Python code runs on the loop. It sees a copy of
    the caller's context variables (as a thread from ``anyio.to_thread`` does). Raises
    :class:`OffLoop` (nothing sent) when it would have to open a connection or wait for
    the SQLite lock. *func* should run one write transaction: once one has committed, a
    later one opens connections and waits for locks on the loop, blocking it. Cancelling
    it mid-statement leaves that connection to be discarded: callers run it in a task of
    its own that a cancelled request leaves to finish, as a thread would finish too.
    """
    if greenlet is None:  # pragma: no cover - a dependency, unless a host removed it
        raise OffLoop("greenlet is not installed")
    task = _LoopTask(func)
    task.gr_context = contextvars.copy_context()
    step = task.switch(*args)
    while not task.dead:  # the write waits: *step* is what it waits for
        try:
            ready = await step
        except BaseException as exc:  # its wait failed: the write handles it
            step = task.throw(exc)
        else:
            step = task.switch(ready)
    result: _T = step
    return result


def _wait_on_loop(driver: Any) -> None:
    """Make *driver* (a psycopg connection) wait on the event loop inside :func:`run_on_loop`."""
    if greenlet is None or "wait" in vars(driver):
        return
    from psycopg.waiting import wait_async

    plain = driver.wait

    def wait(gen: Any, *args: Any, **kwargs: Any) -> Any:
        task = greenlet.getcurrent()
        if type(task) is not _LoopTask:
            return plain(gen, *args, **kwargs)  # as psycopg calls it, whatever its version
        # Connection.wait(gen, interval, timeout): psycopg 3.2 has no timeout
        interval = args[0] if args else kwargs.get("interval", 0.1)
        timeout = args[1] if len(args) > 1 else kwargs.get("timeout")
        extra = {} if timeout is None else {"timeout": timeout}
        waiting = wait_async(gen, driver.pgconn.socket, interval=interval, **extra)
        return task.parent.switch(waiting)  # type: ignore[union-attr]  # a task has a parent

    driver.wait = wait


class Op(Protocol):
    """A write the hot path queues: run alone, or as parts of one statement."""

    instance_write: bool  # the version-checked instance update (gates the rest)
    composable: bool  # whether it has a single-statement form (parts)

    def run(self, cursor: Any) -> None:
        """Execute it inside the open transaction (StaleRead if the version moved)."""

    def parts(self, n: int) -> tuple[list[str], dict[str, Any]] | None:
        """Its CTEs (names suffixed with *n*) for the single statement, or None."""


class Pending:
    """The PostgreSQL transaction of a Writer, begun only when something needs it.

    Reads run at once; before ``BEGIN`` they run on their own (the instance write checks
    the version it read). Writes are queued. At commit, a queue made of one instance write
    and the deadline writes that go with it becomes one statement of data-modifying CTEs,
    run without ``BEGIN``/``COMMIT`` (a single statement is its own transaction). Anything
    else — a statement through SQLAlchemy, a write that has no single-statement form —
    sends ``BEGIN`` and the queue first, and the rest runs inside that transaction.
    """

    __slots__ = ("_cursor", "began", "ops", "sent")

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self.ops: list[Op] = []
        self.began = False  # whether BEGIN was sent
        self.sent = False  # whether anything reached the server

    def query(self, sql: str, params: Any) -> Any:
        """Run a read now; return the cursor on its result."""
        self._cursor.execute(sql, params)
        self.sent = True
        return self._cursor

    def add(self, op: Op) -> None:
        if not self.began and (not op.composable or (op.instance_write and self.ops)):
            self.begin()
        if self.began:
            op.run(self._cursor)
        else:
            self.ops.append(op)

    def begin(self) -> None:
        """Send BEGIN and whatever is queued; from now on statements run at once."""
        if self.began:
            return
        self._cursor.execute("BEGIN")
        self.began = self.sent = True
        ops, self.ops = self.ops, []
        for op in ops:
            op.run(self._cursor)

    def commit(self) -> None:
        if self.began:
            self._cursor.execute("COMMIT")
            return
        if not self.ops:
            return
        ops, self.ops = self.ops, []
        head = ops[0]
        if not head.instance_write:  # no version gate: run them in a transaction
            self.ops = ops
            self.begin()
            self._cursor.execute("COMMIT")
            return
        ctes: list[str] = []
        params: dict[str, Any] = {}
        for n, op in enumerate(ops):
            got = op.parts(n)
            assert got is not None
            ctes.extend(got[0])
            params.update(got[1])
        self.sent = True
        row = self._cursor.execute(
            "WITH " + ", ".join(ctes) + " SELECT count(*) FROM u0",  # noqa: S608 - our SQL
            params,
        ).fetchone()
        if row[0] != 1:
            raise StaleRead(getattr(head, "instance_id", "?"))


def _flush_before(
    conn: sa.Connection, cursor: Any, statement: Any, params: Any, context: Any, many: bool
) -> None:
    pending = _PENDING.get(id(conn))
    if pending is not None:
        pending.begin()


class Writer:
    """Write transactions on up to *keep* connections kept between transactions."""

    def __init__(self, db: sa.Engine, *, keep: int = 4) -> None:
        self._db = db
        self._keep = keep
        self._idle: list[sa.Connection] = []
        self._cursors: dict[int, Any] = {}  # one driver cursor per kept PostgreSQL connection
        self._busy: dict[int, int] = {}  # each kept SQLite connection's busy timeout (ms)
        self._lock = threading.Lock()
        self.postgres = db.dialect.name == "postgresql"
        self.sqlite3 = _stdlib_sqlite(db)  # SQLite through the standard library's driver
        # an Engine dropped unclosed holds no thread for long: it ends when idle
        self.checkpointer = Checkpointer.for_engine(db)
        # Engine.dispose() (a host recycling its pool, a forked child) drops ours too
        event.listen(db, "engine_disposed", self._on_dispose)

    @property
    def runs_on_loop(self) -> bool:
        """Whether :func:`run_on_loop` can run this Writer's writes without blocking the loop.

        PostgreSQL through psycopg, or SQLite through the standard ``sqlite3`` (whose busy
        timeout this Writer sets for the begin); greenlet installed.
        """
        if greenlet is None:
            return False
        if self.postgres:
            return self._db.dialect.driver == "psycopg"
        return self.sqlite3

    def _on_dispose(self, _db: sa.Engine) -> None:
        self.close()

    # ---------------------------------------------------------------- connections

    def _acquire(self) -> sa.Connection:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        if _may_go_off_loop():
            raise OffLoop("no kept connection is free")
        conn = self._db.connect()
        if self.checkpointer is not None:
            self.checkpointer.adopt(conn.connection.driver_connection)
        if self.sqlite3:
            lite: Any = conn.connection.driver_connection
            # only in WAL mode does nothing after BEGIN IMMEDIATE wait (a rollback journal's
            # COMMIT waits for readers): elsewhere writes stay off the loop
            if str(lite.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                self._busy[id(conn)] = int(lite.execute("PRAGMA busy_timeout").fetchone()[0])
        if self.postgres:
            driver = conn.connection.driver_connection
            # the transaction is begun in SQL, with its first statement (see Pending)
            driver.autocommit = True  # type: ignore[union-attr]
            self._cursors[id(conn)] = driver.cursor()  # type: ignore[union-attr]
            _wait_on_loop(driver)
            event.listen(conn, "before_cursor_execute", _flush_before)
        return conn

    def _release(self, conn: sa.Connection, reusable: bool) -> None:
        if reusable and not conn.invalidated and len(self._idle) < self._keep:
            self._idle.append(conn)
            return
        self._discard(conn)

    def _discard(self, conn: sa.Connection) -> None:
        self._cursors.pop(id(conn), None)
        self._busy.pop(id(conn), None)
        try:
            if self.checkpointer is not None and not conn.invalidated:
                self.checkpointer.release(conn.connection.driver_connection)
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
        """Return every kept connection to the pool (and stop the checkpointer)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)
        if self.checkpointer is not None:
            self.checkpointer.stop()

    # ---------------------------------------------------------------- transactions

    def transaction(self) -> _Transaction:
        """A write transaction on a kept connection (``with writer.transaction() as conn``)."""
        return _Transaction(self)

    def _begin(self) -> tuple[sa.Connection, Any, Pending | None]:
        conn = self._acquire()
        driver: Any = conn.connection.driver_connection
        if self.postgres:
            pending = _PENDING[id(conn)] = Pending(self._cursors[id(conn)])
            return conn, driver, pending
        try:
            if _may_go_off_loop():
                self._begin_now(conn, driver)
            else:
                driver.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release(conn, self._rollback(conn, driver))
            raise
        return conn, driver, None

    def _begin_now(self, conn: sa.Connection, driver: Any) -> None:
        """BEGIN IMMEDIATE on SQLite without waiting: OffLoop if another writer has the lock."""
        busy = self._busy.get(id(conn))
        if busy is None:  # not the standard driver, or not WAL: its waits cannot be avoided
            raise OffLoop("this SQLite connection may wait for locks")
        driver.execute("PRAGMA busy_timeout=0")
        try:
            driver.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:  # or an extended code
                raise OffLoop("another writer holds the SQLite database") from exc
            raise
        finally:
            driver.execute(f"PRAGMA busy_timeout={busy}")

    def _end(
        self,
        conn: sa.Connection,
        driver: Any,
        pending: Pending | None,
        exc: BaseException | None,
    ) -> None:
        """Commit (no *exc*) or roll back, then keep or discard the connection."""
        reusable = True
        try:
            if exc is None:
                try:
                    if pending is not None:
                        pending.commit()
                        self._forget(conn)
                    if conn.in_transaction():
                        conn.commit()  # SQLAlchemy's bookkeeping; on PostgreSQL already done
                    elif not self.postgres:
                        driver.commit()
                except BaseException as failed:
                    exc = failed
                    self._failed(conn, pending, failed)
                    raise
            else:
                self._failed(conn, pending, exc)
        finally:
            if exc is not None:
                reusable = self._rollback(conn, driver) and not self._is_disconnect(exc, conn)
            self._release(conn, reusable)
        if exc is None:
            task = _loop_task()
            if task is not None:
                task.committed = True  # a write that committed is never run again
            if self.checkpointer is not None:  # committed: nothing here may report otherwise
                self.checkpointer.committed()

    def _failed(self, conn: sa.Connection, pending: Pending | None, exc: BaseException) -> None:
        stale = pending is not None and not pending.sent and self._is_disconnect(exc, conn)
        self._forget(conn)
        if stale:  # the caller's _end rolls back and discards this one
            self.close()
            raise StaleConnection(str(exc)) from exc

    @staticmethod
    def _forget(conn: sa.Connection) -> None:
        _PENDING.pop(id(conn), None)

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


class _Transaction:
    """The context manager of :meth:`Writer.transaction` (a class: it runs on every fire)."""

    __slots__ = ("_conn", "_driver", "_pending", "_writer")

    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    def __enter__(self) -> sa.Connection:
        self._conn, self._driver, self._pending = self._writer._begin()
        return self._conn

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._writer._end(self._conn, self._driver, self._pending, exc)


def _stdlib_sqlite(db: sa.Engine) -> bool:
    """Whether *db* is SQLite through the standard library's ``sqlite3``."""
    return db.dialect.name == "sqlite" and getattr(db.dialect.dbapi, "__name__", "") in (
        "sqlite3",
        "sqlite3.dbapi2",
    )


class Checkpointer:
    """Copies a SQLite WAL back into the database file from a thread of its own.

    SQLite checkpoints in the commit that takes the WAL past 1,000 pages: that commit copies
    the pages back and syncs both files, a few milliseconds charged to one transition, a
    quarter of the average transition's cost on a busy engine. The Writer's connections
    leave most of that to this thread, woken every :attr:`every` commits, which runs a
    ``PASSIVE`` checkpoint (it never waits for readers or writers) on a connection of its
    own. SQLite starts the log again from its beginning only after a checkpoint that
    copied all of it, and under a steady stream of writes the thread never quite catches
    up; so the kept connections still checkpoint themselves, at :attr:`limit` pages, when
    little is left to copy. Every other connection keeps its setting, and a kept one gets
    its own back when it returns to the pool. A host that turned SQLite's checkpoints off
    (``wal_autocheckpoint=0``) runs them itself: then this stays off. The thread ends after
    :attr:`idle` seconds without a wake-up and starts again with the next one.
    """

    every = 64  # commits between wake-ups; a transition writes 5-10 pages
    limit = 4_000  # pages (16 MB): the kept connections' own checkpoint
    idle = 30.0  # seconds without a wake-up after which the thread ends (it comes back)

    def __init__(self, path: str) -> None:
        # absolute: the process may change directory, and this opens its own connection
        self.path = os.path.abspath(path)
        self.runs = 0  # checkpoints run (tests, metrics)
        self._commits = 0  # since the last wake-up; approximate across threads
        self._lock = threading.Lock()  # starting and stopping the thread
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._saved: dict[int, int] = {}  # each kept connection's own setting, by id
        # off when the host checkpoints itself (wal_autocheckpoint=0) or the file cannot
        # be opened from the thread
        self.off = False

    @classmethod
    def for_engine(cls, db: sa.Engine) -> Checkpointer | None:
        """One for a SQLite file opened with the standard driver; None otherwise."""
        path = db.url.database
        if db.dialect.name != "sqlite" or not path or path == ":memory:":
            return None
        if path.startswith("file:"):  # a URI filename; SQLite knows best where it points
            return None
        # the thread's connection uses this module: another SQLite library in the same
        # process on the same file could drop this one's locks
        if not _stdlib_sqlite(db):
            return None
        return cls(path)

    def adopt(self, driver: Any) -> None:
        """A connection kept by the Writer: it leaves checkpoints to this thread."""
        own = int(driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        if own == 0:  # the host runs its checkpoints itself: leave them to it
            self.off = True
            return
        self._saved[id(driver)] = own
        driver.execute(f"PRAGMA wal_autocheckpoint={self.limit}")

    def release(self, driver: Any) -> None:
        """A connection given back to the pool: its own setting again."""
        own = self._saved.pop(id(driver), None)
        if own is not None:
            driver.execute(f"PRAGMA wal_autocheckpoint={own}")

    def committed(self) -> None:
        self._commits += 1
        if self._commits >= self.every:
            self._commits = 0
            if not self.off:
                # no thread to be had (shutting down): SQLite's own checkpoint at the limit
                # still keeps the log bounded
                with contextlib.suppress(RuntimeError):
                    self.wake()

    def wake(self) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():  # the first time, or in a forked child
            with self._lock:
                thread = self._thread
                if thread is None or not thread.is_alive():
                    # each thread has its own events: one being stopped never sees the next's
                    self._wake, self._stop = threading.Event(), threading.Event()
                    thread = self._thread = threading.Thread(
                        target=self._run,
                        args=(self._wake, self._stop),
                        name="sangkien-checkpoint",
                        daemon=True,
                    )
                    thread.start()
        self._wake.set()

    def stop(self, *, wait: bool = True) -> None:
        """End the thread (it is started again by the next wake-up)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._stop.set()
            self._wake.set()
        if wait and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _run(self, wake: threading.Event, stop: threading.Event) -> None:
        try:  # never creates the file: the Engine's connections did
            con = sqlite3.connect(
                f"file:{pathname2url(self.path)}?mode=rw",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error:  # unreadable from here: the kept connections' limit still holds
            self.off = True
            return
        try:
            while True:
                if not wake.wait(self.idle):
                    return  # nothing written for a while (or the Engine was dropped)
                wake.clear()
                if stop.is_set():
                    return
                try:
                    con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error:  # busy or read-only: the next wake-up tries again
                    pass
        finally:
            con.close()
