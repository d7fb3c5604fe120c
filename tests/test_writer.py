"""Write transactions on kept connections (``sangkien.store.writer``), on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from sangkien import Actor, Engine, StoreError
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
