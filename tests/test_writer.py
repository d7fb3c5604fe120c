"""Write transactions on kept connections (``sangkien.store.writer``), on both backends."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from sangkien import Actor, ConcurrencyConflict, Engine, StoreError
from sangkien.store.db import create_db_engine

RACE = Path(__file__).resolve().parent / "workflows" / "race.yaml"
RACER = Actor("ref", ["racer"], "lab")


def test_kept_connections_go_back_on_close_and_dispose(db_url: str) -> None:
    db = create_db_engine(db_url)
    engine = Engine(db, workflows=[RACE], migrate=True)
    iid = engine.start("race", actor=RACER).id
    engine.fire(iid, "bump", actor=RACER)
    assert db.pool.checkedout() == 1  # kept between transactions
    engine.close()
    assert db.pool.checkedout() == 0  # the host's pool is whole again, and not disposed
    engine = Engine(db, workflows=[RACE])
    engine.fire(iid, "bump", actor=RACER)
    db.dispose()  # a host recycling its pool takes the kept connection back too
    assert engine.fire(iid, "bump", actor=RACER).data["count"] == 3
    engine.close()
    db.dispose()


def test_without_kept_connections_each_transaction_checks_one_out(db_url: str) -> None:
    db = create_db_engine(db_url)
    engine = Engine(db, workflows=[RACE], migrate=True, keep_connections=0)
    iid = engine.start("race", actor=RACER).id
    for _ in range(3):
        engine.fire(iid, "bump", actor=RACER)
    assert db.pool.checkedout() == 0
    assert engine.get(iid).data["count"] == 3
    assert engine.verify() == []
    engine.close()
    db.dispose()


def test_a_failed_transition_leaves_the_kept_connection_usable(db_url: str) -> None:
    """A refusal and a database error both roll back; the next fire works on the same pool."""
    with Engine(db_url, workflows=[RACE], migrate=True) as engine:
        iid = engine.start("race", actor=RACER).id
        engine.fire(iid, "go_left", actor=RACER)
        with pytest.raises(Exception, match="cannot be fired"):
            engine.fire(iid, "go_left", actor=RACER)
        with engine.db.begin() as conn:  # break the next event's insert: a duplicate seq
            conn.execute(
                sa.text(
                    "INSERT INTO sk_events (instance_id, seq, kind, to_state, actor_id,"
                    " actor_roles, at, data_delta, prev_hash, hash) SELECT id, last_seq + 1,"
                    " 'note', state, 'x', '[]', updated_at, '{}', last_hash, last_hash"
                    " FROM sk_instances WHERE id = :id"
                ),
                {"id": iid},
            )
        with pytest.raises(StoreError):
            engine.fire(iid, "reset", actor=RACER)
        after = engine.get(iid)
        assert (after.state, after.version) == ("left", 2)  # nothing of the failed fire
        with engine.db.begin() as conn:
            conn.execute(sa.text("DELETE FROM sk_events WHERE kind = 'note'"))
        assert engine.fire(iid, "reset", actor=RACER).state == "idle"
        assert engine.verify() == []


class _Interloper:
    """A clock that, the first *times* it is read inside a fire, lets another writer in."""

    def __init__(self, other: Engine, iid: str, times: int) -> None:
        self.other, self.iid, self.left = other, iid, times

    def now(self) -> datetime:
        if self.left > 0:
            self.left -= 1
            self.other.fire(self.iid, "bump", actor=Actor("other", ["racer"], "lab"))
        return datetime.now(UTC)


def _raced(pg_url: str, times: int) -> tuple[Engine, Engine, str, _Interloper]:
    """An instance, a second Engine on it, and ours, whose clock lets the other in first."""
    other = Engine(pg_url, workflows=[RACE], migrate=True)
    iid = other.start("race", actor=RACER).id
    clock = _Interloper(other, iid, times=times)
    return other, Engine(pg_url, clock=clock), iid, clock


@pytest.mark.postgresql
def test_a_write_between_read_and_write_makes_the_fire_read_again(pg_url: str) -> None:
    """PostgreSQL reads outside the write: a concurrent change is seen and nothing is lost."""
    other, engine, iid, clock = _raced(pg_url, times=2)
    done = engine.fire(iid, "bump", actor=RACER)  # read, interloper bumps, write refused: again
    assert clock.left == 0
    assert done.data["count"] == 3 and done.version == 4  # two from the other writer, then ours
    history = engine.history(iid)
    assert [e.actor_id for e in history[1:]] == ["other", "other", "ref"]
    assert engine.verify() == []
    clock.left = 1  # a caller that pinned the version it read is told instead
    with pytest.raises(ConcurrencyConflict):
        engine.fire(iid, "bump", actor=RACER, expected_version=4)
    assert engine.get(iid).data["count"] == 4  # only the interloper's bump
    engine.close()
    other.close()


@pytest.mark.postgresql
def test_a_fire_that_keeps_losing_the_race_reports_a_conflict(pg_url: str) -> None:
    other, engine, iid, clock = _raced(pg_url, times=100)
    with pytest.raises(ConcurrencyConflict, match="changed by another writer"):
        engine.fire(iid, "bump", actor=RACER)
    after = engine.get(iid)
    assert after.data["count"] == 100 - clock.left  # every interloper bump, none of ours
    assert engine.verify() == []
    engine.close()
    other.close()


def _autocheckpoint(driver: object) -> int:
    return int(driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0])  # type: ignore[attr-defined]


def test_sqlite_checkpoints_run_on_the_writers_thread(sqlite_url: str) -> None:
    """Kept connections leave most of the WAL to the checkpointer; the log stays bounded."""
    db = create_db_engine(sqlite_url)
    engine = Engine(db, workflows=[RACE], migrate=True)
    writer = engine._writer
    assert writer is not None and writer.checkpointer is not None
    checkpointer = writer.checkpointer
    iid = engine.start("race", actor=RACER).id
    kept = writer._idle[0].connection.driver_connection
    assert _autocheckpoint(kept) == checkpointer.limit  # not at SQLite's 1,000 pages
    wal = Path(db.url.database + "-wal")
    for _ in range(3000):  # ~16,000 pages through the WAL
        engine.fire(iid, "bump", actor=RACER)
    assert checkpointer.runs >= 1  # woken every 64 commits (wake-ups may coalesce)
    # the kept connection's own checkpoint at the limit finishes the thread's copy, and
    # the log starts again from its beginning: it never holds much more than the limit
    assert wal.stat().st_size < (checkpointer.limit + 500) * 4096
    assert engine.get(iid).data["count"] == 3000
    thread = checkpointer._thread
    assert thread is not None and thread.is_alive()
    engine.close()
    assert not thread.is_alive()  # close ends it
    with db.connect() as conn:  # the pooled connection is back to SQLite's default
        assert _autocheckpoint(conn.connection.driver_connection) == 1000
    db.dispose()


def test_no_checkpointer_where_sqlite_has_no_file_or_on_postgresql(db_url: str) -> None:
    with Engine(db_url, workflows=[RACE], migrate=True) as engine:
        assert engine._writer is not None
        has = engine._writer.checkpointer is not None
        assert has == db_url.startswith("sqlite")
    with Engine("sqlite://", workflows=[RACE], migrate=True) as engine:  # in memory
        assert engine._writer is None or engine._writer.checkpointer is None


def test_the_checkpointer_opens_the_engines_file_wherever_the_process_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative URL names the file where the Engine was built; the thread never makes one."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    with Engine("sqlite:///rel.db", workflows=[RACE], migrate=True) as engine:
        assert engine._writer is not None and engine._writer.checkpointer is not None
        checkpointer = engine._writer.checkpointer
        iid = engine.start("race", actor=RACER).id
        monkeypatch.chdir(elsewhere)
        checkpointer.every = 1  # wake it on every commit
        for _ in range(20):
            engine.fire(iid, "bump", actor=RACER)
        deadline = time.monotonic() + 10
        while checkpointer.runs == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert checkpointer.runs >= 1  # it checkpointed: it opened the Engine's file
    assert list(elsewhere.iterdir()) == []  # no stray database where the process went
    assert (home / "rel.db").exists()


def _sqlite_db(url: str, autocheckpoint: int) -> sa.Engine:
    """A host's engine whose connections come with their own wal_autocheckpoint."""
    db = create_db_engine(url)

    @sa.event.listens_for(db, "connect")
    def _own(dbapi_conn: object, _record: object) -> None:
        dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")  # type: ignore[attr-defined]

    return db


def test_the_hosts_own_checkpoint_setting_is_kept(sqlite_url: str) -> None:
    db = _sqlite_db(sqlite_url, 500)
    with Engine(db, workflows=[RACE], migrate=True) as engine:
        assert engine._writer is not None and engine._writer.checkpointer is not None
        engine.start("race", actor=RACER)
        kept = engine._writer._idle[0].connection.driver_connection
        assert _autocheckpoint(kept) == engine._writer.checkpointer.limit
    with db.connect() as conn:  # back in the pool with the host's 500, not SQLite's 1,000
        assert _autocheckpoint(conn.connection.driver_connection) == 500
    db.dispose()


def test_a_host_that_checkpoints_itself_is_left_to_it(sqlite_url: str) -> None:
    db = _sqlite_db(sqlite_url, 0)  # e.g. a replication tool that runs the checkpoints
    with Engine(db, workflows=[RACE], migrate=True) as engine:
        assert engine._writer is not None and engine._writer.checkpointer is not None
        checkpointer = engine._writer.checkpointer
        iid = engine.start("race", actor=RACER).id
        for _ in range(2 * checkpointer.every):
            engine.fire(iid, "bump", actor=RACER)
        kept = engine._writer._idle[0].connection.driver_connection
        assert _autocheckpoint(kept) == 0
        assert checkpointer.off and checkpointer._thread is None and checkpointer.runs == 0
    db.dispose()


def test_a_commit_stands_when_no_checkpoint_thread_can_start(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sangkien.store.writer import Checkpointer

    def refuse(self: Checkpointer) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(Checkpointer, "wake", refuse)
    monkeypatch.setattr(Checkpointer, "every", 1)
    with Engine(sqlite_url, workflows=[RACE], migrate=True) as engine:
        iid = engine.start("race", actor=RACER).id
        for n in range(1, 4):  # each fire is reported as it happened: written
            assert engine.fire(iid, "bump", actor=RACER).data["count"] == n
        assert engine.get(iid).data["count"] == 3
        assert len(engine.history(iid)) == 4


def test_an_idle_checkpoint_thread_ends_and_comes_back(sqlite_url: str) -> None:
    """A dropped or quiet Engine holds no thread; the next writes start one again."""
    with Engine(sqlite_url, workflows=[RACE], migrate=True) as engine:
        assert engine._writer is not None and engine._writer.checkpointer is not None
        checkpointer = engine._writer.checkpointer
        checkpointer.idle = 0.2
        checkpointer.every = 1
        iid = engine.start("race", actor=RACER).id
        engine.fire(iid, "bump", actor=RACER)
        first = checkpointer._thread
        assert first is not None
        first.join(timeout=10)
        assert not first.is_alive()  # ended on its own
        engine.fire(iid, "bump", actor=RACER)
        second = checkpointer._thread
        assert second is not None and second is not first and second.is_alive()
