"""Notifications become outbox rows in the transaction of the event that causes them.

One workflow (tests/workflows/notify_review.yaml, templates in tests/templates/vi/) notifies
on start (the initial state), on a transition (roles, author, role@parent, a role nobody
holds, literal addresses), on entering a state, on a deadline's reminder and overdue notice
and on a two-step escalation that climbs to the parent units. The directory is built here
from data. Time moves only through a FrozenClock. Runs on SQLite and PostgreSQL.

The calendar: `submit` at 10:00 on Monday 2/3/2026 (Vietnam) enters `reviewing`, due after
5 working days, i.e. at the end of Monday 9/3/2026; the reminder 2 working days before fires
at 08:00 on Thursday 5/3; escalation 1 at the due time, escalation 2 two working days later
(end of Wednesday 11/3).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa

from sangkien import Actor, ConcurrencyConflict, Engine, FrozenClock, TransitionNotAllowed
from sangkien.config.settings import Subscriber
from sangkien.directory import YamlDirectory
from sangkien.outbox import get_message
from sangkien.store import schema as t
from sangkien.store.db import create_db_engine
from sangkien.templates import TemplateStore, shipped_templates_dir

HERE = Path(__file__).resolve().parent
WORKFLOW = HERE / "workflows" / "notify_review.yaml"
TEMPLATES = HERE / "templates"
LINK = "https://portal.example.gov.vn/sang-kien/{instance_id}"
TITLE = "Cải tiến quy trình tiếp nhận hồ sơ"
UNIT = "phong-qlkh"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


T0 = utc(2026, 3, 2, 2, 0)  # Monday 2/3/2026, 09:00 in Vietnam: start
T_SUBMIT = utc(2026, 3, 2, 3, 0)  # 10:00 in Vietnam: submit
REMIND = utc(2026, 3, 5, 1, 0)  # 08:00 on Thursday 5/3, 2 working days before the due day
DUE = utc(2026, 3, 9, 16, 59, 59, 999999)  # end of Monday 9/3 in Vietnam
ESC2 = utc(2026, 3, 11, 16, 59, 59, 999999)  # end of Wednesday 11/3: 2 working days later

DIRECTORY = {
    "units": {
        "tinh-qn": {"name": "Ủy ban nhân dân tỉnh Quảng Ngãi", "level": "province"},
        "so-khcn": {"name": "Sở Khoa học và Công nghệ", "parent": "tinh-qn"},
        UNIT: {"name": "Phòng Quản lý khoa học", "parent": "so-khcn"},
    },
    "people": {
        "nguyen.van.an": {
            "name": "Nguyễn Văn An",
            "contacts": {"email": "an.nguyen@example.gov.vn"},
            "roles": {"clerk": UNIT},
        },
        "tran.thi.binh": {
            "name": "Trần Thị Bình",
            "contacts": {
                "email": "binh.tran@example.gov.vn",
                "webhook": "https://hooks.example.gov.vn/binh",
            },
            "roles": {"reviewer": UNIT},
        },
        "le.van.cuong": {
            "name": "Lê Văn Cường",
            "contacts": {"email": "cuong.le@example.gov.vn"},
            "roles": {"unit_head": UNIT},
        },
        "pham.thi.dung": {
            "name": "Phạm Thị Dung",
            "contacts": {"email": "dung.pham@example.gov.vn"},
            "roles": {"unit_head": "so-khcn", "director": "so-khcn"},
        },
        "hoang.van.em": {
            "name": "Hoàng Văn Em",
            "contacts": {"email": "em.hoang@example.gov.vn"},
            "roles": {"chairman": "tinh-qn"},
        },
    },
}

AN = Actor("nguyen.van.an", ["clerk"], UNIT)
CUONG = Actor("le.van.cuong", ["unit_head"], UNIT)
ALL = Subscriber(url="https://host.example.vn/hooks/all")
TRANSITIONS = Subscriber(
    url="https://host.example.vn/hooks/transitions", events=["transition.applied"]
)
DEADLINES = Subscriber(
    url="https://host.example.vn/hooks/deadlines", events=["deadline.missed", "deadline.escalated"]
)


def directory() -> YamlDirectory:
    return YamlDirectory.from_data(DIRECTORY, file="<test directory>")


def make_engine(
    database: Any,
    clock: FrozenClock,
    *,
    subscribers: list[Subscriber] | None = None,
    templates: Path = TEMPLATES,
    **kwargs: Any,
) -> Engine:
    kwargs.setdefault("directory", directory())
    return Engine(
        database,
        clock=clock,
        templates=TemplateStore([templates, shipped_templates_dir()]),
        channels=["email", "webhook"],
        link_pattern=LINK,
        subscribers=subscribers if subscribers is not None else [ALL, TRANSITIONS, DEADLINES],
        **kwargs,
    )


class Outbox:
    """Reads sk_outbox through a connection pool of its own (not the engine's)."""

    def __init__(self, url: str) -> None:
        self.db = sa.create_engine(url)

    def rows(self) -> list[Any]:
        """Every outbox row, in insertion order (ids are time-ordered)."""
        with self.db.connect() as conn:
            return list(
                conn.execute(sa.select(t.outbox).order_by(t.outbox.c.created_at, t.outbox.c.id))
            )

    def count(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t.outbox)).scalar_one())

    def close(self) -> None:
        self.db.dispose()


class Env(NamedTuple):
    engine: Engine
    clock: FrozenClock
    box: Outbox


@pytest.fixture
def env(db_url: str) -> Iterator[Env]:
    clock = FrozenClock(T0)
    engine = make_engine(db_url, clock, migrate=True, workflows=[WORKFLOW])
    box = Outbox(db_url)
    yield Env(engine, clock, box)
    box.close()
    engine.close()


def notes(rows: list[Any]) -> list[Any]:
    return [r for r in rows if r.kind == "notification"]


def events(rows: list[Any]) -> list[Any]:
    return [r for r in rows if r.kind == "event"]


def shape(rows: list[Any]) -> set[tuple[str, str, str | None, str, str | None]]:
    """(channel, recipient, recipient_id, status, template) of each notification row."""
    return {(r.channel, r.recipient, r.recipient_id, r.status, r.template) for r in notes(rows)}


def start(engine: Engine, clock: FrozenClock, **data: Any) -> str:
    clock.set(T0)
    return engine.start("notify_review", actor=AN, data={"title": TITLE, **data}).id


def submit(engine: Engine, clock: FrozenClock, iid: str) -> None:
    clock.set(T_SUBMIT)
    engine.fire(iid, "submit", actor=AN, comment="Kính trình lãnh đạo xem xét")


# --------------------------------------------------------------------------- start


def test_start_notifies_the_initial_state(env: Env) -> None:
    """Starting writes the initial state's message and the `instance.started` event."""
    engine, clock, box = env
    iid = start(engine, clock)
    rows = box.rows()
    assert shape(rows) == {
        ("email", "an.nguyen@example.gov.vn", "nguyen.van.an", "pending", "notify_created")
    }
    (note,) = notes(rows)
    assert note.subject == f"Đã tạo hồ sơ “{TITLE}” (Dự thảo)"
    assert note.recipient_name == "Nguyễn Văn An"
    assert note.instance_id == iid and note.event_seq == 1
    assert note.created_at == T0 and note.next_attempt_at == T0 and note.attempts == 0
    assert "Kính gửi Ông/Bà Nguyễn Văn An," in note.body
    assert "Phòng Quản lý khoa học" in note.body  # the unit's name from the directory
    assert f"Xem hồ sơ: {LINK.format(instance_id=iid)}" in note.body
    assert [(e.recipient, e.subject) for e in events(rows)] == [(ALL.url, "instance.started")]


# --------------------------------------------------------------------------- transition


def test_transition_and_state_entry_rows(env: Env) -> None:
    """submit writes a row per recipient and channel, rendered in Vietnamese with the link."""
    engine, clock, box = env
    iid = start(engine, clock)
    before = box.count()
    submit(engine, clock, iid)
    rows = box.rows()[before:]
    sub = "notify_submitted"
    assert shape(rows) == {
        # {to: [reviewer, author], channels: [email, webhook]}
        ("email", "binh.tran@example.gov.vn", "tran.thi.binh", "pending", sub),
        ("webhook", "https://hooks.example.gov.vn/binh", "tran.thi.binh", "pending", sub),
        ("email", "an.nguyen@example.gov.vn", "nguyen.van.an", "pending", sub),
        ("webhook", "person:nguyen.van.an", "nguyen.van.an", "dead", sub),  # no webhook contact
        # unit_head@parent: the head of so-khcn, not of the instance's unit
        ("email", "dung.pham@example.gov.vn", "pham.thi.dung", "pending", sub),
        # a role nobody holds in the unit (no climbing outside escalations)
        ("email", f"role:ghost@{UNIT}", None, "dead", sub),
        # literal addresses
        ("email", "vanthu@example.gov.vn", None, "pending", sub),
        ("webhook", "https://hooks.example.gov.vn/van-thu", None, "pending", sub),
        ("zalo", "0905123456", None, "pending", sub),
        # the state's own notify: [reviewer] on every configured channel, default template
        ("email", "binh.tran@example.gov.vn", "tran.thi.binh", "pending", "state_entered"),
        (
            "webhook",
            "https://hooks.example.gov.vn/binh",
            "tran.thi.binh",
            "pending",
            "state_entered",
        ),
    }
    assert len(notes(rows)) == 11
    dead = {r.recipient: r.last_error for r in rows if r.status == "dead"}
    assert dead == {
        "person:nguyen.van.an": "Nguyễn Văn An (nguyen.van.an) has no webhook address in the "
        "directory",
        f"role:ghost@{UNIT}": f"no one holds role 'ghost' in unit '{UNIT}'",
    }
    link = LINK.format(instance_id=iid)
    for r in notes(rows):
        assert r.instance_id == iid and r.event_seq == 2 and r.created_at == T_SUBMIT
        if r.status == "dead":
            assert r.subject == "" and r.body == ""
            continue
        assert link in r.body
        if r.template == sub:
            assert r.subject == f"Hồ sơ “{TITLE}” đã được nộp: Dự thảo → Đang thẩm định"
            assert "đã thực hiện “Nộp hồ sơ” lúc 10:00 ngày 02/03/2026." in r.body
            assert "Ý kiến: Kính trình lãnh đạo xem xét" in r.body
        else:
            assert r.subject == f"[Hồ sơ sáng kiến] {TITLE}: Đang thẩm định"
            assert 'đã chuyển sang trạng thái "Đang thẩm định" lúc 10:00 ngày 02/03/2026' in r.body
    names = {r.recipient: r.recipient_name for r in notes(rows)}
    assert names["binh.tran@example.gov.vn"] == "Trần Thị Bình"
    assert names["dung.pham@example.gov.vn"] == "Phạm Thị Dung"
    assert (
        "Kính gửi Ông/Bà Phạm Thị Dung,"
        in get_message(
            engine, next(r.id for r in rows if r.recipient == "dung.pham@example.gov.vn")
        ).body
    )
    assert sorted((e.recipient, e.subject) for e in events(rows)) == [
        (ALL.url, "transition.applied"),
        (TRANSITIONS.url, "transition.applied"),
    ]


def test_author_starter_role_and_actor(env: Env) -> None:
    """approve tells the starter-held role `applicant` (the starter) and the actor."""
    engine, clock, box = env
    iid = start(engine, clock)
    submit(engine, clock, iid)
    before = box.count()
    clock.set(utc(2026, 3, 3, 2, 0))
    engine.fire(iid, "approve", actor=CUONG)
    rows = box.rows()[before:]
    # channels not given: every configured channel the person has an address for; An and
    # Cường have no webhook contact, which is not an error when channels are not asked for
    assert shape(rows) == {
        ("email", "an.nguyen@example.gov.vn", "nguyen.van.an", "pending", "transition"),
        ("email", "cuong.le@example.gov.vn", "le.van.cuong", "pending", "transition"),
    }
    for r in notes(rows):
        assert r.subject == f"[Hồ sơ sáng kiến] Phê duyệt: {TITLE}"
        assert "- Trạng thái: Đang thẩm định → Đã phê duyệt" in r.body


def test_event_actor_is_the_name_from_the_directory(env: Env) -> None:
    """{{ event.actor }} is the acting person's name when the directory knows them."""
    engine, clock, box = env
    iid = start(engine, clock)
    submit(engine, clock, iid)
    row = next(r for r in box.rows() if r.recipient == "dung.pham@example.gov.vn")
    assert "Nguyễn Văn An đã thực hiện “Nộp hồ sơ”" in row.body


# --------------------------------------------------------------------------- deadlines


def test_reminder_due_notice_and_escalations_climb(env: Env) -> None:
    """Reminder and due notice go to the reviewer; escalations climb to the parent units."""
    engine, clock, box = env
    iid = start(engine, clock)
    submit(engine, clock, iid)
    (deadline,) = engine.deadlines(iid)
    assert deadline.due_at == DUE and deadline.next_action_at == REMIND

    def tick(at: datetime) -> list[Any]:
        before = box.count()
        clock.set(at)
        engine.tick(now=at)
        return box.rows()[before:]

    binh = {
        ("email", "binh.tran@example.gov.vn", "tran.thi.binh", "pending"),
        ("webhook", "https://hooks.example.gov.vn/binh", "tran.thi.binh", "pending"),
    }
    reminder = tick(REMIND)
    assert {s[:4] for s in shape(reminder)} == binh
    assert {r.template for r in notes(reminder)} == {"reminder"}
    for r in notes(reminder):
        assert r.subject == f"Nhắc hạn: Hạn thẩm định hồ sơ - {TITLE}"
        assert "- Hạn thẩm định hồ sơ: hết hạn lúc 23:59 ngày 09/03/2026" in r.body
        assert LINK.format(instance_id=iid) in r.body
    assert [(e.recipient, e.subject) for e in events(reminder)] == [(ALL.url, "deadline.reminder")]

    due = tick(DUE)  # the due notice, then escalation 1 (after: 0 days)
    by_template: dict[str, set[tuple[str, str, str | None, str]]] = {}
    for s in shape(due):
        by_template.setdefault(str(s[4]), set()).add(s[:4])
    assert by_template == {
        "deadline_missed": binh,
        # unit_head is held in the instance's unit: found there
        "escalation": {("email", "cuong.le@example.gov.vn", "le.van.cuong", "pending")},
    }
    subjects = {r.template: r.subject for r in notes(due)}
    assert subjects["deadline_missed"] == f"Quá hạn: Hạn thẩm định hồ sơ - {TITLE}"
    assert subjects["escalation"] == f"Báo cáo quá hạn: Hạn thẩm định hồ sơ - {TITLE}"
    assert sorted((e.recipient, e.subject) for e in events(due)) == [
        (ALL.url, "deadline.escalated"),
        (ALL.url, "deadline.missed"),
        (DEADLINES.url, "deadline.escalated"),
        (DEADLINES.url, "deadline.missed"),
    ]

    esc2 = tick(ESC2)
    assert shape(esc2) == {
        # nobody is director in phong-qlkh: found in its parent so-khcn
        ("email", "dung.pham@example.gov.vn", "pham.thi.dung", "pending", "notify_escalated"),
        # chairman: two levels up, in tinh-qn
        ("email", "em.hoang@example.gov.vn", "hoang.van.em", "pending", "notify_escalated"),
        # nobody anywhere: a dead row naming every unit tried
        ("email", f"role:ghost@{UNIT}", None, "dead", "notify_escalated"),
    }
    dead = next(r for r in esc2 if r.status == "dead")
    assert dead.last_error.startswith("no one holds role 'ghost' in unit ")
    assert all(unit in dead.last_error for unit in (UNIT, "so-khcn", "tinh-qn"))
    for r in notes(esc2):
        if r.status == "pending":
            assert r.subject == f"Cảnh báo quá hạn lần 2/2: Hạn thẩm định hồ sơ – {TITLE}"
            assert "(hết hạn lúc 23:59 ngày 09/03/2026)" in r.body
            assert r.body.startswith(f"Kính gửi Ông/Bà {r.recipient_name},")
    assert sorted(e.recipient for e in events(esc2)) == [ALL.url, DEADLINES.url]
    history = [e.kind for e in engine.history(iid)]
    assert history[-4:] == ["reminder", "deadline_missed", "escalation", "escalation"]


def test_climbing_reason_quotes_each_unit(env: Env) -> None:
    """The dead row of an escalation nobody answers names each unit tried, quoted."""
    engine, clock, box = env
    iid = start(engine, clock)
    submit(engine, clock, iid)
    clock.set(ESC2)
    engine.tick(now=ESC2)
    dead = [r for r in box.rows() if r.template == "notify_escalated" and r.status == "dead"]
    assert [r.last_error for r in dead] == [
        f"no one holds role 'ghost' in unit '{UNIT}' or 'so-khcn' or 'tinh-qn'"
    ]


def test_reminders_know_how_many_there_are(db_url: str) -> None:
    """With two reminders, each message says which one it is: 'Lần nhắc: 1/2', then 2/2."""
    clock = FrozenClock(T0)
    engine = make_engine(
        db_url, clock, migrate=True, workflows=[HERE / "workflows" / "notify_reminders.yaml"]
    )
    engine.start("notify_reminders", actor=AN, data={"title": TITLE})
    for at in (REMIND, utc(2026, 3, 6, 1, 0)):  # 08:00 on Thursday 5/3 and Friday 6/3
        clock.set(at)
        engine.tick(now=at)
    box = Outbox(db_url)
    bodies = [r.body for r in notes(box.rows()) if r.template == "reminder"]
    box.close()
    engine.close()
    assert len(bodies) == 2
    assert "- Lần nhắc: 1/2" in bodies[0] and "- Lần nhắc: 2/2" in bodies[1]


@pytest.mark.postgresql
def test_a_long_name_does_not_block_the_workflow(pg_url: str) -> None:
    """A directory name longer than 255 characters never makes the transition fail."""
    data = json.loads(json.dumps(DIRECTORY))
    data["people"]["nguyen.van.an"]["name"] = "Nguyễn Văn An " * 25  # 350 characters
    clock = FrozenClock(T0)
    engine = make_engine(
        pg_url, clock, migrate=True, workflows=[WORKFLOW], directory=YamlDirectory.from_data(data)
    )
    box = Outbox(pg_url)
    try:
        iid = start(engine, clock)  # notifies the author, whose name is long
        assert [r.recipient for r in notes(box.rows())] == ["an.nguyen@example.gov.vn"]
        assert engine.get(iid).state == "draft"
    finally:
        box.close()
        engine.close()


# --------------------------------------------------------------------------- event webhooks


def test_event_webhooks_filtered_by_type(env: Env) -> None:
    """Each subscriber gets only the event types it asked for; the payload is versioned."""
    engine, clock, box = env
    iid = start(engine, clock)
    submit(engine, clock, iid)
    late = utc(2026, 3, 10, 0, 0)  # 07:00 on 10/3: the worker was down since before the reminder
    clock.set(late)
    engine.tick(now=late)
    clock.set(utc(2026, 3, 10, 2, 0))
    engine.fire(iid, "approve", actor=CUONG)
    got: dict[str, list[str]] = {}
    for e in events(box.rows()):
        got.setdefault(e.recipient, []).append(e.subject)
    assert got == {
        ALL.url: [
            "instance.started",
            "transition.applied",
            # the reminder was due before the due time but handled after it: skipped
            "deadline.reminder_skipped",
            "deadline.missed",
            "deadline.escalated",
            "transition.applied",
        ],
        TRANSITIONS.url: ["transition.applied", "transition.applied"],
        DEADLINES.url: ["deadline.missed", "deadline.escalated"],
    }
    last = [e for e in events(box.rows()) if e.recipient == TRANSITIONS.url][-1]
    assert last.status == "pending" and last.channel == "webhook" and last.template is None
    payload = get_message(engine, last.id).payload
    assert set(payload) == {"type", "version", "id", "occurred_at", "data"}
    assert payload["type"] == "transition.applied" and payload["version"] == 1
    assert payload["id"] == last.id  # the webhook-id receivers dedupe on
    assert datetime.fromisoformat(payload["occurred_at"]) == utc(2026, 3, 10, 2, 0)
    assert payload["data"]["instance"] == {
        "id": iid,
        "workflow": "notify_review",
        "workflow_version": 1,
        "state": "approved",
        "unit": UNIT,
        "parent_id": None,
        "external_ref": None,
        "version": payload["data"]["instance"]["version"],
    }
    event = payload["data"]["event"]
    assert (event["kind"], event["trigger"], event["from_state"], event["to_state"]) == (
        "transition",
        "approve",
        "reviewing",
        "approved",
    )
    assert event["actor"] == {"id": "le.van.cuong", "roles": ["unit_head"], "unit": UNIT}
    assert event["automatic"] is False
    assert event["seq"] == engine.history(iid)[-1].seq
    assert event["hash"] == engine.history(iid)[-1].hash
    json.dumps(payload)  # JSON as stored


# --------------------------------------------------------------------------- failures


def test_template_error_is_a_dead_row_with_the_reason(tmp_path: Path) -> None:
    """A template that fails to render (edited after publishing) gives dead rows, not blanks."""
    folder = tmp_path / "templates"
    shutil.copytree(TEMPLATES, folder)
    clock = FrozenClock(T0)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(url, clock, templates=folder, workflows=[WORKFLOW])
    box = Outbox(url)
    iid = start(engine, clock)
    path = folder / "vi" / "notify_submitted.txt"
    path.write_text(
        "Subject: Hồ sơ {{ data.titel }}\n\nKính gửi Ông/Bà {{ recipient.name }},\n",
        encoding="utf-8",
    )
    submit(engine, clock, iid)
    rows = notes(box.rows())
    broken = [r for r in rows if r.template == "notify_submitted"]
    assert len(broken) == 9 and {r.status for r in broken} == {"dead"}
    reason = (
        f"template 'notify_submitted': {path}:1: template 'notify_submitted' (vi): "
        "undefined variable 'data.titel'"
    )
    literal = next(r for r in broken if r.recipient == "vanthu@example.gov.vn")
    assert literal.last_error == reason and literal.subject == "" and literal.body == ""
    # the other messages of the same transition are unaffected
    assert {r.status for r in rows if r.template == "state_entered"} == {"pending"}
    box.close()
    engine.close()


def test_refused_transition_writes_no_row(env: Env) -> None:
    """A refused transition (guard, role, stale version) leaves the outbox as it was."""
    engine, clock, box = env
    iid = start(engine, clock, amount=150)
    submit(engine, clock, iid)
    before = box.rows()
    with pytest.raises(TransitionNotAllowed, match="số tiền vượt thẩm quyền"):
        engine.fire(iid, "approve", actor=CUONG)
    with pytest.raises(TransitionNotAllowed):
        engine.fire(iid, "approve", actor=AN)  # not a unit_head
    with pytest.raises(ConcurrencyConflict):
        engine.fire(iid, "submit", actor=AN, expected_version=1)
    assert [r.id for r in box.rows()] == [r.id for r in before]
    assert engine.get(iid).state == "reviewing"


def _host_engine(url: str) -> sa.Engine:
    return create_db_engine(url)


def test_host_transaction_rollback_takes_the_messages(db_url: str) -> None:
    """With Engine(connection), the host's rollback removes the messages with the transition."""
    clock = FrozenClock(T0)
    setup = make_engine(db_url, clock, migrate=True, workflows=[WORKFLOW])
    iid = start(setup, clock)
    box = Outbox(db_url)
    before = box.count()
    box.close()
    setup.close()

    host = _host_engine(db_url)
    clock.set(T_SUBMIT)
    with host.connect() as conn:
        tx = conn.begin()
        engine = make_engine(conn, clock)
        engine.fire(iid, "submit", actor=AN)
        inside = conn.execute(sa.select(sa.func.count()).select_from(t.outbox)).scalar_one()
        assert inside == before + 11 + 2  # 11 notifications, 2 events, in the host's transaction
        tx.rollback()
    with host.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.outbox)).scalar_one() == before
        state = conn.execute(sa.select(t.instances.c.state).where(t.instances.c.id == iid))
        assert state.scalar_one() == "draft"

    # the same work committed by the host: the rows are there
    with host.begin() as conn:
        make_engine(conn, clock).fire(iid, "submit", actor=AN)
    with host.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(t.outbox)).scalar_one()
    assert n == before + 13
    host.dispose()


# --------------------------------------------------------------------------- secrets

SMTP_USER = "sangkien"
SMTP_PASSWORD = "mật-khẩu-SMTP-Bí-Mật-9f3c"
WEBHOOK_SECRET = "whsec_c2FuZ2tpZW4tdGVzdC1zZWNyZXQtZG8tbm90LWxlYWs="


@pytest.fixture
def captured_logs() -> Iterator[StringIO]:
    """structlog configured by sangkien.logs to write JSON lines into a StringIO."""
    from sangkien.logs import configure_logging

    stream = StringIO()
    configure_logging("json", "DEBUG", stream=stream)  # undone by conftest's autouse fixture
    yield stream


def _smtp_server(password: str) -> tuple[Any, int, list[bytes]]:
    import socket

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    received: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.content)
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and data.password == password.encode()
        return AuthResult(success=ok, handled=False)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    return controller, port, received


def _webhook_server(statuses: list[int]) -> tuple[ThreadingHTTPServer, list[bytes]]:
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(statuses.pop(0) if statuses else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, received


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_no_secret_in_outbox_rows_or_logs(
    tmp_path: Path, captured_logs: StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SMTP password and webhook secret (from env) appear in no outbox row and no log line."""
    from sangkien.adapters.email import SmtpAdapter
    from sangkien.bootstrap import dispatcher_from_settings, engine_from_settings
    from sangkien.config import Settings
    from sangkien.outbox import Dispatcher

    controller, smtp_port, mails = _smtp_server(SMTP_PASSWORD)
    server, hooks = _webhook_server([500])  # the first webhook fails once (an error is logged)
    port = server.server_address[1]
    people = json.loads(json.dumps(DIRECTORY))
    people["people"]["tran.thi.binh"]["contacts"]["webhook"] = f"http://127.0.0.1:{port}/binh"
    dir_file = tmp_path / "directory.yaml"  # JSON is YAML
    dir_file.write_text(json.dumps(people, ensure_ascii=False), encoding="utf-8")
    for key, value in {
        "SANGKIEN_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "SANGKIEN_CHANNELS": "log,email,webhook",
        "SANGKIEN_LINK_PATTERN": LINK,
        "SANGKIEN_DIRECTORY": str(dir_file),
        "SANGKIEN_SMTP_HOST": "127.0.0.1",
        "SANGKIEN_SMTP_PORT": str(smtp_port),
        "SANGKIEN_SMTP_USERNAME": SMTP_USER,
        "SANGKIEN_SMTP_PASSWORD": SMTP_PASSWORD,
        "SANGKIEN_SMTP_FROM": "Sáng kiến <sangkien@example.gov.vn>",
        "SANGKIEN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SANGKIEN_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "SANGKIEN_SUBSCRIBERS": json.dumps([{"url": f"http://127.0.0.1:{port}/events"}]),
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    clock = FrozenClock(T0)
    engine = engine_from_settings(
        settings,
        clock=clock,
        templates=TemplateStore([TEMPLATES, shipped_templates_dir()]),
        workflows=[WORKFLOW],
    )
    try:
        iid = start(engine, clock)
        submit(engine, clock, iid)
        dispatcher = dispatcher_from_settings(engine, settings)
        adapters = dispatcher.adapters
        adapters["zalo"] = adapters["log"]  # a literal zalo: address, logged
        first = dispatcher.dispatch(now=T_SUBMIT)
        assert first.retried == 1 and first.delivered >= 8
        # a wrong password: a permanent failure whose error must not quote either password
        wrong = SmtpAdapter(
            "127.0.0.1", smtp_port, username=SMTP_USER, password=SMTP_PASSWORD + "-cũ"
        )
        start(engine, clock)
        bad = Dispatcher(engine, {**adapters, "email": wrong}, max_attempts=1)
        bad.dispatch(now=T0)
        later = utc(2026, 3, 2, 4, 0)
        dispatcher.dispatch(now=later)
    finally:
        controller.stop()
        server.shutdown()
        server.server_close()
    box = Outbox(settings.database_url)
    rows = box.rows()
    box.close()
    assert {r.status for r in rows} == {"delivered", "dead"}
    assert any("refused the login of 'sangkien'" in (r.last_error or "") for r in rows)
    assert mails and hooks  # things were really sent
    log_text = captured_logs.getvalue()
    lines = [json.loads(line) for line in log_text.splitlines()]
    kinds = {line["event"] for line in lines}
    assert {"delivery", "transition", "notification_delivered", "outbox.undeliverable"} <= kinds
    assert any(line.get("error") and "500" in line["error"] for line in lines)
    stored = "\n".join(repr(tuple(r)) for r in rows)
    key = WEBHOOK_SECRET.removeprefix("whsec_")
    for secret in (SMTP_PASSWORD, WEBHOOK_SECRET, key, "Bí-Mật"):
        assert secret not in stored, "a secret is stored in the outbox"
        assert secret not in log_text, "a secret is in the logs"
    assert SMTP_PASSWORD not in repr(adapters) and WEBHOOK_SECRET not in repr(adapters)
    engine.close()
