"""The deadline runner fires every timer exactly once, with several runners and after a crash.

Instances of tests/workflows/deadlines_load.yaml are started at a past (frozen) time, a few
minutes apart so that their timers interleave: each has two reminders, the due notice and one
escalation (four timers). Runners then tick with a clock far in the future, when all of them
are due:

- two runner PROCESSES on PostgreSQL (claims with FOR UPDATE SKIP LOCKED);
- a runner process killed with SIGKILL in the middle of a batch, then a second runner;
- two runner THREADS on one SQLite file (BEGIN IMMEDIATE serializes them).

Afterwards every timer is 'fired', each instance's history holds exactly the four expected
deadline events in order, no (instance, kind, step) is recorded twice, and the hash chains
verify. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sangkien import Actor, Engine, FrozenClock
from sangkien.store import schema as t
from sangkien.store.db import create_db_engine

LOAD = Path(__file__).resolve().parent / "workflows" / "deadlines_load.yaml"
CLERK = Actor("clerk1", ["clerk"], "u1")
START = datetime(2025, 1, 6, 3, tzinfo=UTC)  # Monday 6/1/2025
FAR = datetime(2030, 1, 1, tzinfo=UTC)
EXPECTED = ["started", "reminder", "reminder", "deadline_missed", "escalation"]
TIMERS_PER_INSTANCE = 4

# A runner process: its own Engine with a clock far in the future; ticks until no timer due
# by then is left pending (waiting while another runner holds some), then prints its totals
# as one JSON line. With a delay > 0 it prints "did <timer id>" after processing each timer
# (inside the batch's transaction, before it commits) and sleeps, to be killed mid-batch.
_RUNNER = textwrap.dedent("""
    import json, logging, os, sys, time
    from datetime import datetime
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    import sqlalchemy as sa
    from sangkien import Engine, FrozenClock, StoreError
    from sangkien import deadlines as dl
    from sangkien.store import schema as t
    url, far, limit, delay, budget = sys.argv[1:6]
    limit, delay, budget = int(limit), float(delay), float(budget)
    now = datetime.fromisoformat(far)
    engine = Engine(url, clock=FrozenClock(now), migrate=False, skip_late_reminders=False)
    if delay:
        original = dl.Runner._process
        def slow(self, conn, timer, when, result):
            outcome = original(self, conn, timer, when, result)
            proto.write(f"did {timer.id}\\n")
            time.sleep(delay)
            return outcome
        dl.Runner._process = slow
    left_q = sa.select(sa.func.count()).select_from(t.timers).where(
        t.timers.c.status == "pending", t.timers.c.fire_at <= now)
    def left():
        with engine._db.connect() as conn:
            return conn.execute(left_q).scalar_one()
    left()  # warm up the pool
    proto.write("ready\\n")
    sys.stdin.readline()  # wait for "go"
    totals = {"fired": 0, "skipped": 0, "cancelled": 0, "retried": 0, "errors": 0, "ticks": 0}
    stop = time.monotonic() + budget
    while time.monotonic() < stop:
        try:
            r = engine.tick(limit=limit)
        except StoreError as exc:
            totals["errors"] += 1
            print(f"tick failed: {exc}", file=sys.stderr, flush=True)
            continue
        totals["ticks"] += 1
        for k in ("fired", "skipped", "cancelled", "retried"):
            totals[k] += getattr(r, k)
        if r.processed == 0 and r.retried == 0:
            if left() == 0:
                break
            time.sleep(0.02)  # the rest is claimed by another runner
    totals["left"] = left()
    proto.write(json.dumps(totals) + "\\n")
    engine.close()
""")


class _Runner:
    """One runner process, driven over stdin/stdout (its logs go to a file)."""

    def __init__(
        self,
        url: str,
        log: Path,
        *,
        limit: int = 50,
        delay: float = 0.0,
        budget: float = 60.0,
    ) -> None:
        self.log = log
        self._err = log.open("w")
        self._buf = b""
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RUNNER,
                url,
                FAR.isoformat(),
                str(limit),
                str(delay),
                str(budget),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            bufsize=0,
        )
        assert self.readline(timeout=30) == "ready"

    def readline(self, timeout: float = 30.0) -> str:
        """The next line the runner wrote (read from the raw pipe: no hidden buffering)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            ready = select.select([fd], [], [], remaining)[0] if remaining > 0 else []
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(
                    f"runner gave no answer within {timeout}s; its stderr:\n{self.stderr()}"
                )
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode().strip()

    def drain(self, timeout: float) -> list[str]:
        """Wait for at least one line, then return every complete line written so far."""
        lines = [self.readline(timeout)]
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buf += chunk
        *complete, self._buf = self._buf.split(b"\n")
        return lines + [x.decode().strip() for x in complete]

    def rest(self) -> list[str]:
        """Every line left in the pipe of a runner that has exited."""
        assert self.proc.stdout is not None and self.proc.poll() is not None
        data = self._buf + self.proc.stdout.read()
        self._buf = b""
        return [x.strip() for x in data.decode().split("\n") if x.strip()]

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.log.read_text()[-3000:]

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def totals(self, timeout: float = 30.0) -> dict[str, Any]:
        """Read up to the JSON totals line (keeping any 'did' lines) and wait for the exit."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(timeout=max(0.1, deadline - time.monotonic()))
            if line.startswith("{"):
                break
            self.lines.append(line)
        self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert self.proc.returncode == 0, self.stderr()
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._err.close()


# ------------------------------------------------------------------ setup and checks


def _populate(url: str, instances: int) -> list[str]:
    """Start *instances* dl_load instances 7 minutes apart from START, in one transaction."""
    with Engine(url, workflows=[LOAD], migrate=True):
        pass  # the schema and the definition
    clock = FrozenClock(START)
    db = create_db_engine(url)
    ids = []
    try:
        with db.begin() as conn:
            inside = Engine(conn, workflows=[LOAD], clock=clock)
            for n in range(instances):
                ids.append(inside.start("dl_load", actor=CLERK, data={"n": n}).id)
                clock.advance(minutes=7)
    finally:
        db.dispose()
    return ids


def _timer_statuses(url: str) -> Counter[str]:
    db = sa.create_engine(url)
    try:
        with db.connect() as conn:
            rows = conn.execute(
                sa.select(t.timers.c.status, sa.func.count()).group_by(t.timers.c.status)
            ).all()
    finally:
        db.dispose()
    return Counter({status: n for status, n in rows})


def _check_exactly_once(url: str, ids: list[str], *, ordered: bool) -> None:
    """Every timer fired once; each instance has exactly the expected events, none twice.

    *ordered* also requires each instance's events in fire order. Two PostgreSQL runners do
    not guarantee that (see test_runners_record_an_instances_events_in_fire_order), so the
    PostgreSQL tests compare the events per instance as a multiset.
    """
    total = len(ids) * TIMERS_PER_INSTANCE
    assert _timer_statuses(url) == Counter({"fired": total})
    db = sa.create_engine(url)
    try:
        with db.connect() as conn:
            rows = conn.execute(
                sa.select(
                    t.events.c.instance_id, t.events.c.seq, t.events.c.kind, t.events.c.detail
                ).order_by(t.events.c.instance_id, t.events.c.seq)
            ).all()
            unfired = conn.execute(
                sa.select(sa.func.count())
                .select_from(t.timers)
                .where(sa.or_(t.timers.c.fired_at.is_(None), t.timers.c.fired_at != FAR))
            ).scalar_one()
            done = conn.execute(
                sa.select(t.deadlines.c.escalations_done, sa.func.count()).group_by(
                    t.deadlines.c.escalations_done
                )
            ).all()
    finally:
        db.dispose()
    assert unfired == 0
    assert dict(done) == {1: len(ids)}
    by_instance: dict[str, list[str]] = {}
    keys: Counter[tuple[str, str, int]] = Counter()
    for r in rows:
        by_instance.setdefault(r.instance_id, []).append(r.kind)
        if r.detail is not None:
            keys[(r.instance_id, r.kind, r.detail["step"])] += 1
    assert set(by_instance) == set(ids)
    if ordered:
        wrong = {i: k for i, k in by_instance.items() if k != EXPECTED}
    else:
        wrong = {
            i: k
            for i, k in by_instance.items()
            if k[0] != "started" or Counter(k) != Counter(EXPECTED)
        }
    assert wrong == {}, f"{len(wrong)} unexpected histories, e.g. {next(iter(wrong.items()))}"
    dupes = [k for k, n in keys.items() if n > 1]
    assert dupes == []
    assert len(keys) == total
    with Engine(url) as engine:
        assert engine.verify() == []


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# ------------------------------------------------------------------ tests


@pytest.mark.postgresql
def test_two_runner_processes_fire_every_timer_exactly_once(pg_url: str, tmp_path: Path) -> None:
    """Two runner processes over ~2,000 due timers on 500 instances: each fires exactly once."""
    ids = _populate(pg_url, 500)
    assert _timer_statuses(pg_url) == Counter({"pending": 2000})
    # an odd batch size puts batch boundaries between an instance's due and escalation timers
    runners = [_Runner(pg_url, tmp_path / f"runner{n}.log", limit=49) for n in (1, 2)]
    try:
        started = time.monotonic()
        for r in runners:
            r.go()
        totals = [r.totals(timeout=60) for r in runners]
        elapsed = time.monotonic() - started
    finally:
        for r in runners:
            r.close()
    assert [x["left"] for x in totals] == [0, 0]
    assert [x["errors"] for x in totals] == [0, 0], [r.stderr() for r in runners]
    # every timer processed (and committed) once, by one runner or the other
    assert sum(x["fired"] for x in totals) == 2000
    assert sum(x["skipped"] + x["cancelled"] for x in totals) == 0
    assert all(x["fired"] > 0 for x in totals), f"one runner did all the work: {totals}"
    _check_exactly_once(pg_url, ids, ordered=False)
    print(f"2 runners, 2000 timers: {elapsed:.2f}s, {totals}")


@pytest.mark.postgresql
def test_runner_killed_mid_batch_loses_nothing_and_repeats_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    """A runner SIGKILLed mid-batch rolls back that batch; a second runner finishes exactly once."""
    ids = _populate(pg_url, 100)
    slow = _Runner(pg_url, tmp_path / "slow.log", limit=20, delay=0.02)
    processed: list[int] = []
    probe = sa.create_engine(pg_url)
    try:
        slow.go()
        _wait_for(lambda: _timer_statuses(pg_url)["fired"] >= 40, 60, "the slow runner to commit")
        # kill it right after it processed a timer whose batch has not committed yet (the
        # latest timer it reported, so that reading never lags behind)
        deadline = time.monotonic() + 60
        while True:
            if time.monotonic() > deadline:
                raise AssertionError("timed out after 60s waiting for an uncommitted timer")
            lines = slow.drain(timeout=max(0.1, deadline - time.monotonic()))
            did = [int(x.split()[1]) for x in lines if x.startswith("did ")]
            processed += did
            if did and _uncommitted(probe, did[-1:]):
                os.kill(slow.proc.pid, signal.SIGKILL)
                break
        slow.proc.wait(timeout=10)
        assert slow.proc.returncode == -signal.SIGKILL
        processed += [int(x.split()[1]) for x in slow.rest() if x.startswith("did ")]
    finally:
        slow.close()
    # the server notices the dead client and rolls its open transaction back
    _wait_for(
        lambda: sum(_timer_statuses(pg_url).values()) == 400 and _locks_free(pg_url),
        30,
        "the killed runner's transaction to be rolled back",
    )
    statuses = _timer_statuses(pg_url)
    committed = statuses["fired"]
    assert 40 <= committed < 400
    assert statuses == Counter({"fired": committed, "pending": 400 - committed})
    lost = _uncommitted(probe, processed)
    probe.dispose()
    assert lost, "the runner was not killed in the middle of a batch"
    assert _events_for_timers(pg_url, lost) == 0  # nothing of the lost batch is in history

    finisher = _Runner(pg_url, tmp_path / "finisher.log", limit=50)
    try:
        finisher.go()
        totals = finisher.totals(timeout=60)
    finally:
        finisher.close()
    assert totals["left"] == 0 and totals["errors"] == 0
    assert totals["fired"] == 400 - committed
    _check_exactly_once(pg_url, ids, ordered=True)


def test_two_runner_threads_on_sqlite_fire_every_timer_exactly_once(sqlite_url: str) -> None:
    """Two runner threads on one SQLite file: every timer fires exactly once."""
    ids = _populate(sqlite_url, 150)
    clock = FrozenClock(FAR)
    barrier = threading.Barrier(2)
    totals: list[Counter[str]] = [Counter(), Counter()]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            with Engine(sqlite_url, clock=clock, skip_late_reminders=False) as engine:
                barrier.wait(timeout=10)
                stop = time.monotonic() + 60
                while time.monotonic() < stop:
                    r = engine.tick(limit=25)
                    totals[n].update(
                        fired=r.fired, skipped=r.skipped, cancelled=r.cancelled, retried=r.retried
                    )
                    if r.processed == 0 and r.retried == 0:
                        break
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads), "a runner thread did not finish"
    assert errors == []
    assert sum(c["fired"] for c in totals) == len(ids) * TIMERS_PER_INSTANCE
    assert sum(c["skipped"] + c["cancelled"] for c in totals) == 0
    _check_exactly_once(sqlite_url, ids, ordered=True)


# ------------------------------------------------------------------ engine bugs (pinned)
#
# The PostgreSQL runner claims TIMERS (FOR UPDATE SKIP LOCKED) and then takes each timer's
# INSTANCE row lock as it processes it, holding every lock until the batch commits. Two
# runners whose batches hold timers of the same instances therefore (1) can take instance
# locks in opposite orders and deadlock, and (2) can record a later timer of an instance
# before an earlier one. The two tests below build each case deterministically with two
# in-process runners (threads) paused at a chosen point.


def _leave_pending(url: str, ids: list[str], keep: set[tuple[int, str, int]]) -> None:
    """Cancel every timer except *keep* = {(instance index, kind, step)}."""
    db = sa.create_engine(url)
    try:
        with db.begin() as conn:
            for n, iid in enumerate(ids):
                for kind, step in (("remind", 0), ("remind", 1), ("due", 0), ("escalate", 0)):
                    if (n, kind, step) in keep:
                        continue
                    conn.execute(
                        t.timers.update()
                        .where(
                            t.timers.c.instance_id == iid,
                            t.timers.c.kind == kind,
                            t.timers.c.step == step,
                        )
                        .values(status="cancelled", note="not part of this test")
                    )
    finally:
        db.dispose()


def _pause_after_first_timer(engine: Engine, hook: Any) -> None:
    """Make *engine*'s runner call *hook* right after it processed its first timer."""
    runner = engine._runner
    original = runner._process
    calls = [0]

    def process(conn: Any, timer: Any, now: Any, result: Any) -> Any:
        outcome = original(conn, timer, now, result)
        calls[0] += 1
        if calls[0] == 1:
            hook()
        return outcome

    runner._process = process  # type: ignore[method-assign]


def _two_runners(url: str, limit_a: int, limit_b: int) -> list[BaseException]:
    """Runner A processes one timer, then waits (at most 5 s) for runner B to process one."""
    a_first, b_first = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    a = Engine(url, clock=FrozenClock(FAR), skip_late_reminders=False)
    b = Engine(url, clock=FrozenClock(FAR), skip_late_reminders=False)

    def first_of_a() -> None:
        a_first.set()
        b_first.wait(5)

    _pause_after_first_timer(a, first_of_a)
    _pause_after_first_timer(b, b_first.set)

    def run_a() -> None:
        try:
            a.tick(limit=limit_a)
        except BaseException as exc:
            errors.append(exc)

    def run_b() -> None:
        try:
            assert a_first.wait(10), "runner A never processed a timer"
            b.tick(limit=limit_b)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        assert not any(th.is_alive() for th in threads), "a runner thread hung"
    finally:
        a.close()
        b.close()
    return errors


def _finish(url: str) -> None:
    with Engine(url, clock=FrozenClock(FAR), skip_late_reminders=False) as engine:
        engine.tick()


@pytest.mark.postgresql
def test_two_runners_meeting_on_two_instances_do_not_deadlock(pg_url: str) -> None:
    """Runners whose batches share two instances in crossed order both complete, no deadlock."""
    ids = _populate(pg_url, 2)  # J = ids[0], K = ids[1]: the same four fire times each
    # claim order: J remind 0, K remind 0 | K remind 1, J due  (batches of 2)
    _leave_pending(
        pg_url, ids, {(0, "remind", 0), (1, "remind", 0), (1, "remind", 1), (0, "due", 0)}
    )
    errors = _two_runners(pg_url, 2, 2)
    # whatever happened, nothing is lost and nothing fired twice
    _finish(pg_url)
    assert _timer_statuses(pg_url) == Counter({"fired": 4, "cancelled": 4})
    with Engine(pg_url) as engine:
        # as a multiset: the order is the other bug's business
        assert sorted(e.kind for e in engine.history(ids[0])) == [
            "deadline_missed",
            "reminder",
            "started",
        ]
        assert sorted(e.kind for e in engine.history(ids[1])) == ["reminder", "reminder", "started"]
        assert engine.verify() == []
    for exc in errors:
        raise exc  # StoreError: database error: deadlock detected


@pytest.mark.postgresql
def test_runners_record_an_instances_events_in_fire_order(pg_url: str) -> None:
    """An instance's due notice is recorded before its escalation, whichever runner fires them."""
    ids = _populate(pg_url, 2)
    # claim order: J remind 0, K due | K escalate 0  (K's due and escalation fire together)
    _leave_pending(pg_url, ids, {(0, "remind", 0), (1, "due", 0), (1, "escalate", 0)})
    errors = _two_runners(pg_url, 2, 5)
    assert errors == []
    _finish(pg_url)
    assert _timer_statuses(pg_url) == Counter({"fired": 3, "cancelled": 5})
    with Engine(pg_url) as engine:
        assert engine.verify() == []
        kinds = [e.kind for e in engine.history(ids[1])]
    assert sorted(kinds) == ["deadline_missed", "escalation", "started"]  # exactly once
    assert kinds == ["started", "deadline_missed", "escalation"]


# ------------------------------------------------------------------ helpers for the kill test


def _locks_free(url: str) -> bool:
    """No other session of this database is still inside a transaction."""
    db = sa.create_engine(url)
    try:
        with db.connect() as conn:
            n = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND starts_with(state, 'idle in transaction')"
            ).scalar_one()
    finally:
        db.dispose()
    return n == 0


def _uncommitted(db: sa.Engine, timer_ids: list[int]) -> list[int]:
    """Those of *timer_ids* still pending (processed by the killed runner, never committed)."""
    if not timer_ids:
        return []
    with db.connect() as conn:
        return [
            r.id
            for r in conn.execute(
                sa.select(t.timers.c.id).where(
                    t.timers.c.id.in_(timer_ids), t.timers.c.status == "pending"
                )
            )
        ]


def _events_for_timers(url: str, timer_ids: list[int]) -> int:
    """How many history events record one of *timer_ids* (same instance, kind and step)."""
    names = {"remind": "reminder", "due": "deadline_missed", "escalate": "escalation"}
    db = sa.create_engine(url)
    found = 0
    try:
        with db.connect() as conn:
            rows = conn.execute(
                sa.select(t.timers.c.instance_id, t.timers.c.kind, t.timers.c.step).where(
                    t.timers.c.id.in_(timer_ids)
                )
            ).all()
            for r in rows:
                events = conn.execute(
                    sa.select(t.events.c.detail).where(
                        t.events.c.instance_id == r.instance_id,
                        t.events.c.kind == names[r.kind],
                    )
                ).all()
                found += sum(1 for e in events if e.detail and e.detail["step"] == r.step)
    finally:
        db.dispose()
    return found
