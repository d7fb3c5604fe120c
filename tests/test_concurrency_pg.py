"""Concurrent writers never lose an update.

On PostgreSQL, two separate processes fire at one instance at the same moment: the row is
read FOR UPDATE, so the second waits for the first and then checks its trigger against the
state the first left; a client that names the version it read (``expected_version``, the
API's ``If-Match``) gets a ConcurrencyConflict instead once another writer moved it. On
SQLite, threads queue on BEGIN IMMEDIATE and every fire is recorded.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from sangkien import Actor, Engine

RACE = Path(__file__).resolve().parent / "workflows" / "race.yaml"
RACER = Actor("ref", ["racer"], "lab")
ROUNDS = 20

# A worker process: builds its own Engine, then fires one trigger per line read from stdin
# and answers one JSON line. stdout is kept for the protocol; anything else goes to stderr.
_WORKER = textwrap.dedent("""
    import json, os, sys
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from sangkien import Actor, ConcurrencyConflict, Engine, TransitionNotAllowed
    url, iid, name = sys.argv[1:4]
    engine = Engine(url, migrate=False)
    actor = Actor(name, ["racer"], "lab")
    engine.get(iid)  # warm up: connection pool and definition cache
    proto.write("ready\\n")
    for line in iter(sys.stdin.readline, ""):
        trigger = line.strip()
        if trigger == "quit":
            break
        if trigger == "read":
            proto.write(json.dumps({"version": engine.get(iid).version}) + "\\n")
            continue
        trigger, _, expected = trigger.partition("@")
        try:
            inst = engine.fire(
                iid, trigger, actor=actor, expected_version=int(expected) if expected else None
            )
            out = {"ok": True, "version": inst.version, "state": inst.state}
        except ConcurrencyConflict as exc:
            out = {"ok": False, "error": "conflict", "state": exc.current_state}
        except TransitionNotAllowed as exc:
            out = {"ok": False, "error": "refused", "reasons": exc.reasons}
        proto.write(json.dumps(out) + "\\n")
    engine.close()
""")


class _Worker:
    """One racing process, driven line by line over its stdin/stdout."""

    def __init__(self, url: str, iid: str, name: str, log: Path) -> None:
        self.log = log
        self._err = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, iid, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            bufsize=1,
        )
        assert self._readline() == "ready"

    def _readline(self, timeout: float = 20.0) -> str:
        out: TextIO = self.proc.stdout  # type: ignore[assignment]
        ready, _, _ = select.select([out], [], [], timeout)
        line = out.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(
                f"worker gave no answer; its stderr:\n{self.log.read_text()[-3000:]}"
            )
        return line.strip()

    def send(self, trigger: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(trigger + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._readline())
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._err.close()


@pytest.fixture
def race(pg_url: str, tmp_path: Path) -> Iterator[tuple[Engine, str, list[_Worker]]]:
    """A migrated PostgreSQL schema with one 'race' instance and two worker processes on it."""
    engine = Engine(pg_url, workflows=[RACE], migrate=True)
    iid = engine.start("race", actor=RACER).id
    workers: list[_Worker] = []
    try:
        for name in ("west", "east"):
            workers.append(_Worker(pg_url, iid, name, tmp_path / f"{name}.log"))
        yield engine, iid, workers
    finally:
        for w in workers:
            w.close()
        engine.close()


def _together(workers: list[_Worker], triggers: list[str]) -> list[dict[str, Any]]:
    """Send each worker its trigger back to back (they wake together), then collect answers."""
    for w, trig in zip(workers, triggers, strict=True):
        w.send(trig)
    return [w.answer() for w in workers]


@pytest.mark.postgresql
@pytest.mark.slow
def test_two_processes_racing_conflicting_triggers_one_wins_each_round(
    race: tuple[Engine, str, list[_Worker]],
) -> None:
    """Two processes fire go_left/go_right at once: exactly one wins per round, nothing is lost."""
    engine, iid, workers = race
    fires = 0
    outcomes: Counter[str] = Counter()
    for _ in range(ROUNDS):
        answers = _together(workers, ["go_left", "go_right"])
        wins = [a for a in answers if a["ok"]]
        losses = [a for a in answers if not a["ok"]]
        assert len(wins) == 1, answers
        outcomes.update(a["error"] for a in losses)
        for loss in losses:
            if loss["error"] == "conflict":
                assert loss["state"] == wins[0]["state"]
            else:
                assert "cannot be fired from state" in loss["reasons"][0]
        state = engine.get(iid)
        assert (state.state, state.version) == (wins[0]["state"], wins[0]["version"])
        fires += 1
        engine.fire(iid, "reset", actor=RACER)
        fires += 1
    final = engine.get(iid)
    assert final.state == "idle"
    assert final.version == 1 + fires
    events = engine.history(iid)
    assert [e.seq for e in events] == list(range(1, final.version + 1))
    assert sum(e.trigger in ("go_left", "go_right") for e in events) == ROUNDS
    assert engine.verify() == []
    assert sum(outcomes.values()) == ROUNDS


@pytest.mark.postgresql
@pytest.mark.slow
def test_two_processes_incrementing_a_counter_lose_no_update(
    race: tuple[Engine, str, list[_Worker]],
) -> None:
    """Two processes bump a counter at once: the count equals the successful fires exactly.

    Half the rounds fire as they are (the second waits on the row and both count); half name
    the version both read first, as an API client with If-Match does (exactly one wins, the
    other is told of the conflict).
    """
    engine, iid, workers = race
    successes = 0
    conflicts = 0
    for n in range(ROUNDS):
        if n % 2:
            versions = set()
            for w in workers:
                w.send("read")
                versions.add(w.answer()["version"])
            assert len(versions) == 1
            seen = versions.pop()
            answers = _together(workers, [f"bump@{seen}", f"bump@{seen}"])
            assert sorted(a["ok"] for a in answers) == [False, True], answers
        else:
            answers = _together(workers, ["bump", "bump"])
            assert all(a["ok"] for a in answers), answers
        won = [a["version"] for a in answers if a["ok"]]
        assert len(set(won)) == len(won)
        successes += len(won)
        conflicts += len(answers) - len(won)
    final = engine.get(iid)
    assert final.data["count"] == successes
    assert final.version == 1 + successes
    events = engine.history(iid)
    assert len(events) == final.version
    assert [e.seq for e in events] == list(range(1, successes + 2))
    assert engine.verify() == []
    assert successes + conflicts == 2 * ROUNDS
    assert conflicts == ROUNDS // 2


def test_threads_firing_stay_transitions_on_sqlite_record_every_success(sqlite_url: str) -> None:
    """8 threads bumping one SQLite instance: versions are contiguous and no fire is lost."""
    threads_n, per_thread = 8, 15
    with Engine(sqlite_url, workflows=[RACE], migrate=True) as engine:
        iid = engine.start("race", actor=RACER).id
        barrier = threading.Barrier(threads_n)
        versions: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def run(n: int) -> None:
            actor = Actor(f"t{n}", ["racer"], "lab")
            barrier.wait()
            for _ in range(per_thread):
                try:
                    v = engine.fire(iid, "bump", actor=actor).version
                except Exception as exc:  # pragma: no cover - reported by the assertion below
                    with lock:
                        errors.append(exc)
                    continue
                with lock:
                    versions.append(v)

        pool = [threading.Thread(target=run, args=(n,)) for n in range(threads_n)]
        for th in pool:
            th.start()
        for th in pool:
            th.join(timeout=60)
        assert not any(th.is_alive() for th in pool)
        assert errors == []  # writers queue on BEGIN IMMEDIATE instead of failing
        n = len(versions)
        assert n == threads_n * per_thread
        assert sorted(versions) == list(range(2, n + 2))
        final = engine.get(iid)
        assert final.version == n + 1
        assert final.data["count"] == n
        events = engine.history(iid)
        assert len(events) == n + 1
        assert [e.seq for e in events] == list(range(1, n + 2))
        assert Counter(e.actor_id for e in events[1:]) == {
            f"t{i}": per_thread for i in range(threads_n)
        }
        assert engine.verify() == []
