"""The transition hot path (``sangkien.store.fast``) stays in step with the schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import sqlalchemy as sa

from sangkien import Actor, Engine
from sangkien.runtime import _Row
from sangkien.store import schema as t
from sangkien.store.fast import _EVENT_COLUMNS, _INSTANCE_COLUMNS

RACE = Path(__file__).resolve().parent / "workflows" / "race.yaml"
RACER = Actor("ref", ["racer"], "lab")


def test_hot_path_columns_are_the_tables_columns() -> None:
    assert set(_INSTANCE_COLUMNS) == {c.name for c in t.instances.columns}
    assert set(_EVENT_COLUMNS) == {c.name for c in t.events.columns} - {"id"}
    # load() builds the row positionally: the row type lists the columns in the same order
    names = [f.name for f in dataclasses.fields(_Row)]
    assert names == [*_INSTANCE_COLUMNS, "data_text"]


def test_data_left_alone_is_written_back_as_it_was_read(db_url: str) -> None:
    """A transition that changes no field writes the stored JSON back byte for byte."""
    with Engine(db_url, workflows=[RACE], migrate=True) as engine:
        iid = engine.start("race", actor=RACER).id
        stored = '{"count": 5,   "zz": null}'  # not how sangkien would encode it
        with engine.db.begin() as conn:
            conn.execute(
                sa.text("UPDATE sk_instances SET data = :d WHERE id = :id"),
                {"d": stored, "id": iid},
            )

        def text() -> str:
            with engine.db.connect() as conn:
                return str(
                    conn.execute(
                        sa.text("SELECT CAST(data AS TEXT) FROM sk_instances WHERE id = :id"),
                        {"id": iid},
                    ).scalar_one()
                )

        before = text()
        assert engine.fire(iid, "go_left", actor=RACER).data["count"] == 5
        if db_url.startswith("sqlite"):  # PostgreSQL's jsonb is decoded by the driver
            assert text() == before == stored
        assert engine.fire(iid, "bump", actor=RACER).data["count"] == 6  # changed: re-encoded
        assert '"count": 6' in text() or '"count":6' in text()
        assert engine.get(iid).data == {"count": 6, "zz": None}
        # the edit made behind the engine's back is still reported (count was never 5)
        assert [b.reason for b in engine.verify()] == [
            "instance data differs from what its history records"
        ]
