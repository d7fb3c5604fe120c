"""Two dispatcher processes over one PostgreSQL outbox: leases with FOR UPDATE SKIP LOCKED.

Each dispatcher is a separate Python process with its own Engine and WebhookAdapter, posting
to one Standard Webhooks receiver (http.server in a thread of the test) that checks every
signature and counts message ids. About 1,000 event rows come from 250 instances started and
closed for two subscribers. Every wait is bounded; each test takes well under 30 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from sangkien import Actor, Engine, StoreError
from sangkien.config.settings import Subscriber
from sangkien.outbox import counts, list_messages
from sangkien.store import schema as t
from sangkien.store.db import create_db_engine
from sangkien.testing import WebhookReceiver

pytestmark = pytest.mark.postgresql

HERE = Path(__file__).resolve().parent
EVENTS = HERE / "workflows" / "notify_events.yaml"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CLERK = Actor("nguyen.van.an", ["clerk"], "phong-qlkh")
INSTANCES = 250  # x (started + closed) x 2 subscribers = 1,000 rows
BATCH = 10

DISPATCHER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from sangkien import Engine
    from sangkien.adapters.webhook import WebhookAdapter
    from sangkien.outbox import Dispatcher, counts

    from sangkien.logs import configure_logging

    url, secret, name, lease, batch, go = sys.argv[1:7]
    configure_logging("json", "WARNING")  # one line per delivery would fill the stderr pipe
    engine = Engine(url, migrate=False)
    adapter = WebhookAdapter(secret, allowed_hosts=["127.0.0.1"], timeout=5)
    d = Dispatcher(engine, {"webhook": adapter}, lease=float(lease), owner=name)
    print("ready", flush=True)
    until = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < until:
        time.sleep(0.01)
    delivered = claimed = 0
    until = time.monotonic() + 90  # a bound for a failing run; a passing one breaks out
    while time.monotonic() < until:
        r = d.dispatch(limit=int(batch))
        delivered += r.delivered
        claimed += r.claimed
        if r.claimed == 0:
            left = counts(engine)
            if not left.get("pending") and not left.get("delivering"):
                break
            time.sleep(0.05)  # leased by someone else: wait for them, or for the lease
    print(json.dumps({"name": name, "claimed": claimed, "delivered": delivered}), flush=True)
    """
)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A Standard Webhooks receiver on 127.0.0.1 checking every request's signature."""
    with WebhookReceiver(SECRET) as state:
        yield state


@pytest.fixture
def thousand_rows(pg_url: str, receiver: WebhookReceiver) -> Iterator[tuple[str, list[str]]]:
    """~1,000 pending event rows in a fresh schema; yields (url, row ids)."""
    subs = [
        Subscriber(url=f"{receiver.url}/hooks/a"),
        Subscriber(url=f"{receiver.url}/hooks/b"),
    ]
    Engine(pg_url, migrate=True, workflows=[EVENTS]).close()  # the schema, the workflow
    host = create_db_engine(pg_url)
    with host.begin() as conn:  # one host transaction: fast, and all-or-nothing
        engine = Engine(conn, subscribers=subs)
        for i in range(INSTANCES):
            inst = engine.start("notify_events", actor=CLERK, data={"title": f"Sáng kiến số {i}"})
            engine.fire(inst.id, "close", actor=CLERK)
    with host.connect() as conn:
        ids = list(
            conn.execute(sa.select(t.outbox.c.id).where(t.outbox.c.status == "pending")).scalars()
        )
    host.dispose()
    assert len(ids) == INSTANCES * 4 == 1000
    yield pg_url, ids


def spawn(url: str, name: str, lease: float, go: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", DISPATCHER, url, SECRET, name, str(lease), str(BATCH), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the process has built its Engine
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def statuses(url: str) -> dict[str, int]:
    with Engine(url, migrate=False) as engine:
        return counts(engine)


def test_two_processes_deliver_each_message_exactly_once(
    thousand_rows: tuple[str, list[str]], receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Two dispatcher processes share 1,000 rows: each id arrives once, every row delivered."""
    url, ids = thousand_rows
    go = tmp_path / "go"
    procs = [spawn(url, name, 300, go) for name in ("d1", "d2")]
    started = time.monotonic()
    go.touch()
    results = [finish(p) for p in procs]
    elapsed = time.monotonic() - started
    seen = Counter(receiver.ids)
    assert receiver.bad == 0
    assert set(seen) == set(ids)
    assert [i for i, n in seen.items() if n > 1] == []  # exactly once
    assert statuses(url) == {"delivered": 1000}
    assert sum(r["delivered"] for r in results) == 1000
    assert all(r["delivered"] > 0 for r in results), results  # both did part of the work
    print(f"two dispatchers: {results} in {elapsed:.1f}s")


def test_sigkilled_process_leases_are_recovered(
    thousand_rows: tuple[str, list[str]], receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """One of two dispatchers is SIGKILLed mid-run: the survivor takes its leases over after 2 s."""
    url, ids = thousand_rows
    receiver.delay = 0.002  # the run lasts a few seconds, so the kill lands mid-run
    go = tmp_path / "go"
    victim = spawn(url, "victim", 2, go)
    survivor = spawn(url, "survivor", 2, go)
    go.touch()
    try:
        until = time.monotonic() + 60
        while receiver.seen() < 150 and time.monotonic() < until:
            time.sleep(0.005)
        assert receiver.seen() >= 150
        victim.kill()  # SIGKILL
        assert victim.wait(timeout=10) == -9
        killed_at = time.monotonic()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(timeout=10)
    result = finish(survivor)
    recovered_after = time.monotonic() - killed_at
    seen = Counter(receiver.ids)
    duplicates = {i: n for i, n in seen.items() if n > 1}
    assert receiver.bad == 0
    assert set(seen) == set(ids)  # every id arrived, at least once
    assert statuses(url) == {"delivered": 1000}  # nothing lost, nothing left leased
    # at-least-once: only what the victim had sent but not yet recorded can arrive twice,
    # and that is at most the one request in flight in its batch
    assert sum(n - 1 for n in duplicates.values()) <= BATCH, duplicates
    assert result["delivered"] < 1000 and result["claimed"] >= result["delivered"]
    reader = sa.create_engine(url)
    with reader.connect() as conn:
        retaken = conn.execute(
            sa.select(sa.func.count()).select_from(t.outbox).where(t.outbox.c.attempts > 1)
        ).scalar_one()
    reader.dispose()
    print(
        f"survivor {result}; done {recovered_after:.1f}s after the kill; rows taken over "
        f"after the lease: {retaken}; duplicates: {sum(n - 1 for n in duplicates.values())}"
    )


class _CutsTheDatabase:
    """The real webhook adapter, but the *at*-th send takes the database away from the
    dispatcher (its role may no longer log in; its connections are terminated) — an
    outage between a send and the record of its outcome."""

    def __init__(self, inner: Any, admin: sa.Engine, role: str, at: int) -> None:
        self.inner, self.admin, self.role, self.at = inner, admin, role, at
        self.sends = 0

    def send(self, message: Any) -> None:
        self.inner.send(message)
        self.sends += 1
        if self.sends == self.at:
            with self.admin.begin() as conn:
                conn.exec_driver_sql(f'ALTER ROLE "{self.role}" NOLOGIN')
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE usename = '{self.role}'"
                )


@contextmanager
def _outage_role(pg_url: str) -> Iterator[tuple[sa.Engine, str, str]]:
    """A login role of its own (so an outage can hit only it): (admin engine, role, its URL)."""
    role = f"sk_outage_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN SUPERUSER')
    url = sa.engine.make_url(pg_url).set(username=role).render_as_string(hide_password=False)
    try:
        yield admin, role, url
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
            )
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


def _closed_instances(pg_url: str, receiver: WebhookReceiver, n: int) -> None:
    """*n* notify_events instances started and closed: two pending webhooks each."""
    subs = [Subscriber(url=f"{receiver.url}/hooks/a")]
    with Engine(pg_url, migrate=True, workflows=[EVENTS], subscribers=subs) as engine:
        for i in range(n):
            inst = engine.start("notify_events", actor=CLERK, data={"title": f"Số {i}"})
            engine.fire(inst.id, "close", actor=CLERK)


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_a_pass_the_database_cut_short_gives_the_rest_back_at_once(
    pg_url: str, receiver: WebhookReceiver
) -> None:
    """The database goes away mid-batch: the pass fails, and the next one (the database
    back) records the outcome it could not record and sends the rest at once, instead of
    after the 300 s lease; each message arrives once, and the unsent keep one attempt."""
    from sangkien.adapters.webhook import WebhookAdapter
    from sangkien.outbox import Dispatcher

    with _outage_role(pg_url) as (admin, role, url):
        _closed_instances(pg_url, receiver, 5)
        with Engine(url, migrate=False) as engine:
            ids = [m.id for m in list_messages(engine, status="pending")]
            assert len(ids) == 10
            webhook = WebhookAdapter(SECRET, allowed_hosts=["127.0.0.1"], timeout=5)
            cut = _CutsTheDatabase(webhook, admin, role, at=3)
            d = Dispatcher(engine, {"webhook": cut}, lease=300)
            with capture_logs() as first, pytest.raises(StoreError, match="connection was lost"):
                d.dispatch(limit=10)  # fails recording the third
            assert len(receiver.ids) == 3
            third = receiver.ids[2]
            logged = [e["message_id"] for e in _events(first, "delivery")]
            assert logged == receiver.ids[:2]  # the third's outcome is not recorded yet
            with pytest.raises(StoreError):  # still away: the next pass fails, holding on
                d.dispatch(limit=10)
            assert len(receiver.ids) == 3
            with admin.begin() as conn:
                conn.exec_driver_sql(f'ALTER ROLE "{role}" LOGIN')
            with capture_logs() as second:
                again = d.dispatch(limit=10)  # the next pass, long before the lease ends
            # 7 sent, and the third's outcome recorded
            assert (again.claimed, again.delivered, again.recorded_late) == (7, 7, 1)
            assert Counter(receiver.ids) == {i: 1 for i in ids}  # each exactly once
            (settled,) = _events(second, "outbox.stranded_given_back")
            assert (settled["recorded_late"], settled["unsent"]) == (third, 7)
            logged += [e["message_id"] for e in _events(second, "delivery")]
            assert sorted(logged) == sorted(ids)  # one delivery line per message
            assert counts(engine) == {"delivered": 10}
            attempts = [m.attempts for m in list_messages(engine, status="delivered")]
            assert attempts == [1] * 10  # the unsent were tried once, the third too


def test_a_late_record_leaves_a_row_another_dispatcher_claimed_alone(
    pg_url: str, receiver: WebhookReceiver
) -> None:
    """The lease ran out while the database was away and another dispatcher claimed the
    row: the late record does not touch it (the other sends it again, with the same id)."""
    from sangkien.adapters.webhook import WebhookAdapter
    from sangkien.outbox import Dispatcher

    with _outage_role(pg_url) as (admin, role, url):
        _closed_instances(pg_url, receiver, 1)
        with Engine(url, migrate=False) as engine:
            ids = {m.id for m in list_messages(engine, status="pending")}
            webhook = WebhookAdapter(SECRET, allowed_hosts=["127.0.0.1"], timeout=5)
            cut = _CutsTheDatabase(webhook, admin, role, at=1)
            d = Dispatcher(engine, {"webhook": cut}, lease=300, owner="cut-off")
            with pytest.raises(StoreError):
                d.dispatch(limit=1)
            (sent,) = receiver.ids
            with admin.begin() as conn:
                conn.exec_driver_sql(f'ALTER ROLE "{role}" LOGIN')
                # meanwhile its lease ran out and another dispatcher claimed it
                conn.execute(
                    t.outbox.update()
                    .where(t.outbox.c.id == sent)
                    .values(lease_owner="other", attempts=t.outbox.c.attempts + 1)
                )
            with capture_logs() as logs:
                again = d.dispatch(limit=1)
            assert (again.claimed, again.delivered, again.recorded_late) == (1, 1, 0)
            (settled,) = _events(logs, "outbox.stranded_given_back")
            assert settled["recorded_late"] is None
            (lost,) = _events(logs, "outbox.lease_lost")
            assert lost["message_ids"] == [sent]  # named, so that its second send is traced
            # a line for each send: the one not recorded, then the other message
            assert [e["message_id"] for e in _events(logs, "delivery")] == [sent, *ids - {sent}]
            with engine.db.connect() as conn:
                row = conn.execute(
                    sa.select(t.outbox.c.status, t.outbox.c.lease_owner).where(
                        t.outbox.c.id == sent
                    )
                ).one()
            assert tuple(row) == ("delivering", "other")  # untouched: the other's to finish


def test_a_failure_text_with_nul_bytes_is_recorded(pg_url: str) -> None:
    """A server reply may carry NUL bytes, which PostgreSQL refuses in text: the error is
    stored with them escaped, instead of failing the record on every pass."""
    from sangkien.outbox import Dispatcher
    from sangkien.testing import RecordingAdapter

    subs = [Subscriber(url="https://hooks.example.gov.vn/a")]
    with Engine(pg_url, migrate=True, workflows=[EVENTS], subscribers=subs) as engine:
        engine.start("notify_events", actor=CLERK, data={"title": "Số 1"})
        adapter = RecordingAdapter("webhook")
        adapter.fail_next(1, reason="421 bad\x00reply")
        d = Dispatcher(engine, {"webhook": adapter})
        first = d.dispatch(limit=1)
        assert (first.claimed, first.retried) == (1, 1)
        (row,) = list_messages(engine)
        assert row.status == "pending"
        assert row.last_error is not None and "421 bad\\x00reply" in row.last_error
