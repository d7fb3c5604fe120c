"""Faults, with real processes: races, killed workers, lost connections, read-only and full disks.

* 8 processes fire conflicting triggers at the same 100 instances on PostgreSQL: no update is
  lost, every chain verifies, every refusal says why.
* `sangkien worker` processes (the real command line) share 1,200 due timers while one is
  SIGKILLed mid-batch: every timer fires exactly once. The same with 1,000 outbox rows (log
  channel and a local Standard Webhooks receiver): every message is delivered, the dead
  worker's leases are taken over.
* The engine's PostgreSQL connections are terminated (pg_terminate_backend, selected by the
  application_name set in the URL) while a worker runs: it reconnects and loses nothing. The
  real server is never restarted; other tests share it.
* A SQLite file opened read-only (``file:…?mode=ro``) and a database that cannot grow
  (``PRAGMA max_page_count``) raise a StoreError that says so; the CLI prints one line, exit 1.

Every wait is bounded; each test takes well under 30 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pg_helpers import terminate, with_app
from sqlalchemy import event
from structlog.testing import capture_logs

from sangkien import Actor, Engine, FrozenClock, StoreError
from sangkien.config.settings import Subscriber
from sangkien.store import schema as t
from sangkien.testing import WebhookReceiver

HERE = Path(__file__).resolve().parent
RACE = HERE / "workflows" / "race.yaml"
EVENTS = HERE / "workflows" / "notify_events.yaml"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RACER = Actor("racer.0", ["racer"], "u")
CLERK = Actor("nguyen.van.an", ["clerk"], "phong-qlkh")

# Three timers per instance (two reminders and the due notice), each notifying the author.
TIMERS_YAML = """
workflow: fault_timers
version: 1
title: Fault timers
roles: [clerk]
fields:
  title: {type: string}
start:
  roles: [clerk]
states:
  waiting:
    initial: true
    deadline:
      after: 10 days
      remind: [3 days, 1 day]
      notify: [author]
  done: {final: true}
transitions:
  - {trigger: finish, from: waiting, to: done, roles: [clerk]}
"""


# ---------------------------------------------------------------------- helpers


# Bounds for waits, generous: under the parallel suite on a busy 2-core machine the
# deliveries after a SIGKILL took 20 s where they take 6 s alone. Passing runs never wait
# them out; a failing one still ends.
START = 60.0  # for workers to get going
FINISH = 90.0  # for the survivors to finish the work


def _wait(
    predicate: Callable[[], bool],
    timeout: float,
    what: str | Callable[[], str],
    step: float = 0.1,
) -> None:
    """Poll *predicate* until true; else fail naming *what* (a callable: read at the end)."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(
        f"timed out after {timeout:g}s waiting for {what() if callable(what) else what}"
    )


class CliWorker:
    """`python -m sangkien worker` in a subprocess; its JSON log lines collected by a thread."""

    def __init__(self, url: str, *, env: dict[str, str] | None = None, batch: int = 200) -> None:
        full_env = {
            **os.environ,
            "SANGKIEN_DATABASE_URL": url,
            "SANGKIEN_LOG_FORMAT": "json",
            "SANGKIEN_LOG_LEVEL": "INFO",
            "SANGKIEN_SKIP_LATE_REMINDERS": "false",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sangkien",
                "worker",
                "--interval",
                "0.2",
                "--batch",
                str(batch),
            ],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.unparsed: list[str] = []  # lines that are not one JSON object
        self.killed = False
        self.lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:  # every line is one JSON object, libraries' warnings included
                ev = json.loads(line)
            except ValueError:
                ev = None
            with self.lock:
                self.raw.append(line)
                if isinstance(ev, dict):
                    self.events.append(ev)
                else:
                    self.unparsed.append(line)

    def count(self, name: str, **match: Any) -> int:
        with self.lock:
            return sum(
                1
                for e in self.events
                if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
            )

    def values(self, name: str, key: str) -> list[Any]:
        with self.lock:
            return [e.get(key) for e in self.events if e.get("event") == name]

    def kill(self) -> None:
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL
        self._reader.join(timeout=5)

    def stop(self) -> int:
        """SIGTERM, then wait: a worker finishes its pass and exits 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            code = -9
        self._reader.join(timeout=5)
        return code

    def log_tail(self) -> str:
        with self.lock:
            return "".join(self.raw[-20:])


@pytest.fixture
def cli_workers() -> Iterator[list[CliWorker]]:
    """Worker processes started by a test; whatever is still running is stopped after it."""
    started: list[CliWorker] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(timeout=10)
    for w in started:
        w._reader.join(timeout=5)
        with w.lock:
            # a log collector can parse every line; only a SIGKILL may cut the last one short
            cut = w.raw[-1:] if w.killed else []
            assert [line for line in w.unparsed if line not in cut] == [], w.unparsed[:3]


def _timer_population(url: str, tmp_path: Path, instances: int) -> Path:
    """*instances* of fault_timers started 30 days ago: 3 due timers each. Returns the YAML."""
    wf = tmp_path / "fault_timers.yaml"
    wf.write_text(TIMERS_YAML, encoding="utf-8")
    past = datetime.now(UTC) - timedelta(days=30)
    setup = Engine(url, migrate=True, workflows=[wf], clock=FrozenClock(past))
    # one host transaction: fast, all or nothing; its thousand log lines kept out of the
    # output a failure shows
    with capture_logs(), setup.db.begin() as conn:
        engine = Engine(conn, clock=FrozenClock(past))
        for i in range(instances):
            engine.start("fault_timers", actor=CLERK, data={"title": f"Hồ sơ {i}"})
    setup.close()
    return wf


def _pending_due(url: str) -> int:
    db = sa.create_engine(url)
    try:
        with db.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(t.timers)
                    .where(t.timers.c.status == "pending", t.timers.c.fire_at <= datetime.now(UTC))
                ).scalar_one()
            )
    finally:
        db.dispose()


def _pending_among(url: str, timer_ids: list[int]) -> int:
    db = sa.create_engine(url)
    try:
        with db.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(t.timers)
                    .where(t.timers.c.id.in_(timer_ids), t.timers.c.status == "pending")
                ).scalar_one()
            )
    finally:
        db.dispose()


def _check_timers_exactly_once(url: str, instances: int) -> None:
    """Every timer fired once, one history event each, and every chain verifies."""
    with Engine(url, migrate=False) as engine, engine.db.connect() as conn:
        statuses = Counter(
            dict(
                conn.execute(
                    sa.select(t.timers.c.status, sa.func.count()).group_by(t.timers.c.status)
                ).all()
            )
        )
        assert statuses == {"fired": 3 * instances}, statuses
        rows = conn.execute(
            sa.select(t.events.c.instance_id, t.events.c.kind, t.events.c.detail).where(
                t.events.c.kind.in_(("reminder", "deadline_missed", "reminder_skipped"))
            )
        ).all()
        per_timer = Counter((r.instance_id, r.kind, (r.detail or {}).get("step")) for r in rows)
        duplicates = {k: n for k, n in per_timer.items() if n > 1}
        assert duplicates == {}, f"fired more than once: {list(duplicates.items())[:5]}"
        assert len(rows) == 3 * instances
        kinds = Counter(r.kind for r in rows)
        assert kinds == {"reminder": 2 * instances, "deadline_missed": instances}, kinds
        assert engine.verify() == []


# ---------------------------------------------------------------------- races


RACER_SCRIPT = textwrap.dedent(
    """
    import json, random, sys, time
    from pathlib import Path
    from sangkien import Actor, Engine, ConcurrencyConflict, TransitionNotAllowed
    from sangkien.logs import configure_logging

    configure_logging("json", "ERROR")
    url, ids_file, go, name, rounds = sys.argv[1:6]
    ids = json.loads(Path(ids_file).read_text())
    engine = Engine(url, migrate=False)
    actor = Actor(name, ["racer"], "u")
    rng = random.Random(name)
    ok, bumps = {}, {}
    refused = {"conflict": 0, "not_allowed": 0}
    unexplained = []
    engine.get(ids[0])  # connect before the start line
    print("ready", flush=True)
    until = time.monotonic() + 20
    while not Path(go).exists() and time.monotonic() < until:
        time.sleep(0.005)
    for _ in range(int(rounds)):
        for iid in ids:  # every process walks the instances in the same order: they collide
            trigger = rng.choice(["go_left", "go_right", "reset", "bump"])
            # half the fires name the version they read, as an API client with If-Match
            expected = engine.get(iid).version if rng.random() < 0.5 else None
            try:
                engine.fire(iid, trigger, actor=actor, expected_version=expected)
            except ConcurrencyConflict as exc:
                refused["conflict"] += 1
                if exc.instance_id != iid or not str(exc):
                    unexplained.append(f"conflict without detail: {exc!r}")
            except TransitionNotAllowed as exc:
                refused["not_allowed"] += 1
                if not exc.reasons or not all(r.strip() for r in exc.reasons):
                    unexplained.append(f"refusal without reasons: {exc!r}")
            except Exception as exc:
                unexplained.append(f"{type(exc).__name__}: {exc}")
            else:
                ok[iid] = ok.get(iid, 0) + 1
                if trigger == "bump":
                    bumps[iid] = bumps.get(iid, 0) + 1
    print(json.dumps({"ok": ok, "bumps": bumps, "refused": refused,
                      "unexplained": unexplained[:20]}), flush=True)
    engine.close()
    """
)


@pytest.mark.postgresql
def test_eight_processes_racing_on_100_instances_lose_no_update(
    pg_url: str, tmp_path: Path
) -> None:
    """8 processes fire conflicting triggers at the same 100 instances; nothing is lost."""
    setup = Engine(pg_url, migrate=True, workflows=[RACE])
    with capture_logs():  # a hundred start lines kept out of the output a failure shows
        ids = [setup.start("race", actor=RACER).id for _ in range(100)]
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(ids))
    go = tmp_path / "go"
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER_SCRIPT, pg_url, str(ids_file), str(go), f"racer.{k}", "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(8)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", p.stderr.read() if p.stderr else ""
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - started
    ok: Counter[str] = Counter()
    bumps: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    for r in results:
        ok.update(r["ok"])
        bumps.update(r["bumps"])
        refused.update(r["refused"])
        assert r["unexplained"] == [], r["unexplained"]
    attempts = 8 * 3 * 100
    assert sum(ok.values()) + sum(refused.values()) == attempts
    assert refused["conflict"] > 0, "no two processes ever collided: the test proved nothing"
    assert refused["not_allowed"] > 0
    with setup.db.connect() as conn:
        rows = {
            r.id: r
            for r in conn.execute(
                sa.select(
                    t.instances.c.id,
                    t.instances.c.version,
                    t.instances.c.last_seq,
                    t.instances.c.data,
                )
            )
        }
        events = dict(
            conn.execute(
                sa.select(t.events.c.instance_id, sa.func.count()).group_by(t.events.c.instance_id)
            ).all()
        )
    lost = {
        iid: (rows[iid].version, 1 + ok[iid])
        for iid in ids
        if rows[iid].version != 1 + ok[iid]
        or rows[iid].last_seq != 1 + ok[iid]
        or events[iid] != 1 + ok[iid]
    }
    assert lost == {}, f"lost updates (version, expected): {list(lost.items())[:5]}"
    wrong = {
        iid: (rows[iid].data.get("count"), bumps[iid])
        for iid in ids
        if rows[iid].data.get("count", 0) != bumps[iid]
    }
    assert wrong == {}, f"counter lost increments (count, bumps): {list(wrong.items())[:5]}"
    assert setup.verify() == []
    setup.close()
    print(f"8 processes: {sum(ok.values())} fires applied, {dict(refused)} refused, {elapsed:.1f}s")


# ---------------------------------------------------------------------- workers killed


@pytest.mark.postgresql
def test_cli_workers_fire_every_timer_once_when_one_is_sigkilled_mid_batch(
    pg_url: str, tmp_path: Path, cli_workers: list[CliWorker]
) -> None:
    """Three `sangkien worker` processes, 1,200 due timers; one is SIGKILLed inside a batch.

    A batch is one transaction (here up to 200 instances, 600 timers). The victim is killed
    while its batch has written and not committed (its server process has a transaction
    id, for 50 ms or more): nothing of that batch is kept or logged, and the others must
    fire every one of those timers, once.
    """
    instances = 400
    _timer_population(pg_url, tmp_path, instances)
    assert _pending_due(pg_url) == 3 * instances
    started = time.monotonic()
    for k in range(3):
        cli_workers.append(CliWorker(_named(pg_url, f"fault-w{k}"), batch=800))

    busy: list[str] = []
    _wait(
        lambda: bool(busy.extend(_mid_batch(pg_url)) or busy),
        START,
        "a worker to be inside a batch",
        step=0.005,
    )
    victim = cli_workers[int(busy[0].removeprefix("fault-w"))]
    victim.kill()
    assert _pending_due(pg_url) > 0  # the batch it was in was not kept
    # a `timer` line is logged once its batch committed: those are fired, the rest not logged
    logged_by_victim = [int(i) for i in victim.values("timer", "timer_id")]
    assert _pending_among(pg_url, logged_by_victim) == 0
    survivors = [w for w in cli_workers if w is not victim]
    _wait(lambda: _pending_due(pg_url) == 0, FINISH, "the survivors to fire every due timer")
    for w in survivors:
        assert w.stop() == 0, w.log_tail()
    _check_timers_exactly_once(pg_url, instances)
    logged = [int(i) for w in cli_workers for i in w.values("timer", "timer_id")]
    assert len(logged) == len(set(logged)) == 3 * instances  # one line per timer, no more
    print(
        f"victim committed {len(logged_by_victim)} timers before the SIGKILL in a batch; "
        f"survivors fired {[w.count('timer') for w in survivors]}; "
        f"{time.monotonic() - started:.1f}s"
    )


def _named(url: str, name: str) -> str:
    """*url* with an application name, for pg_stat_activity to tell the processes apart."""
    return (
        sa.engine.make_url(url)
        .update_query_dict({"application_name": name})
        .render_as_string(hide_password=False)
    )


def _mid_batch(url: str) -> list[str]:
    """Application names of the fault-w* processes inside a writing transaction of 50 ms+."""
    db = sa.create_engine(url)
    try:
        with db.connect() as conn:
            return [
                str(name)
                for (name,) in conn.exec_driver_sql(
                    "SELECT application_name FROM pg_stat_activity"
                    " WHERE application_name LIKE 'fault-w%%' AND backend_xid IS NOT NULL"
                    " AND now() - xact_start > interval '50 milliseconds'"
                )
            ]
    finally:
        db.dispose()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A Standard Webhooks receiver on 127.0.0.1 checking every request's signature."""
    with WebhookReceiver(SECRET) as state:
        yield state


def _outbox_population(
    url: str, receiver: WebhookReceiver, instances: int, log_rows: int
) -> dict[str, set[str]]:
    """Webhook rows (2 per instance) and log-channel rows, all due; returns ids per channel."""
    setup = Engine(url, migrate=True, workflows=[EVENTS])
    with capture_logs(), setup.db.begin() as conn:  # its log lines kept out of the output
        engine = Engine(conn, subscribers=[Subscriber(url=f"{receiver.url}/hooks")])
        for i in range(instances):
            inst = engine.start("notify_events", actor=CLERK, data={"title": f"Sáng kiến {i}"})
            engine.fire(inst.id, "close", actor=CLERK)
        now = datetime.now(UTC)
        conn.execute(
            t.outbox.insert(),
            [
                {
                    "id": str(uuid.uuid4()),
                    "kind": "notification",
                    "channel": "log",
                    "recipient": "nguyen.van.an",
                    "recipient_id": "nguyen.van.an",
                    "recipient_name": "Nguyễn Văn An",
                    "instance_id": None,
                    "event_seq": None,
                    "template": None,
                    "subject": f"Thông báo {k}",
                    "body": "…",
                    "payload": {},
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for k in range(log_rows)
            ],
        )
    with setup.db.connect() as conn:
        rows = conn.execute(sa.select(t.outbox.c.id, t.outbox.c.channel)).all()
    setup.close()
    out: dict[str, set[str]] = {"webhook": set(), "log": set()}
    for r in rows:
        out[r.channel].add(r.id)
    assert len(out["webhook"]) == 2 * instances and len(out["log"]) == log_rows
    return out


def _traces(workers: list[CliWorker], ids: set[str]) -> str:
    """Every log line of *workers* that mentions one of *ids* (for a failure message)."""
    out = [f"{len(ids)} id(s) not found in the delivery logs: {sorted(ids)[:5]}"]
    for k, w in enumerate(workers):
        with w.lock:
            out += [f"worker {k}: {line.rstrip()}" for line in w.raw if any(i in line for i in ids)]
    return "\n".join(out)


def _outbox_counts(url: str) -> dict[str, int]:
    db = sa.create_engine(url)
    try:
        with db.connect() as conn:
            return dict(
                conn.execute(
                    sa.select(t.outbox.c.status, sa.func.count()).group_by(t.outbox.c.status)
                ).all()
            )
    finally:
        db.dispose()


@pytest.mark.postgresql
def test_cli_workers_deliver_every_message_when_one_is_sigkilled(
    pg_url: str, tmp_path: Path, receiver: WebhookReceiver, cli_workers: list[CliWorker]
) -> None:
    """Three workers deliver 500 webhooks and 500 log messages; one dies holding leases."""
    ids = _outbox_population(pg_url, receiver, instances=250, log_rows=500)
    receiver.delay = 0.005  # a batch of webhooks takes a while: the kill lands inside one
    env = {
        "SANGKIEN_CHANNELS": "log,webhook",
        "SANGKIEN_WEBHOOK_SECRET": SECRET,
        "SANGKIEN_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "SANGKIEN_OUTBOX_LEASE_SECONDS": "2",
    }
    batch = 50
    started = time.monotonic()
    for _ in range(3):
        cli_workers.append(CliWorker(pg_url, env=env, batch=batch))

    def busy() -> CliWorker | None:
        return next((w for w in cli_workers if w.count("delivery", channel="webhook") >= 20), None)

    try:
        _wait(lambda: busy() is not None, START, "a worker to deliver webhooks", step=0.005)
    except AssertionError:
        raise AssertionError(
            f"no delivery by `sangkien worker` within {START:g} s (receiver saw {receiver.seen()}; "
            f"outbox {_outbox_counts(pg_url)})"
        ) from None
    victim = busy()
    assert victim is not None
    victim.kill()

    def done() -> bool:
        return _outbox_counts(pg_url) == {"delivered": len(ids["webhook"]) + len(ids["log"])}

    _wait(
        done,
        FINISH,
        lambda: f"every message delivered (outbox {_outbox_counts(pg_url)})",
        step=0.2,
    )
    for w in cli_workers:
        if w is not victim:
            assert w.stop() == 0, w.log_tail()
    assert receiver.bad == 0
    seen = Counter(receiver.ids)
    assert set(seen) == ids["webhook"]  # every webhook arrived, by id
    logged = Counter(
        mid for w in cli_workers for mid in w.values("notification_delivered", "message_id")
    )
    missing = ids["log"] - set(logged)
    assert not missing, _traces(cli_workers, missing)  # every log message delivered, by id
    # at-least-once: only what the victim had in flight may arrive twice
    again = sum(n - 1 for n in seen.values()) + sum(n - 1 for n in logged.values())
    assert again <= batch, again
    db = sa.create_engine(pg_url)
    with db.connect() as conn:
        retaken = conn.execute(
            sa.select(sa.func.count()).select_from(t.outbox).where(t.outbox.c.attempts > 1)
        ).scalar_one()
    db.dispose()
    assert retaken >= 1, "the dead worker's leases were never taken over"
    print(
        f"delivered all; {retaken} rows taken over after the lease; {again} sent twice; "
        f"{receiver.torn} request(s) cut short by the kill; "
        f"{time.monotonic() - started:.1f}s"
    )


# ---------------------------------------------------------------------- connection loss


@pytest.mark.postgresql
def test_worker_survives_its_connections_being_terminated(
    pg_url: str, tmp_path: Path, cli_workers: list[CliWorker]
) -> None:
    """pg_terminate_backend on the worker's connections, five times, while it fires timers."""
    instances = 300
    app = f"sk-fault-{uuid.uuid4().hex[:8]}"
    url = with_app(pg_url, app)
    _timer_population(pg_url, tmp_path, instances)
    started = time.monotonic()
    worker = CliWorker(url, batch=100)
    cli_workers.append(worker)
    _wait(lambda: worker.count("timer") >= 20, START, "the worker to start firing", step=0.005)
    killed = 0
    for _ in range(5):
        killed += terminate(pg_url, app)
        time.sleep(0.3)
    assert killed >= 1, "no connection of the worker was found to terminate"
    _wait(lambda: _pending_due(pg_url) == 0, FINISH, "the worker to fire every due timer")
    assert worker.proc.poll() is None, "the worker died: " + worker.log_tail()
    assert worker.stop() == 0, worker.log_tail()
    _check_timers_exactly_once(pg_url, instances)
    print(
        f"terminated {killed} backend(s); worker logged "
        f"{worker.count('worker.tick_failed')} failed pass(es); "
        f"{time.monotonic() - started:.1f}s"
    )


@pytest.mark.postgresql
def test_engine_reconnects_after_its_connections_are_terminated(pg_url: str) -> None:
    """An Engine whose pooled connections were killed fires again on the next call."""
    app = f"sk-fault-{uuid.uuid4().hex[:8]}"
    engine = Engine(with_app(pg_url, app), migrate=True, workflows=[RACE])
    inst = engine.start("race", actor=RACER)
    engine.fire(inst.id, "bump", actor=RACER)
    assert terminate(pg_url, app) >= 1
    after = engine.fire(inst.id, "bump", actor=RACER)  # pool_pre_ping replaces the dead one
    assert after.version == 3 and after.data["count"] == 2
    assert engine.verify() == []
    engine.close()


# ---------------------------------------------------------------------- SQLite read-only, full


def _sqlite_with_instance(path: Path) -> str:
    engine = Engine(f"sqlite:///{path}", workflows=[RACE])
    iid = engine.start("race", actor=RACER).id
    engine.close()
    return iid


def test_read_only_sqlite_gives_a_clear_store_error(tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    iid = _sqlite_with_instance(db)
    engine = Engine(f"sqlite:///file:{db}?mode=ro&uri=true", migrate=False)
    assert engine.get(iid).state == "idle"  # reading works
    with pytest.raises(StoreError, match="read-only") as info:
        engine.fire(iid, "go_left", actor=RACER)
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="read-only"):
        engine.start("race", actor=RACER)
    engine.close()
    assert Engine(f"sqlite:///{db}").get(iid).version == 1  # nothing was written


def test_read_only_sqlite_cli_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    iid = _sqlite_with_instance(db)
    env = {**os.environ, "SANGKIEN_DATABASE_URL": f"sqlite:///file:{db}?mode=ro&uri=true"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sangkien",
            "fire",
            iid,
            "go_left",
            "--actor",
            "racer.0",
            "--role",
            "racer",
            "--unit",
            "u",
            "-w",
            str(RACE),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "read-only" in lines[0]
    assert "Traceback" not in out.stderr


def test_full_sqlite_database_gives_a_clear_store_error(tmp_path: Path) -> None:
    """A database that cannot grow (PRAGMA max_page_count): StoreError 'full', nothing half-done."""
    engine = Engine(f"sqlite:///{tmp_path / 'full.db'}", workflows=[RACE])
    inst = engine.start("race", actor=RACER)

    @event.listens_for(engine.db, "connect")
    def _cap(dbapi_conn: Any, _record: Any) -> None:
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    engine.db.dispose()  # new connections get the cap
    fired = 0
    with pytest.raises(StoreError, match="full") as info:
        for _ in range(5000):
            engine.fire(inst.id, "bump", actor=RACER)
            fired += 1
    assert "\n" not in str(info.value)
    event.remove(engine.db, "connect", _cap)
    engine.db.dispose()
    after = engine.get(inst.id)
    # the fire that failed left nothing behind
    assert after.version == 1 + fired and after.data["count"] == fired
    assert engine.verify() == []
    engine.close()


@pytest.mark.postgresql
def test_a_pass_lost_at_commit_logs_no_timer_line(pg_url: str, tmp_path: Path) -> None:
    """A `timer` line is logged only for a firing that was kept: a pass whose transaction
    fails at its commit (here a deferred trigger refuses it) leaves no line behind, and the
    pass that does fire the timers logs each once."""
    import structlog

    _timer_population(pg_url, tmp_path, 5)  # 15 due timers
    db = sa.create_engine(pg_url)
    with db.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
        )
        conn.exec_driver_sql(
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON sk_events "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()"
        )
    engine = Engine(pg_url)
    try:
        with (
            structlog.testing.capture_logs() as lost,
            pytest.raises(StoreError, match="refused at commit"),
        ):
            engine.tick()
        assert _pending_due(pg_url) == 15  # nothing was kept...
        assert [e["event"] for e in lost if e["event"].startswith(("timer", "deadline"))] == []
        # ...and a start lost at its commit logs no `deadline.set` for its first state
        engine.register(tmp_path / "fault_timers.yaml")
        with (
            structlog.testing.capture_logs() as lost_start,
            pytest.raises(StoreError, match="refused at commit"),
        ):
            engine.start("fault_timers", actor=CLERK, data={"title": "x"})
        assert [e["event"] for e in lost_start if e["event"].startswith("deadline")] == []

        with db.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse_at_commit ON sk_events")
        with structlog.testing.capture_logs() as kept:
            result = engine.tick()
        lines = [e["timer_id"] for e in kept if e["event"] == "timer"]
        # the due notices fired; the reminders, late by now, were skipped (and logged so)
        assert (result.fired, result.skipped) == (5, 10)
        assert len(lines) == len(set(lines)) == 15
        assert _pending_due(pg_url) == 0
    finally:
        engine.close()
        db.dispose()
