"""Outbox delivery against real receivers: an aiosmtpd SMTP server and a local HTTP webhook.

No mocks: SmtpAdapter talks SMTP to aiosmtpd on 127.0.0.1, WebhookAdapter POSTs to an
http.server in a thread that checks every Standard Webhooks signature with
``sangkien.adapters.webhook.verify`` and records the message ids it sees. Time in the
database moves only through the Dispatcher's ``now=`` argument and a FrozenClock; nothing
sleeps to wait for a retry.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from structlog.testing import capture_logs

from sangkien import Actor, Engine, FrozenClock, StoreError
from sangkien.adapters.email import SmtpAdapter
from sangkien.adapters.webhook import WebhookAdapter, verify
from sangkien.config.settings import Subscriber
from sangkien.directory import YamlDirectory
from sangkien.notifications import OutgoingMessage
from sangkien.outbox import Dispatcher, counts, get_message, list_messages, retry_dead
from sangkien.store import schema as t
from sangkien.templates import TemplateStore, shipped_templates_dir
from sangkien.testing import RecordingAdapter

HERE = Path(__file__).resolve().parent
WORKFLOW = HERE / "workflows" / "notify_review.yaml"
EVENTS = HERE / "workflows" / "notify_events.yaml"
TEMPLATES = HERE / "templates"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LINK = "https://portal.example.gov.vn/sang-kien/{instance_id}"
TITLE = "Cải tiến quy trình tiếp nhận hồ sơ"
UNIT = "phong-qlkh"
AN = Actor("nguyen.van.an", ["clerk"], UNIT)
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 2/3/2026, 09:00 in Vietnam


# --------------------------------------------------------------------------- receivers


@dataclass
class Hit:
    """One request the webhook receiver got."""

    path: str
    id: str
    verified: bool
    body: Any


@dataclass
class Receiver:
    """A Standard Webhooks receiver on 127.0.0.1: answers ``status`` (or the queued ones)."""

    secret: str = SECRET
    status: int = 200
    queued: list[int] = field(default_factory=list)
    delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, port: int = 0) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["content-length"]))
                ok = verify(receiver.secret, self.headers, raw)
                with receiver.lock:
                    receiver.hits.append(
                        Hit(self.path, self.headers["webhook-id"], ok, json.loads(raw))
                    )
                    status = receiver.queued.pop(0) if receiver.queued else receiver.status
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        """Stop listening (connections are refused until start() again)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def ids(self) -> list[str]:
        with self.lock:
            return [h.id for h in self.hits]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running webhook receiver, stopped after the test."""
    r = Receiver()
    r.start()
    yield r
    r.stop()


@dataclass
class Mailbox:
    """An aiosmtpd handler keeping every message it accepts."""

    mails: list[email.message.EmailMessage] = field(default_factory=list)
    rcpts: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.content.replace(b"\r\n", b"\n")
        self.mails.append(email.message_from_bytes(raw, policy=email.policy.default))  # type: ignore[arg-type]
        self.rcpts.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


# --------------------------------------------------------------------------- engine


def directory(hooks: Receiver) -> YamlDirectory:
    def person(name: str, mail: str, roles: dict[str, str], hook: str | None = None) -> Any:
        contacts = {"email": mail, **({"webhook": hooks.url(hook)} if hook else {})}
        return {"name": name, "contacts": contacts, "roles": roles}

    return YamlDirectory.from_data(
        {
            "units": {
                "tinh-qn": {"name": "Ủy ban nhân dân tỉnh Quảng Ngãi"},
                "so-khcn": {"name": "Sở Khoa học và Công nghệ", "parent": "tinh-qn"},
                UNIT: {"name": "Phòng Quản lý khoa học", "parent": "so-khcn"},
            },
            "people": {
                "nguyen.van.an": person(
                    "Nguyễn Văn An", "an.nguyen@example.gov.vn", {"clerk": UNIT}
                ),
                "tran.thi.binh": person(
                    "Trần Thị Bình", "binh.tran@example.gov.vn", {"reviewer": UNIT}, "/people/binh"
                ),
                "le.van.cuong": person(
                    "Lê Văn Cường", "cuong.le@example.gov.vn", {"unit_head": UNIT}
                ),
                "pham.thi.dung": person(
                    "Phạm Thị Dung",
                    "dung.pham@example.gov.vn",
                    {"unit_head": "so-khcn", "director": "so-khcn"},
                ),
                "hoang.van.em": person(
                    "Hoàng Văn Em", "em.hoang@example.gov.vn", {"chairman": "tinh-qn"}
                ),
            },
        }
    )


def make_engine(url: str, hooks: Receiver, clock: FrozenClock) -> Engine:
    return Engine(
        url,
        clock=clock,
        migrate=True,
        workflows=[WORKFLOW],
        directory=directory(hooks),
        templates=TemplateStore([TEMPLATES, shipped_templates_dir()]),
        channels=["email", "webhook"],
        link_pattern=LINK,
        subscribers=[
            Subscriber(url=hooks.url("/events/all")),
            Subscriber(url=hooks.url("/events/transitions"), events=["transition.applied"]),
        ],
    )


def webhook_adapter() -> WebhookAdapter:
    return WebhookAdapter(SECRET, allowed_hosts=["127.0.0.1"], timeout=5)


@dataclass
class Db:
    """An Engine, and its outbox read through a connection pool of the test's own."""

    engine: Engine
    url: str
    reader: sa.Engine = field(init=False)

    def __post_init__(self) -> None:
        self.reader = sa.create_engine(self.url)

    def rows(self) -> list[Any]:
        """Every outbox row, in insertion order (ids are time-ordered)."""
        with self.reader.connect() as conn:
            return list(
                conn.execute(sa.select(t.outbox).order_by(t.outbox.c.created_at, t.outbox.c.id))
            )

    def reload(self, message_id: str) -> Any:
        with self.reader.connect() as conn:
            return conn.execute(sa.select(t.outbox).where(t.outbox.c.id == message_id)).one()

    def close(self) -> None:
        self.reader.dispose()
        self.engine.close()


# --------------------------------------------------------------------------- all arrive


def test_every_message_arrives(
    tmp_path: Path, receiver: Receiver, smtp: tuple[Mailbox, int]
) -> None:
    """Every pending row arrives once: mails by Message-ID, Vietnamese intact; hooks signed."""
    box, port = smtp
    clock = FrozenClock(T0)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(url, receiver, clock)
    db = Db(engine, url)
    iid = engine.start("notify_review", actor=AN, data={"title": TITLE}).id
    clock.set(T0 + timedelta(hours=1))
    engine.fire(iid, "submit", actor=AN, comment="Kính trình")
    for at in (
        datetime(2026, 3, 5, 1, 0, tzinfo=UTC),  # reminder
        datetime(2026, 3, 9, 16, 59, 59, 999999, tzinfo=UTC),  # due notice, escalation 1
        datetime(2026, 3, 11, 16, 59, 59, 999999, tzinfo=UTC),  # escalation 2
    ):
        clock.set(at)
        engine.tick(now=at)
    zalo = RecordingAdapter("zalo")
    adapters = {
        "email": SmtpAdapter("127.0.0.1", port, from_address="Sáng kiến <sangkien@example.gov.vn>"),
        "webhook": webhook_adapter(),
        "zalo": zalo,
    }
    before = db.rows()
    pending = [r for r in before if r.status == "pending"]
    result = Dispatcher(engine, adapters).run(limit=7)
    assert result.claimed == len(pending) == result.delivered + result.dead
    after = {r.id: r for r in db.rows()}
    dead = {r.recipient: r.last_error for r in after.values() if r.status == "dead"}
    # the literal https://hooks.example.gov.vn/... is outside the allowlist: dead at once
    assert (
        dead["https://hooks.example.gov.vn/van-thu"]
        == "permanent: message '{}': host hooks.example.gov.vn is not in "
        "SANGKIEN_WEBHOOK_ALLOWED_HOSTS".format(
            next(r.id for r in before if r.recipient == "https://hooks.example.gov.vn/van-thu")
        )
    )
    assert set(dead) == {
        "https://hooks.example.gov.vn/van-thu",
        "person:nguyen.van.an",  # dead when written (no webhook contact)
        f"role:ghost@{UNIT}",  # dead when written (nobody holds the role), twice
    }
    delivered = [r for r in after.values() if r.status == "delivered"]
    assert len(delivered) == result.delivered and all(r.attempts == 1 for r in delivered)
    assert counts(engine) == {"delivered": len(delivered), "dead": len(after) - len(delivered)}

    # e-mail: one mail per row, found by its Message-ID, text intact
    mails = {m["Message-ID"]: (m, rcpt) for m, rcpt in zip(box.mails, box.rcpts, strict=True)}
    email_rows = [r for r in delivered if r.channel == "email"]
    assert len(box.mails) == len(email_rows) == len(mails)
    for r in email_rows:
        mail, rcpt = mails[f"<{r.id}@sangkien>"]
        assert mail["X-Sangkien-Message-Id"] == r.id
        assert mail["X-Sangkien-Instance-Id"] == iid
        assert rcpt == [r.recipient]
        assert mail["Subject"] == r.subject  # long Vietnamese ones too: see below
        assert mail.get_content().rstrip("\n") == r.body.rstrip("\n")
        if r.recipient_id:
            assert mail["To"].addresses[0].display_name == r.recipient_name
    subjects = {str(m["Subject"]) for m in box.mails}
    assert f"Nhắc hạn: Hạn thẩm định hồ sơ - {TITLE}" in subjects
    assert f"Đã tạo hồ sơ “{TITLE}” (Dự thảo)" in subjects

    # webhooks: one signed request per row, the id as webhook-id
    hook_rows = [r for r in delivered if r.channel == "webhook"]
    assert sorted(receiver.ids) == sorted(r.id for r in hook_rows)
    assert all(h.verified for h in receiver.hits)
    for h in receiver.hits:
        r = after[h.id]
        assert h.path == r.recipient.removeprefix(f"http://127.0.0.1:{receiver.port}")
        if r.kind == "event":
            assert h.body == get_message(engine, r.id).payload and h.body["id"] == r.id
        else:
            assert h.body == {
                "id": r.id,
                "subject": r.subject,
                "body": r.body,
                "recipient": r.recipient,
                "instance_id": iid,
            }
    types = Counter(h.body["type"] for h in receiver.hits if h.path.startswith("/events/all"))
    assert types == {
        "instance.started": 1,
        "transition.applied": 1,
        "deadline.reminder": 1,
        "deadline.missed": 1,
        "deadline.escalated": 2,
    }
    assert [m.recipient for m in zalo.messages] == ["0905123456"]
    db.close()


def test_long_vietnamese_subject_keeps_its_spaces(smtp: tuple[Mailbox, int]) -> None:
    """A long Vietnamese subject arrives with every space, wherever the header is folded."""
    box, port = smtp
    subject = f"Hồ sơ “{TITLE}” đã được nộp: Dự thảo → Đang thẩm định"
    message = OutgoingMessage(
        id="m-fold",
        kind="notification",
        channel="email",
        recipient="binh.tran@example.gov.vn",
        subject=subject,
        body="Kính gửi Ông/Bà Trần Thị Bình,",
    )
    SmtpAdapter("127.0.0.1", port).send(message)
    (mail,) = box.mails
    assert mail["Subject"] == subject


# --------------------------------------------------------------------------- retries


@pytest.fixture
def one_event(tmp_path: Path, receiver: Receiver) -> Iterator[tuple[Db, Any]]:
    """An engine whose only row is one `instance.started` event for the receiver."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db = Db(events_engine(url, receiver), url)
    db.engine.start("notify_events", actor=AN, data={"title": TITLE})
    (row,) = db.rows()
    yield db, row
    db.close()


def events_engine(url: str, receiver: Receiver) -> Engine:
    """An engine on the workflow without notify items, with one '*' subscriber."""
    return Engine(
        url,
        clock=FrozenClock(T0),
        migrate=True,
        workflows=[EVENTS],
        subscribers=[Subscriber(url=receiver.url("/events"))],
    )


def dispatcher(engine: Engine, **kwargs: Any) -> Dispatcher:
    """A dispatcher for the event webhook, with a seeded jitter."""
    kwargs.setdefault("rng", random.Random(2026))
    return Dispatcher(engine, {"webhook": webhook_adapter()}, **kwargs)


def test_receiver_down_then_up_is_delivered_after_retries(
    one_event: tuple[Db, Any], receiver: Receiver
) -> None:
    """503, then nothing listening, then up: delivered on the 3rd try, each error recorded."""
    db, row = one_event
    engine = db.engine
    d = dispatcher(engine, backoff=30)
    receiver.status = 503
    now = T0
    first = d.dispatch(now=now)
    assert (first.claimed, first.retried) == (1, 1)
    r = db.reload(row.id)
    assert (r.status, r.attempts, r.lease_owner) == ("pending", 1, None)
    url = receiver.url("/events")
    assert (
        r.last_error
        == f"temporary: message {row.id!r}: POST {url} answered 503 Service Unavailable"
    )
    assert timedelta(seconds=15) <= r.next_attempt_at - now <= timedelta(seconds=45)
    assert d.dispatch(now=r.next_attempt_at - timedelta(seconds=1)).claimed == 0  # not yet due

    receiver.stop()  # the receiver is down: connection refused
    now = r.next_attempt_at
    assert d.dispatch(now=now).retried == 1
    r = db.reload(row.id)
    assert (r.status, r.attempts) == ("pending", 2)
    assert r.last_error.startswith(
        f"temporary: message {row.id!r}: POST {url} failed: ConnectError"
    )
    assert timedelta(seconds=30) <= r.next_attempt_at - now <= timedelta(seconds=90)

    receiver.status = 200
    receiver.start(port=receiver.port)  # back, on the same port
    now = r.next_attempt_at + timedelta(seconds=1)
    assert d.dispatch(now=now).delivered == 1
    r = db.reload(row.id)
    assert (r.status, r.attempts, r.delivered_at, r.last_error) == ("delivered", 3, now, None)
    # the 503 try reached the receiver too: both with the same webhook-id, both signed
    assert receiver.ids == [row.id, row.id]
    assert all(h.verified for h in receiver.hits)
    assert d.dispatch(now=now + timedelta(days=1)).claimed == 0


def test_400_is_dead_after_one_try(one_event: tuple[Db, Any], receiver: Receiver) -> None:
    """A 400 from the receiver is permanent: dead after one try, not retried."""
    db, row = one_event
    engine = db.engine
    receiver.status = 400
    d = dispatcher(engine)
    assert d.dispatch(now=T0).dead == 1
    r = db.reload(row.id)
    assert (r.status, r.attempts) == ("dead", 1)
    assert r.last_error == (
        f"permanent: message {row.id!r}: POST {receiver.url('/events')} answered 400 Bad Request"
    )
    assert d.dispatch(now=T0 + timedelta(days=30)).claimed == 0
    assert receiver.ids == [row.id]
    assert [m.id for m in list_messages(engine, status="dead")] == [row.id]


def test_max_attempts_then_dead_then_retry_dead(
    one_event: tuple[Db, Any], receiver: Receiver
) -> None:
    """Temporary failures back off exponentially, die at max_attempts; retry_dead revives it."""
    db, row = one_event
    engine = db.engine
    receiver.status = 503
    d = dispatcher(engine, max_attempts=4, backoff=30, backoff_max=3600)
    now = T0
    for attempt in (1, 2, 3):
        assert d.dispatch(now=now).retried == 1
        r = db.reload(row.id)
        assert (r.status, r.attempts) == ("pending", attempt)
        base = 30 * 2 ** (attempt - 1)  # 30 s, 60 s, 120 s, with ±50 % jitter
        assert (
            timedelta(seconds=base * 0.5)
            <= r.next_attempt_at - now
            <= timedelta(seconds=base * 1.5)
        )
        now = r.next_attempt_at
    assert d.dispatch(now=now).dead == 1
    r = db.reload(row.id)
    assert (r.status, r.attempts) == ("dead", 4)
    assert r.last_error == (
        f"temporary: message {row.id!r}: POST {receiver.url('/events')} answered 503 "
        "Service Unavailable"
    )
    assert d.dispatch(now=now + timedelta(days=1)).claimed == 0
    assert receiver.ids == [row.id] * 4

    receiver.status = 200
    assert retry_dead(engine) == 0  # nothing chosen: nothing done
    assert retry_dead(engine, ids=[row.id]) == 1
    r = db.reload(row.id)
    assert (r.status, r.attempts, r.last_error) == ("pending", 0, None)
    assert d.dispatch(now=now + timedelta(days=1)).delivered == 1
    r = db.reload(row.id)
    assert (r.status, r.attempts) == ("delivered", 1)
    assert receiver.ids == [row.id] * 5
    assert counts(engine).get("dead", 0) == 0


def test_retry_dead_does_not_deliver_a_message_that_has_no_recipient(tmp_path: Path) -> None:
    """A message dead for want of a recipient is not 'delivered' by retrying it."""
    from sangkien.adapters.log import LogAdapter

    nobody_reviews = YamlDirectory.from_data(
        {
            "units": {UNIT: {"name": "Phòng Quản lý khoa học"}},
            "people": {"nguyen.van.an": {"name": "Nguyễn Văn An", "roles": {"clerk": UNIT}}},
        }
    )
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = Engine(
        url,
        clock=FrozenClock(T0),
        migrate=True,
        workflows=[WORKFLOW],
        directory=nobody_reviews,
        templates=TemplateStore([TEMPLATES, shipped_templates_dir()]),
        channels=["log"],
    )
    db = Db(engine, url)
    iid = engine.start("notify_review", actor=AN, data={"title": TITLE}).id
    engine.fire(iid, "submit", actor=AN)
    # the state's own notify, [reviewer] on the default channel: nobody holds the role
    (row,) = [r for r in db.rows() if r.template == "state_entered"]
    assert (row.channel, row.recipient, row.status) == ("log", f"role:reviewer@{UNIT}", "dead")
    assert row.last_error == f"no one holds role 'reviewer' in unit '{UNIT}'"
    retry_dead(engine, all_dead=True)
    Dispatcher(engine, {"log": LogAdapter()}).run()
    after = db.reload(row.id)
    db.close()
    assert after.status != "delivered", "a message to nobody was marked delivered"
    assert after.last_error and "no one holds role 'reviewer'" in after.last_error


# --------------------------------------------------------------------------- crashes


@pytest.fixture
def many_events(tmp_path: Path, receiver: Receiver) -> Iterator[tuple[Db, list[str]]]:
    """Twelve pending event rows for the receiver (twelve instances started)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db = Db(events_engine(url, receiver), url)
    for i in range(12):
        db.engine.start("notify_events", actor=AN, data={"title": f"{TITLE} số {i + 1}"})
    ids = [r.id for r in db.rows() if r.status == "pending"]
    assert len(ids) == 12
    yield db, ids
    db.close()


def test_claimed_and_dropped_batch_is_taken_over_after_the_lease(
    many_events: tuple[Db, list[str]], receiver: Receiver
) -> None:
    """A dispatcher that claims a batch and dies: another one delivers it once the lease expires."""
    db, ids = many_events
    engine = db.engine
    dead = dispatcher(engine, lease=60, owner="dies-mid-batch")
    claimed = dead.claim(5, T0)  # ... and never records anything
    assert [r.id for r in claimed] == ids[:5]
    leased = [db.reload(i) for i in ids[:5]]
    assert {(r.status, r.lease_owner, r.attempts) for r in leased} == {
        ("delivering", "dies-mid-batch", 1)
    }
    assert {r.lease_until for r in leased} == {T0 + timedelta(seconds=60)}

    survivor = dispatcher(engine, lease=60, owner="survivor")
    assert survivor.dispatch(now=T0).delivered == 7  # the others; the leased ones are left alone
    assert survivor.dispatch(now=T0 + timedelta(seconds=59)).claimed == 0
    taken = survivor.dispatch(now=T0 + timedelta(seconds=61))
    assert (taken.claimed, taken.delivered) == (5, 5)
    final = [db.reload(i) for i in ids]
    assert {r.status for r in final} == {"delivered"}
    assert [r.attempts for r in final] == [2] * 5 + [1] * 7  # the lost claim counts as a try
    assert sorted(receiver.ids) == sorted(ids)  # each exactly once: the dead one sent nothing


class _SlowReceiverAndARival:
    """The real webhook adapter on a receiver that takes *each* of the engine's clock per
    request; during the *rival_at*-th send, a second dispatcher runs a pass."""

    def __init__(self, clock: FrozenClock, each: timedelta, rival: Dispatcher, at: int) -> None:
        self.inner, self.clock, self.each, self.rival, self.at = (
            webhook_adapter(),
            clock,
            each,
            rival,
            at,
        )
        self.sends = 0
        self.rival_claimed = -1

    def send(self, message: OutgoingMessage) -> None:
        self.clock.advance(self.each)
        self.sends += 1
        if self.sends == self.at:
            self.rival_claimed = self.rival.dispatch(limit=100).claimed
        self.inner.send(message)


def _slow_with_a_rival(
    engine: Engine, each: timedelta, rival_at: int
) -> tuple[_SlowReceiverAndARival, Dispatcher]:
    """A dispatcher ("slow", lease 100 s) whose sends take *each*, and a rival ("rival",
    the same lease) that runs a pass during the *rival_at*-th send."""
    clock = engine.clock
    assert isinstance(clock, FrozenClock)
    rival = dispatcher(engine, lease=100, owner="rival")
    slow = _SlowReceiverAndARival(clock, each, rival, at=rival_at)
    return slow, Dispatcher(engine, {"webhook": slow}, lease=100, owner="slow")


def test_a_batch_longer_than_the_lease_keeps_its_rows(
    many_events: tuple[Db, list[str]], receiver: Receiver
) -> None:
    """A slow batch (5 sends of 40 s against a 100 s lease) renews its lease as it goes: a
    rival dispatcher polling 160 s in takes none of its rows, so none is sent twice."""
    db, ids = many_events
    slow, d = _slow_with_a_rival(db.engine, timedelta(seconds=40), rival_at=4)
    result = d.dispatch(limit=5)
    assert (result.claimed, result.delivered) == (5, 5)
    assert slow.rival_claimed == 7  # the rows nobody held; none of the slow batch
    assert Counter(receiver.ids) == {i: 1 for i in ids}  # every message exactly once
    assert {db.reload(i).status for i in ids} == {"delivered"}
    assert [db.reload(i).attempts for i in ids] == [1] * 12


def test_rows_whose_lease_ran_out_are_left_to_their_new_holder(
    many_events: tuple[Db, list[str]], receiver: Receiver
) -> None:
    """One send outlasts the whole lease: the rival takes the rest over, and the slow
    dispatcher, renewing, finds them gone and sends none of them (one line says so)."""
    db, ids = many_events
    slow, d = _slow_with_a_rival(db.engine, timedelta(seconds=150), rival_at=1)
    with capture_logs() as logs:
        result = d.dispatch(limit=5)
    # the first send (150 s) let the lease run out: the rival, polling during it, took
    # all 12 rows (that one too: it was still unrecorded) and delivered them
    assert slow.rival_claimed == 12
    assert (result.claimed, result.delivered) == (5, 1)
    lost = [e for e in logs if e["event"] == "outbox.lease_lost"]
    assert [e["message_ids"] for e in lost] == [[ids[0]], ids[1:5]]
    assert Counter(receiver.ids) == {i: 2 if i == ids[0] else 1 for i in ids}
    assert {db.reload(i).status for i in ids} == {"delivered"}


class _RecordFails(Dispatcher):
    """A dispatcher whose record of the *at*-th send fails once with *cause* (as the store
    raises it: a StoreError from the driver's error); on SQLite a real outage cannot be
    timed between a send and its record."""

    def __init__(self, *args: Any, at: int, cause: Exception, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.at, self.cause, self.records = at, cause, 0

    def _record(self, sent: Any) -> None:
        self.records += 1
        if self.records == self.at:
            raise StoreError(f"database error: {self.cause}") from self.cause
        super()._record(sent)


@pytest.mark.parametrize("status", [204, 503])
def test_an_outcome_the_database_could_not_take_is_recorded_at_the_next_pass(
    many_events: tuple[Db, list[str]], receiver: Receiver, status: int
) -> None:
    """The database is away while the third outcome is recorded (a delivery, or a 503 to
    retry): the next pass records that outcome instead of sending the message again,
    even after the lease ran out, as long as nobody else claimed the row."""
    db, ids = many_events
    receiver.queued = [200, 200, status]
    cause = sqlite3.OperationalError("disk I/O error")
    adapters = {"webhook": webhook_adapter()}
    d = _RecordFails(db.engine, adapters, lease=60, backoff=300, at=3, cause=cause)
    with pytest.raises(StoreError):
        d.dispatch(limit=5, now=T0)
    assert receiver.ids == ids[:3]
    assert db.reload(ids[2]).status == "delivering"  # the outcome is held, not recorded
    later = T0 + timedelta(seconds=120)  # the lease ran out; nobody claimed the row
    with capture_logs() as logs:
        again = d.dispatch(limit=12, now=later)
    assert (again.claimed, again.recorded_late) == (9, 1)  # 2 unsent + 7 never claimed
    assert Counter(receiver.ids) == {i: 1 for i in ids}  # the third was not sent again
    third = db.reload(ids[2])
    if status == 204:
        # delivered when it was sent
        assert (third.status, third.attempts, third.delivered_at) == ("delivered", 1, T0)
    else:  # a retry, due a backoff (150-450 s) after the try
        assert (third.status, third.attempts) == ("pending", 1)
        assert "503" in third.last_error and third.next_attempt_at > later
    (settled,) = [e for e in logs if e["event"] == "outbox.stranded_given_back"]
    assert (settled["recorded_late"], settled["unsent"]) == (ids[2], 2)
    lines = [e["message_id"] for e in logs if e["event"] == "delivery"]
    assert lines[0] == ids[2] and len(lines) == 10  # one line per send, the held one first


def test_a_stopping_worker_settles_what_it_holds(
    many_events: tuple[Db, list[str]], receiver: Receiver
) -> None:
    """settle() (what a worker does as it stops) records a held outcome and gives the
    unsent rows back; with nothing held it has nothing to do."""
    db, ids = many_events
    cause = sqlite3.OperationalError("database is locked")
    d = _RecordFails(db.engine, {"webhook": webhook_adapter()}, lease=60, at=1, cause=cause)
    with pytest.raises(StoreError):
        d.dispatch(limit=5, now=T0)
    assert d.settle() is True
    assert [db.reload(i).status for i in ids[:5]] == ["delivered"] + ["pending"] * 4
    assert [db.reload(i).attempts for i in ids[:5]] == [1, 0, 0, 0, 0]
    assert receiver.ids == ids[:1]
    assert d.settle() is True


class _RefusesOne(Dispatcher):
    """A dispatcher whose every record of one message's outcome the database refuses (as
    the store raises it: a StoreError from the driver's IntegrityError)."""

    def __init__(self, *args: Any, refused: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused = refused

    def _record(self, sent: Any) -> None:
        if sent.row.id == self.refused:
            cause = sqlite3.IntegrityError("CHECK constraint failed")
            raise StoreError(f"database error: {cause}") from cause
        super()._record(sent)


def test_an_outcome_the_database_refuses_is_given_back_as_a_failed_try(
    many_events: tuple[Db, list[str]], receiver: Receiver
) -> None:
    """A record the database refuses (not an outage: it refuses it every time) is not
    held, which would fail every later pass. The batch goes on; the message counts as a
    failed try, due again after the backoff and dead after max_attempts: it goes out a
    bounded number of times, and an error line names it each time."""
    db, ids = many_events
    d = _RefusesOne(
        db.engine, {"webhook": webhook_adapter()}, lease=60, max_attempts=3, refused=ids[1]
    )
    with capture_logs() as logs:
        first = d.dispatch(limit=5, now=T0)
    assert (first.claimed, first.delivered, first.retried) == (5, 4, 1)  # the batch went on
    (refused,) = [e for e in logs if e["event"] == "outbox.outcome_unrecordable"]
    assert (refused["message_id"], refused["outcome"]) == (ids[1], "delivered")
    row = db.reload(ids[1])
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.next_attempt_at > T0 and "could not be recorded" in row.last_error
    assert d.dispatch(limit=12, now=T0).claimed == 7  # the others; it waits out its backoff
    for hour in range(1, 6):
        d.dispatch(limit=12, now=T0 + timedelta(hours=hour))
    assert db.reload(ids[1]).status == "dead"
    assert Counter(receiver.ids) == {i: 3 if i == ids[1] else 1 for i in ids}


def test_failure_texts_are_stored_escaped(
    many_events: tuple[Db, list[str]], receiver: Receiver
) -> None:
    """A receiver's reply with bytes no database column takes (a lone surrogate from a
    mis-decoded reply, a NUL) is stored escaped, so its outcome is recorded."""
    db, ids = many_events
    adapter = RecordingAdapter("webhook")
    adapter.fail_next(1, reason="bad reply \udcff\x00")
    d = Dispatcher(db.engine, {"webhook": adapter})
    assert d.dispatch(limit=1, now=T0).retried == 1
    row = db.reload(ids[0])
    assert row.status == "pending" and row.last_error.endswith("bad reply \\udcff\\x00")


class _InterruptedMidSend:
    """The real webhook adapter, but the *at*-th send is interrupted (Ctrl-C) after its
    request went out, before it returned: as a process stopping inside a send."""

    def __init__(self, at: int) -> None:
        self.inner, self.at, self.sends = webhook_adapter(), at, 0

    def send(self, message: OutgoingMessage) -> None:
        self.inner.send(message)
        self.sends += 1
        if self.sends == self.at:
            raise KeyboardInterrupt


def test_a_send_interrupted_is_sent_again_and_the_rest_given_back(
    many_events: tuple[Db, list[str]], receiver: Receiver
) -> None:
    """A pass stopped inside a send: the next pass gives its rows back without waiting out
    the lease. The interrupted message may have gone out, so it goes again (same id);
    those never sent keep a single attempt."""
    db, ids = many_events
    d = Dispatcher(db.engine, {"webhook": _InterruptedMidSend(at=3)}, lease=300)
    with pytest.raises(KeyboardInterrupt):
        d.dispatch(limit=5, now=T0)
    assert receiver.ids == ids[:3]
    assert [db.reload(i).status for i in ids[:5]] == ["delivered"] * 2 + ["delivering"] * 3
    again = d.dispatch(limit=12, now=T0)  # long before the 300 s lease ends
    assert (again.claimed, again.delivered) == (10, 10)
    assert Counter(receiver.ids) == {i: 2 if i == ids[2] else 1 for i in ids}
    final = [db.reload(i) for i in ids]
    assert {r.status for r in final} == {"delivered"}
    assert [r.attempts for r in final] == [1, 1, 2] + [1] * 9  # the unsent: one try each


VICTIM = textwrap.dedent(
    """
    import sys
    from datetime import datetime
    from sangkien import Engine
    from sangkien.adapters.webhook import WebhookAdapter
    from sangkien.outbox import Dispatcher

    url, secret, now = sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])
    engine = Engine(url, migrate=False)
    adapter = WebhookAdapter(secret, allowed_hosts=["127.0.0.1"], timeout=5)
    d = Dispatcher(engine, {"webhook": adapter}, lease=30, owner="victim")
    print("dispatching", flush=True)
    d.dispatch(limit=100, now=now)
    print("finished", flush=True)
    """
)


def test_sigkilled_dispatcher_loses_nothing(
    many_events: tuple[Db, list[str]], receiver: Receiver
) -> None:
    """A dispatcher process killed with SIGKILL mid-batch: after its lease, every id arrives."""
    db, ids = many_events
    engine, url = db.engine, db.url
    receiver.delay = 0.2  # slow enough to kill the process part-way through its batch
    proc = subprocess.Popen(
        [sys.executable, "-c", VICTIM, url, SECRET, T0.isoformat()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(receiver.ids) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert len(receiver.ids) >= 3, proc.stderr.read() if proc.poll() is not None else ""
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    receiver.delay = 0.0
    seen_before = len(receiver.ids)
    statuses = Counter(db.reload(i).status for i in ids)
    assert statuses["delivering"] >= 12 - seen_before  # claimed by the victim, not recorded
    assert statuses["pending"] == 0

    survivor = dispatcher(engine, lease=30, owner="survivor")
    assert survivor.dispatch(now=T0 + timedelta(seconds=29)).claimed == 0  # still leased
    survivor.dispatch(now=T0 + timedelta(seconds=31))
    final = [db.reload(i) for i in ids]
    assert {r.status for r in final} == {"delivered"}  # nothing lost
    seen = Counter(receiver.ids)
    assert set(seen) == set(ids)  # every id arrived
    duplicates = sum(n - 1 for n in seen.values())
    # only a request in flight when the process died can arrive twice, with the same id
    assert duplicates <= 1, seen
    assert all(h.verified for h in receiver.hits)


@pytest.mark.parametrize(
    ("cause", "away"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (sqlite3.IntegrityError("CHECK constraint failed"), False),
        (UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"), False),
        (KeyboardInterrupt(), True),
    ],
)
def test_which_failed_records_count_as_the_database_being_away(
    tmp_path: Path, cause: BaseException, away: bool
) -> None:
    """An outage (held: recorded later) against a refusal (given back as a failed try)."""
    from sangkien.outbox import _database_away

    with Engine(f"sqlite:///{tmp_path / 'db.sqlite'}", migrate=True) as engine:
        wrapped: BaseException = cause
        if isinstance(cause, sqlite3.Error):
            wrapped = StoreError(f"database error: {cause}")
            wrapped.__cause__ = sa.exc.DBAPIError.instance(None, None, cause, sqlite3.Error)
        assert _database_away(wrapped, engine) is away


def test_a_write_reaching_a_read_only_standby_counts_as_away(tmp_path: Path) -> None:
    """PostgreSQL answers a write on a standby (a failover under way) with SQLSTATE 25006,
    an InternalError: the outcome is held, not given back to be sent again."""
    import psycopg

    from sangkien.outbox import _database_away

    err = psycopg.errors.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction")
    wrapped = StoreError(f"database error: {err}")
    wrapped.__cause__ = sa.exc.InternalError("UPDATE sk_outbox …", None, err)
    with Engine(f"sqlite:///{tmp_path / 'db.sqlite'}", migrate=True) as engine:
        assert _database_away(wrapped, engine) is True
        wrapped.__cause__ = sa.exc.IntegrityError("UPDATE sk_outbox …", None, ValueError("x"))
        assert _database_away(wrapped, engine) is False
