"""A chaos run: several `sangkien worker` processes, SIGKILLs, a PostgreSQL restart; counted by id.

Thousands of instances are started 30 days in the past, so that every timer is due at once:
two reminders, the due notice and an escalation step that moves the instance on (4 timers
each). Their notifications go by webhook (to a receiver in this process that fails a share
of requests at random with 503) and by the log channel; every event also goes to a signed
event webhook. Workers run as real processes; while they work, one at a time is killed
with SIGKILL and replaced, and, with ``--restart``, the database server is restarted once.
At the end it counts, by id: timers fired, history events per timer (none twice), `timer`
log lines, outbox rows, webhook ids received (any twice?), and verifies every history chain.

    python bench/chaos.py --postgresql postgresql://postgres@127.0.0.1:5432/test \\
        --restart "pg_ctlcluster --skip-systemctl-redirect 15 main restart -m fast"

It exits 1 if a timer did not fire exactly once, a message was not settled, or a chain
breaks. Messages sent twice are reported, not failed: delivery is at least once (a worker
killed between a send and its record sends again after the lease), and receivers drop
duplicates by id. It is not part of the test suite (it restarts the server).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import md_table, pg_schema

from sangkien.testing import WebhookReceiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a local run only
AUTHOR = "nguyen.van.an"

WORKFLOW = """
workflow: chaos
version: 1
title: Chaos
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
      escalate:
        - after: 1 day
          notify: [author]
          fire: expire
  expired: {}
  closed: {final: true}
transitions:
  - {trigger: expire, from: waiting, to: expired, roles: [system]}
  - {trigger: close, from: [waiting, expired], to: closed, roles: [clerk]}
"""
TIMERS_PER_INSTANCE = 4


class Worker:
    """`python -m sangkien worker`, its stderr (JSON lines) in a file."""

    def __init__(self, env: dict[str, str], log: Path, batch: int) -> None:
        self.log = log
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
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )

    def lines(self) -> tuple[list[dict[str, Any]], int]:
        """(parsed lines, lines that are not one JSON object but the last cut by a kill)."""
        raw = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        out, broken = [], 0
        for k, line in enumerate(raw):
            try:
                out.append(json.loads(line))
            except ValueError:
                broken += k < len(raw) - 1
        return out, broken


def _directory(path: Path, hook: str) -> None:
    path.write_text(
        json.dumps(
            {
                "units": {"phong-qlkh": {"name": "Phòng Quản lý khoa học"}},
                "people": {
                    AUTHOR: {
                        "name": "Nguyễn Văn An",
                        "contacts": {"webhook": hook},
                        "roles": {"clerk": "phong-qlkh"},
                    }
                },
            },
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )


def _populate(url: str, wf: Path, n: int) -> None:
    from structlog.testing import capture_logs

    from sangkien import Actor, Engine, FrozenClock

    past = FrozenClock(datetime.now(UTC) - timedelta(days=30))
    setup = Engine(url, migrate=True, workflows=[wf], clock=past)
    clerk = Actor(AUTHOR, ["clerk"], "phong-qlkh")
    with capture_logs(), setup.db.begin() as conn:  # one transaction: fast, all or nothing
        engine = Engine(conn, clock=past)
        for i in range(n):
            engine.start("chaos", actor=clerk, data={"title": f"Sáng kiến {i}"})
    setup.close()


def _progress(url: str) -> tuple[int, dict[str, int]] | None:
    """(due timers still pending, outbox rows by status); None while the database is away."""
    from sangkien.store import schema as t

    db = sa.create_engine(url)
    try:
        with db.connect() as conn:
            due = conn.execute(
                sa.select(sa.func.count())
                .select_from(t.timers)
                .where(t.timers.c.status == "pending", t.timers.c.fire_at <= datetime.now(UTC))
            ).scalar_one()
            rows = conn.execute(
                sa.select(t.outbox.c.status, sa.func.count()).group_by(t.outbox.c.status)
            ).all()
    except sa.exc.OperationalError:
        return None
    finally:
        db.dispose()
    return int(due), {s: int(c) for s, c in rows}


def run(args: argparse.Namespace, url: str) -> int:
    from sangkien import Engine
    from sangkien.store import schema as t

    rng = random.Random(args.seed)
    receiver = WebhookReceiver(SECRET, fail=args.fail, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="sangkien-chaos-"))
    wf = tmp / "chaos.yaml"
    wf.write_text(WORKFLOW, encoding="utf-8")
    directory = tmp / "directory.json"
    _directory(directory, f"{receiver.url}/people/{AUTHOR}")
    t0 = time.monotonic()
    _populate(url, wf, args.instances)
    print(f"{args.instances} instances started in {time.monotonic() - t0:.1f}s", flush=True)
    env = {
        **os.environ,
        "SANGKIEN_DATABASE_URL": url,
        "SANGKIEN_WORKFLOWS": str(wf),
        "SANGKIEN_DIRECTORY": str(directory),
        "SANGKIEN_CHANNELS": "log,webhook",
        "SANGKIEN_WEBHOOK_SECRET": SECRET,
        "SANGKIEN_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "SANGKIEN_SUBSCRIBERS": json.dumps([{"url": f"{receiver.url}/events", "events": ["*"]}]),
        "SANGKIEN_OUTBOX_LEASE_SECONDS": "5",
        "SANGKIEN_OUTBOX_BACKOFF_SECONDS": "0.5",
        "SANGKIEN_OUTBOX_BACKOFF_MAX_SECONDS": "2",
        "SANGKIEN_SKIP_LATE_REMINDERS": "false",
        "SANGKIEN_LOG_FORMAT": "json",
        "SANGKIEN_LOG_LEVEL": "INFO",
    }
    made = 0

    def spawn() -> Worker:
        nonlocal made
        made += 1
        return Worker(env, tmp / f"worker-{made}.log", args.batch)

    live = [spawn() for _ in range(args.workers)]
    dead: list[Worker] = []
    kills = restarts = 0
    next_kill = time.monotonic() + rng.uniform(1, 3)
    restart_at = None if not args.restart else time.monotonic() + args.restart_after
    started = time.monotonic()
    last: tuple[int, dict[str, int]] | None = None
    while time.monotonic() - started < args.timeout:
        now = time.monotonic()
        if kills < args.kills and now >= next_kill:
            victim = live.pop(rng.randrange(len(live)))
            victim.proc.kill()
            victim.proc.wait()
            dead.append(victim)
            live.append(spawn())
            kills += 1
            next_kill = now + rng.uniform(1, 3)
            print(f"{now - started:5.1f}s  SIGKILL a worker ({kills}/{args.kills})", flush=True)
        if restart_at is not None and now >= restart_at:
            t1 = time.monotonic()
            subprocess.run(shlex.split(args.restart), check=True)
            restarts += 1
            restart_at = None
            print(f"{now - started:5.1f}s  database restarted ({time.monotonic() - t1:.1f}s)")
        last = _progress(url) or last
        settled = last is not None and last[0] == 0 and set(last[1]) <= {"delivered", "dead"}
        if settled and kills >= args.kills and restart_at is None:
            break
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    for w in live:
        w.proc.terminate()
    for w in live:
        try:
            w.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
    receiver.close()

    # ---- count
    def by_status(conn: Any, table: Any, column: Any) -> dict[str, int]:
        q = sa.select(column, sa.func.count()).group_by(column)
        return {str(k): int(n) for k, n in conn.execute(q).all()}

    with Engine(url, migrate=False) as engine, engine.db.connect() as conn:
        timers = by_status(conn, t.timers, t.timers.c.status)
        fired = {
            r[0] for r in conn.execute(sa.select(t.timers.c.id).where(t.timers.c.status == "fired"))
        }
        kinds = ("reminder", "deadline_missed", "reminder_skipped", "escalation")
        events = conn.execute(
            sa.select(t.events.c.instance_id, t.events.c.kind, t.events.c.detail).where(
                t.events.c.kind.in_(kinds)
            )
        ).all()
        states = by_status(conn, t.instances, t.instances.c.state)
        outbox = by_status(conn, t.outbox, t.outbox.c.status)
        delivered_hooks = {
            r[0]
            for r in conn.execute(
                sa.select(t.outbox.c.id).where(
                    t.outbox.c.channel == "webhook", t.outbox.c.status == "delivered"
                )
            )
        }
        breaks = engine.verify()
    per_timer = Counter(
        (r.instance_id, r.kind, json.dumps((r.detail or {}).get("step"))) for r in events
    )
    twice_in_history = sum(1 for n in per_timer.values() if n > 1)
    lines: list[dict[str, Any]] = []
    broken = 0
    for w in live + dead:
        got, b = w.lines()
        lines += got
        broken += b
    timer_lines = Counter(int(e["timer_id"]) for e in lines if e.get("event") == "timer")
    logged_twice = sum(1 for n in timer_lines.values() if n > 1)
    never_logged = len(fired - set(timer_lines))
    stranded = [e for e in lines if e.get("event") == "outbox.stranded_given_back"]
    late = sum(1 for e in stranded if e.get("recorded_late"))
    maybe_sent = sum(len(e.get("maybe_sent") or []) for e in stranded)
    expected = TIMERS_PER_INSTANCE * args.instances
    received = Counter(receiver.ids)
    sent_twice = sum(n - 1 for n in received.values())
    missing = delivered_hooks - set(received)
    faults = f"{kills} SIGKILLs, {restarts} database restart(s)"
    rows = [
        ["instances; workers (at once)", f"{args.instances:,}; {args.workers}"],
        ["faults", f"{faults}; receiver refused {receiver.refused:,} requests (503)"],
        ["time to settle", f"{elapsed:.1f} s"],
        ["timers fired (expected)", f"{len(fired):,} ({expected:,}); by status {timers}"],
        ["timer events twice in a history", str(twice_in_history)],
        [
            "`timer` lines: ids logged twice / fired never logged",
            f"{logged_twice} / {never_logged}",
        ],
        ["instances by state", str(states)],
        ["outbox rows by status", str(outbox)],
        [
            "webhook ids delivered / received / never received",
            f"{len(delivered_hooks):,} / {len(received):,} / {len(missing)}",
        ],
        ["webhook messages received twice", str(sent_twice)],
        [
            "requests with a bad signature / cut short by a kill",
            f"{receiver.bad} / {receiver.torn}",
        ],
        ["outcomes recorded late / given back as maybe sent", f"{late} / {maybe_sent}"],
        ["log lines that are not one JSON object", str(broken)],
        ["history chains", "intact" if not breaks else f"{len(breaks)} broken"],
    ]
    print()
    print(md_table(["", "count"], rows, left=2))
    ok = (
        len(fired) == expected
        and twice_in_history == 0
        and set(outbox) <= {"delivered", "dead"}
        and not missing
        and not breaks
        and receiver.bad == 0
        and broken == 0
    )
    print("\nresult:", "every timer fired once, every message settled" if ok else "FAILED")
    return 0 if ok else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--postgresql", required=True, help="database URL (a scratch schema is made)")
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--kills", type=int, default=4, help="SIGKILLs, one every 1-3 s")
    p.add_argument("--restart", default="", help="command restarting the database server")
    p.add_argument("--restart-after", type=float, default=4.0, help="seconds into the run")
    p.add_argument("--fail", type=float, default=0.03, help="share of webhooks answered 503")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    with pg_schema(args.postgresql, app="sangkien-chaos") as url:
        code = run(args, url)
    sys.exit(code)


if __name__ == "__main__":
    main()
