"""PostgreSQL writes on an asyncio event loop (``run_on_loop``), as the API runs them."""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import threading
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
import structlog.testing
from pg_helpers import terminate, with_app

from sangkien import Actor, Engine, TransitionNotAllowed
from sangkien.api.context import ApiContext
from sangkien.api.settings import ApiSettings
from sangkien.store.db import create_db_engine
from sangkien.store.writer import OffLoop, Writer, run_on_loop
from sangkien.units import FlatUnits

RACE = Path(__file__).resolve().parent / "workflows" / "race.yaml"
RACER = Actor("ref", ["racer"], "lab")


def _sleep_in_a_write(writer: Writer, seconds: float) -> int:
    with writer.transaction() as conn:
        conn.exec_driver_sql(f"SELECT pg_sleep({seconds})")
    return threading.get_ident()


def _on_a_ticking_loop(func: Any, *args: Any) -> tuple[Any, int, int]:
    """Run ``run_on_loop(func, *args)`` on a new loop with a ticker every 10 ms beside it:
    its result, the ticks counted meanwhile and the loop's thread."""

    async def main() -> tuple[Any, int, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.ensure_future(ticker())
        try:
            return await run_on_loop(func, *args), ticks, threading.get_ident()
        finally:
            done.set()
            await beat

    return asyncio.run(main())


@pytest.mark.postgresql
def test_a_write_on_the_loop_lets_the_loop_run_while_it_waits(pg_url: str) -> None:
    db = create_db_engine(pg_url)
    writer = Writer(db)
    _sleep_in_a_write(writer, 0)  # in this thread: opens the connection that is then kept
    ran_on, ticks, loop_thread = _on_a_ticking_loop(_sleep_in_a_write, writer, 0.3)
    assert ran_on == loop_thread  # no worker thread
    assert ticks >= 10  # the loop went on for the 0.3 s the server slept
    assert db.pool.checkedout() == 1  # the kept connection, back in its place
    writer.close()
    db.dispose()


@pytest.mark.postgresql
def test_a_write_that_would_open_a_connection_is_left_to_a_thread(pg_url: str) -> None:
    db = create_db_engine(pg_url)
    with Engine(db, workflows=[RACE], migrate=True) as engine:
        iid = engine.start("race", actor=RACER).id  # keeps one connection
        writer = Writer(db)  # keeps none yet

        async def on_loop() -> None:
            await run_on_loop(_sleep_in_a_write, writer, 0)

        with pytest.raises(OffLoop):
            anyio.run(on_loop)
        assert db.pool.checkedout() == 1  # nothing was opened for it
        _sleep_in_a_write(writer, 0)  # a thread opens one; the loop may use it from now on
        anyio.run(on_loop)
        assert engine.fire(iid, "bump", actor=RACER).data["count"] == 1
        writer.close()
    db.dispose()


@pytest.mark.postgresql
def test_a_write_on_the_loop_sees_the_callers_context(pg_url: str) -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    db = create_db_engine(pg_url)
    writer = Writer(db)
    _sleep_in_a_write(writer, 0)

    def work() -> str:
        with writer.transaction() as conn:
            conn.exec_driver_sql("SELECT 1")
        seen = request_id.get()
        request_id.set("changed inside")
        return seen

    async def main() -> tuple[str, str]:
        request_id.set("r-42")
        seen = await run_on_loop(work)
        return seen, request_id.get()

    assert anyio.run(main) == ("r-42", "r-42")  # a copy: the write's changes stay inside
    writer.close()
    db.dispose()


@pytest.mark.postgresql
def test_concurrent_fires_on_the_loop_lose_no_update(pg_url: str) -> None:
    """Four fires at a time on one loop, on eight instances: every bump counted once."""
    engine = Engine(pg_url, workflows=[RACE], migrate=True)
    ctx = ApiContext(engine, ApiSettings(jwt_secret="x" * 32))
    ids = [engine.start("race", actor=RACER).id for _ in range(8)]
    threads: set[int] = set()

    def bump(iid: str) -> None:
        engine.fire(iid, "bump", actor=RACER)
        threads.add(threading.get_ident())

    async def main() -> int:
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                for iid in ids:
                    tg.start_soon(ctx.write, bump, iid)
        return threading.get_ident()

    loop_thread = anyio.run(main)
    assert [engine.get(i).data["count"] for i in ids] == [10] * 8
    assert engine.verify() == []
    assert loop_thread in threads  # most ran on the loop
    engine.close()


@pytest.mark.postgresql
def test_a_refusal_on_the_loop_rolls_back_and_keeps_the_connection(pg_url: str) -> None:
    db = create_db_engine(pg_url)
    engine = Engine(db, workflows=[RACE], migrate=True)
    iid = engine.start("race", actor=RACER).id
    engine.fire(iid, "go_left", actor=RACER)

    async def main() -> None:
        with pytest.raises(TransitionNotAllowed, match="cannot be fired"):
            await run_on_loop(partial(engine.fire, iid, "go_left", actor=RACER))
        after = await run_on_loop(partial(engine.fire, iid, "reset", actor=RACER))
        assert after.state == "idle"

    anyio.run(main)
    assert db.pool.checkedout() == 1  # one kept connection throughout
    assert engine.fire(iid, "bump", actor=RACER).version == 4  # and usable from a thread
    assert engine.verify() == []
    engine.close()
    db.dispose()


class _Locked:
    """An Engine on PostgreSQL, the API context, and an instance whose row another
    connection holds locked (``FOR UPDATE``), so that a fire on it waits until unlocked."""

    def __init__(self, pg_url: str) -> None:
        self.db = create_db_engine(pg_url)
        self.engine = Engine(self.db, workflows=[RACE], migrate=True)
        self.ctx = ApiContext(self.engine, ApiSettings(jwt_secret="x" * 32))
        self.iid = self.engine.start("race", actor=RACER).id
        self.locker = self.db.connect()
        self.locker.execute(
            sa.text("SELECT 1 FROM sk_instances WHERE id = :i FOR UPDATE"), {"i": self.iid}
        )
        self.bump = partial(self.engine.fire, self.iid, "bump", actor=RACER)

    async def cancel_while_waiting(self) -> None:
        """Fire through the API's write, and cancel the request (asyncio's own cancel)
        while the fire waits on the row lock."""
        request = asyncio.ensure_future(self.ctx.write(self.bump))
        await asyncio.sleep(0.3)  # the fire now waits on the row lock
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    def check_it_fired_once_and_goes_on(self) -> None:
        """The fire counted once, and the instance goes on from there intact."""
        assert self.engine.get(self.iid).data["count"] == 1
        assert self.bump().data["count"] == 2
        assert self.engine.verify() == []

    def close(self) -> None:
        self.locker.close()
        self.engine.close()
        self.db.dispose()


@pytest.mark.postgresql
def test_a_write_whose_task_is_cancelled_outright_runs_to_its_end(pg_url: str) -> None:
    """asyncio's own cancel (a server's shutdown timeout): the fire completes as a fire,
    logged as a transition, rather than being interrupted mid-statement."""
    t = _Locked(pg_url)

    async def main() -> None:
        await t.cancel_while_waiting()
        await asyncio.to_thread(t.locker.rollback)
        for _ in range(500):  # the write, left to itself, ends once the lock goes
            if asyncio.all_tasks() == {asyncio.current_task()}:
                break
            await asyncio.sleep(0.01)

    try:
        with structlog.testing.capture_logs() as logs:
            asyncio.run(main())
        assert t.db.pool.checkedout() == 2  # the locker and the write's, kept: it finished
        # it returned as a fire does, logged as a transition
        assert [e["trigger"] for e in logs if e["event"] == "transition"] == ["bump"]
        t.check_it_fired_once_and_goes_on()
    finally:
        t.close()


@pytest.mark.postgresql
def test_a_write_still_waiting_when_its_loop_ends_gives_its_connection_up(pg_url: str) -> None:
    """A server stopping with a write on the loop waiting for a lock: the loop's shutdown
    ends the write (its connection discarded, not held forever) and the Engine goes on."""
    t = _Locked(pg_url)

    try:
        asyncio.run(t.cancel_while_waiting())  # ...and the loop ends with the write waiting
        assert t.db.pool.checkedout() == 1  # only the locker's: the write's was given up
        t.locker.rollback()
        # the statement was sent before the end: the server ran it once the lock went
        for _ in range(100):
            if t.engine.get(t.iid).data["count"] == 1:
                break
            threading.Event().wait(0.05)
        t.check_it_fired_once_and_goes_on()
    finally:
        t.close()


@pytest.mark.postgresql
def test_a_timed_wait_on_the_loop_lets_the_loop_run(pg_url: str) -> None:
    """psycopg's waits with a time limit (``notifies(timeout=...)``) await on the loop too."""
    db = create_db_engine(pg_url)
    writer = Writer(db)
    _sleep_in_a_write(writer, 0)  # opens the connection that is then kept

    def listen() -> list[str]:
        with writer.transaction() as conn:
            driver = conn.connection.driver_connection
            driver.execute("LISTEN sangkien_test_timed_wait")  # type: ignore[union-attr]
            got = [n.payload for n in driver.notifies(timeout=0.3)]  # type: ignore[union-attr]
            driver.execute("UNLISTEN *")  # type: ignore[union-attr]
            return got

    got, ticks, _ = _on_a_ticking_loop(listen)
    assert got == []  # nothing was notified: the wait ended at its time limit
    assert ticks >= 10  # and the loop went on meanwhile
    assert db.pool.checkedout() == 1
    writer.close()
    db.dispose()


@pytest.mark.postgresql
def test_a_write_the_client_abandons_runs_to_its_end(pg_url: str) -> None:
    """Cancelling the request's scope mid-write changes nothing: the fire commits when the
    lock goes, as it would in a thread."""
    t = _Locked(pg_url)
    unlock = threading.Timer(0.3, t.locker.rollback)

    async def main() -> bool:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(t.ctx.write, t.bump)
                await anyio.sleep(0.3)  # the fire now waits on the row lock
                unlock.start()  # ...and is let go 0.3 s after its request was cancelled
                scope.cancel()
        return scope.cancelled_caught

    try:
        assert anyio.run(main)
        assert t.engine.get(t.iid).data["count"] == 1  # the abandoned fire committed
        assert t.bump().data["count"] == 2
    finally:
        unlock.join()
        t.close()


def test_sqlite_writes_run_on_the_loop_unless_another_writer_has_the_lock(
    sqlite_url: str,
) -> None:
    loop_thread = threading.get_ident()  # anyio.run runs the loop in the calling thread
    in_thread = threading.Event()
    with Engine(sqlite_url, workflows=[RACE], migrate=True) as engine:
        assert engine.writes_on_loop
        ctx = ApiContext(engine, ApiSettings(jwt_secret="x" * 32))
        iid = engine.start("race", actor=RACER).id  # keeps a connection

        def fire() -> int:
            if threading.get_ident() != loop_thread:
                in_thread.set()
            engine.fire(iid, "bump", actor=RACER)
            return threading.get_ident()

        async def main() -> int:
            return await ctx.write(fire)

        assert anyio.run(main) == loop_thread
        assert ctx.metrics.registry.get_sample_value("sangkien_writes_in_threads_total") == 0
        other = sqlite3.connect(
            sqlite_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
        )
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer holds the lock...
            # ...until the fire has gone to a thread, which then waits for it
            releaser = threading.Thread(target=lambda: (in_thread.wait(10), other.rollback()))
            releaser.start()
            assert anyio.run(main) != loop_thread
            releaser.join()
            assert ctx.metrics.registry.get_sample_value("sangkien_writes_in_threads_total") == 1
        finally:
            other.close()
        assert engine.get(iid).data["count"] == 2
        assert anyio.run(main) == loop_thread  # and back on the loop
        busy = {
            c.connection.driver_connection.execute("PRAGMA busy_timeout").fetchone()[0]
            for c in engine._writer._idle  # type: ignore[union-attr]
        }
        assert busy == {30000}  # each kept connection waits for locks again in threads


def test_writes_stay_off_the_loop_where_they_could_block_it(sqlite_url: str) -> None:
    """A SQLite file without WAL (its COMMIT waits for readers) and a host's own directory
    (which may look people up over the network) keep writes in threads."""
    loop_thread = threading.get_ident()
    journal = sa.create_engine(sqlite_url)  # a host's engine: SQLite's default rollback journal
    with Engine(journal, workflows=[RACE], migrate=True) as engine:
        ctx = ApiContext(engine, ApiSettings(jwt_secret="x" * 32))
        iid = engine.start("race", actor=RACER).id

        def fire() -> int:
            engine.fire(iid, "bump", actor=RACER)
            return threading.get_ident()

        async def main() -> int:
            return await ctx.write(fire)

        assert anyio.run(main) != loop_thread
        assert anyio.run(main) != loop_thread
        assert engine.get(iid).data["count"] == 2
    journal.dispose()

    class HostDirectory(FlatUnits):
        """A directory of the host's (here with flat units)."""

    with Engine(sqlite_url, units=HostDirectory()) as engine:
        assert not engine.writes_on_loop
    with Engine(sqlite_url) as engine:
        assert engine.writes_on_loop


@pytest.mark.postgresql
def test_a_write_on_the_loop_after_the_server_dropped_its_connection(pg_url: str) -> None:
    """The kept connection is terminated (a PostgreSQL restart): the next fire through the
    API notices it before sending anything, opens a new one in a thread, and loses nothing;
    the one after runs on the loop again."""
    app = f"sk-loop-{uuid.uuid4().hex[:8]}"
    engine = Engine(with_app(pg_url, app), workflows=[RACE], migrate=True)
    ctx = ApiContext(engine, ApiSettings(jwt_secret="x" * 32))
    iid = engine.start("race", actor=RACER).id
    loop_thread = threading.get_ident()

    def bump() -> int:
        engine.fire(iid, "bump", actor=RACER)
        return threading.get_ident()

    async def main() -> int:
        return await ctx.write(bump)

    try:
        assert anyio.run(main) == loop_thread
        assert terminate(pg_url, app) >= 1
        assert anyio.run(main) != loop_thread  # a new connection, opened in a thread
        assert anyio.run(main) == loop_thread  # kept, and used on the loop
        assert engine.get(iid).data["count"] == 3
        assert engine.verify() == []
    finally:
        engine.close()
