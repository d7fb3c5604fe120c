"""The same five-step lifecycle, persisted per step, in sangkien and two peers on one SQLite file.

* sangkien: ``Engine.fire`` for submit → review → score → decide → recognize; every step
  appends a hash-chained history event. Twice: with a deadline and a reminder on the second
  state (entering and leaving it writes and cancels timers), and without.
* SpiffWorkflow: a BPMN process of five user tasks; per step the host reads the stored
  JSON, deserializes the workflow, completes the ready task, runs the engine steps,
  serializes it and writes it back under an optimistic-lock version — what a host persisting
  Spiff workflows must do. Twice, like sangkien: with the deadline as two non-interrupting
  timer events on the task that state waits for (``bench/data/lifecycle_deadline.bpmn``),
  and without (``bench/data/lifecycle.bpmn``, about 8 KB of JSON per instance).
* transitions: a ``Machine`` built per instance and step (the usual way to use it with
  stored objects); per step the host reads the state, builds the machine on a model, fires
  the trigger and writes the state and one history row.

Every step is one ``BEGIN IMMEDIATE`` transaction on the same SQLite database (WAL).
Creating the instances is not timed. Systems alternate within each round.

    python bench/bench_peers.py [--quick]
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from common import (
    HERE,
    LIFECYCLE_STEPS,
    Section,
    Series,
    actor,
    migrated_engine,
    quiet,
    sqlite_path,
    sqlite_url,
)

BPMN = HERE / "data" / "lifecycle.bpmn"
BPMN_DEADLINE = HERE / "data" / "lifecycle_deadline.bpmn"
STATES = ["draft", "submitted", "reviewing", "scored", "decided", "recognized"]
PEER_TABLES = """
CREATE TABLE IF NOT EXISTS spiff_instances (
  id INTEGER PRIMARY KEY, version INTEGER NOT NULL, workflow_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tr_instances (
  id INTEGER PRIMARY KEY, version INTEGER NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tr_events (
  id INTEGER PRIMARY KEY, instance_id INTEGER NOT NULL, trigger TEXT NOT NULL,
  from_state TEXT NOT NULL, to_state TEXT NOT NULL, actor TEXT NOT NULL, at TEXT NOT NULL);
"""


def _connect(url: str) -> sqlite3.Connection:
    con = sqlite3.connect(sqlite_path(url), isolation_level=None, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("PRAGMA busy_timeout=30000")
    return con


class Spiff:
    """SpiffWorkflow, stored as its serializer's JSON, one row per workflow."""

    def __init__(self, url: str, *, deadline: bool) -> None:
        from SpiffWorkflow.bpmn import BpmnWorkflow
        from SpiffWorkflow.bpmn.parser import BpmnParser
        from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
        from SpiffWorkflow.util.task import TaskState

        self.name = f"SpiffWorkflow, {_variant(deadline)}"
        parser = BpmnParser()
        parser.add_bpmn_file(str(BPMN_DEADLINE if deadline else BPMN))
        self.spec = parser.get_spec("lifecycle")
        self.serializer = BpmnWorkflowSerializer()
        self.workflow_cls = BpmnWorkflow
        self.ready = TaskState.READY
        self.con = _connect(url)
        self.con.executescript(PEER_TABLES)

    def create(self, n: int) -> list[int]:
        out = []
        self.con.execute("BEGIN IMMEDIATE")
        for _ in range(n):
            wf = self.workflow_cls(self.spec)
            wf.do_engine_steps()
            cur = self.con.execute(
                "INSERT INTO spiff_instances (version, workflow_json) VALUES (1, ?)",
                (self.serializer.serialize_json(wf),),
            )
            out.append(int(cur.lastrowid or 0))
        self.con.execute("COMMIT")
        return out

    def step(self, iid: int, step: str) -> None:
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            version, stored = con.execute(
                "SELECT version, workflow_json FROM spiff_instances WHERE id = ?", (iid,)
            ).fetchone()
            wf = self.serializer.deserialize_json(stored)
            task = next(
                t for t in wf.get_tasks(state=self.ready, manual=True) if t.task_spec.name == step
            )
            task.data["actor"] = "bench.clerk"
            task.run()
            wf.do_engine_steps()
            cur = con.execute(
                "UPDATE spiff_instances SET workflow_json = ?, version = ?"
                " WHERE id = ? AND version = ?",
                (self.serializer.serialize_json(wf), version + 1, iid, version),
            )
            assert cur.rowcount == 1
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.con.close()


class _Model:
    def __init__(self, state: str) -> None:
        self.state = state


class Transitions:
    """transitions: a Machine built per instance and step, state and history in two tables."""

    name = "transitions (Machine per instance)"

    def __init__(self, url: str) -> None:
        from transitions import Machine

        self.machine_cls = Machine
        self.transitions = [
            {"trigger": trig, "source": STATES[i], "dest": STATES[i + 1]}
            for i, trig in enumerate(LIFECYCLE_STEPS)
        ]
        self.con = _connect(url)
        self.con.executescript(PEER_TABLES)
        self.next_id = 1

    def create(self, n: int) -> list[int]:
        out = list(range(self.next_id, self.next_id + n))
        self.con.execute("BEGIN IMMEDIATE")
        self.con.executemany(
            "INSERT INTO tr_instances (id, version, state) VALUES (?, 1, 'draft')",
            [(i,) for i in out],
        )
        self.con.execute("COMMIT")
        self.next_id += n
        return out

    def step(self, iid: int, step: str) -> None:
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            version, state = con.execute(
                "SELECT version, state FROM tr_instances WHERE id = ?", (iid,)
            ).fetchone()
            model = _Model(state)
            self.machine_cls(
                model=model,
                states=STATES,
                transitions=self.transitions,
                initial=state,
                auto_transitions=False,
            )
            getattr(model, step)()
            cur = con.execute(
                "UPDATE tr_instances SET state = ?, version = ? WHERE id = ? AND version = ?",
                (model.state, version + 1, iid, version),
            )
            assert cur.rowcount == 1
            con.execute(
                "INSERT INTO tr_events (instance_id, trigger, from_state, to_state, actor, at)"
                " VALUES (?, ?, ?, ?, 'bench.clerk', ?)",
                (iid, step, state, model.state, datetime.now(UTC).isoformat()),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.con.close()


def _variant(deadline: bool) -> str:
    return "with the deadline" if deadline else "no deadline"


class Sangkien:
    def __init__(self, url: str, *, deadline: bool) -> None:
        self.name = self.label(deadline)
        self.workflow = "lifecycle" if deadline else "lifecycle_plain"
        self.engine = migrated_engine(url)
        self.actor = actor()

    def create(self, n: int) -> list[Any]:
        return [
            self.engine.start(self.workflow, actor=self.actor, data={"title": "x"}).id
            for _ in range(n)
        ]

    @staticmethod
    def label(deadline: bool) -> str:
        return f"sangkien (Engine.fire), {_variant(deadline)}"

    def step(self, iid: Any, step: str) -> None:
        self.engine.fire(iid, step, actor=self.actor)

    def close(self) -> None:
        self.engine.close()


def measure(url: str, n: int, rounds: int) -> dict[str, Series]:
    systems = [
        Sangkien(url, deadline=True),
        Spiff(url, deadline=True),
        Sangkien(url, deadline=False),
        Spiff(url, deadline=False),
        Transitions(url),
    ]
    out = {s.name: Series() for s in systems}
    try:
        for s in systems:  # warm up
            for iid in s.create(5):
                for step in LIFECYCLE_STEPS:
                    s.step(iid, step)
        for r in range(rounds):
            order = systems if r % 2 == 0 else list(reversed(systems))
            for s in order:
                made = s.create(n)
                out[s.name].add(_time_steps(s.step, made) / (n * len(LIFECYCLE_STEPS)))
    finally:
        for s in systems:
            s.close()
    return out


def _time_steps(step: Callable[[Any, str], None], made: list[Any]) -> float:
    started = time.perf_counter()
    for name in LIFECYCLE_STEPS:
        for iid in made:
            step(iid, name)
    return time.perf_counter() - started


def run(*, quick: bool = False) -> Section:
    n, rounds = (60, 3) if quick else (300, 5)
    with sqlite_url() as url:
        res = measure(url, n, rounds)
    sec = Section(
        "Peers: the five-step lifecycle persisted per step (SQLite)",
        f"Milliseconds per step (median of {rounds} rounds of {n} instances × 5 steps, min–max) "
        "and how many times faster sangkien is per step than each system, against sangkien "
        "running the same variant (the transitions peer keeps no timers: it is compared with "
        "sangkien without the deadline). All persist every step in its own transaction in the "
        "same SQLite database. *With the deadline*: the second state has a deadline after 10 "
        "days and a reminder a day before (sangkien writes two timers on entering it and "
        "cancels them on leaving; SpiffWorkflow carries two non-interrupting timer events on "
        "the task that state waits for). The last column compares across variants: sangkien "
        "with the deadline against each system without one.",
    )
    sk = {True: res[Sangkien.label(True)], False: res[Sangkien.label(False)]}
    rows = []
    for name, s in res.items():
        same = sk["with the deadline" in name]
        rows.append(
            [
                name,
                f"{s.median * 1e3:.3f}",
                f"{s.lo * 1e3:.3f}–{s.hi * 1e3:.3f}",
                f"{1 / s.median:,.0f}",
                f"{s.median / same.median:.2f}",
                f"{s.median / sk[True].median:.2f}",
            ]
        )
    sec.table(
        [
            "system",
            "ms per step",
            "min–max",
            "steps/s",
            "its time / sangkien's (same variant)",
            "its time / sangkien's with the deadline",
        ],
        rows,
    )
    for deadline in (True, False):
        speed = res[f"SpiffWorkflow, {_variant(deadline)}"].median / sk[deadline].median
        sec.target(
            f"sangkien vs SpiffWorkflow per step, {_variant(deadline)} on either side",
            "≥ 5× faster",
            f"{speed:.2f}×",
            speed >= 5,
            f"{(speed / 5 - 1) * 100:+.0f} % vs goal",
        )
    sec.data = {k: v.values for k, v in res.items()}
    return sec


def main() -> None:
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    print(run(quick=args.quick).markdown())


if __name__ == "__main__":
    main()
