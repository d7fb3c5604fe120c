"""`sangkien outbox list|show|retry` and `sangkien worker --once`, run as real processes.

The outbox is filled by a Python Engine on a temporary SQLite file (the notify_review
workflow and a directory built in the test), then inspected and repaired from the command
line, which reads only SANGKIEN_* settings from its environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sangkien import Actor, Engine, FrozenClock
from sangkien.adapters.webhook import verify
from sangkien.config.settings import Subscriber
from sangkien.directory import YamlDirectory
from sangkien.outbox import Dispatcher
from sangkien.templates import TemplateStore, shipped_templates_dir
from sangkien.testing import RecordingAdapter

HERE = Path(__file__).resolve().parent
REVIEW = HERE / "workflows" / "notify_review.yaml"
EVENTS = HERE / "workflows" / "notify_events.yaml"
TEMPLATES = HERE / "templates"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
UNIT = "phong-qlkh"
AN = Actor("nguyen.van.an", ["clerk"], UNIT)
TITLE = "Cải tiến quy trình tiếp nhận hồ sơ"
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)

DIRECTORY = {
    "units": {
        "so-khcn": {"name": "Sở Khoa học và Công nghệ"},
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
        "pham.thi.dung": {
            "name": "Phạm Thị Dung",
            "contacts": {"email": "dung.pham@example.gov.vn"},
            "roles": {"unit_head": "so-khcn"},
        },
    },
}


def sangkien(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI with only the given SANGKIEN_* variables set."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SANGKIEN_")}
    full["SANGKIEN_LOG_FORMAT"] = "json"
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sangkien", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A SQLite outbox after start + submit: pending and dead rows. Yields (db URL, instance)."""
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    clock = FrozenClock(T0)
    engine = Engine(
        url,
        clock=clock,
        migrate=True,
        workflows=[REVIEW],
        directory=YamlDirectory.from_data(DIRECTORY),
        templates=TemplateStore([TEMPLATES, shipped_templates_dir()]),
        channels=["email"],
        subscribers=[Subscriber(url="https://host.example.vn/hooks")],
    )
    iid = engine.start("notify_review", actor=AN, data={"title": TITLE}).id
    engine.fire(iid, "submit", actor=AN)
    engine.close()
    yield url, iid


def test_outbox_list_dead_json(filled: tuple[str, str]) -> None:
    """`outbox list --status dead --json` gives the counts and the dead rows with their reasons."""
    url, iid = filled
    out = json.loads(
        ok(sangkien("outbox", "list", "--status", "dead", "--json", "--database-url", url))
    )
    assert out["counts"] == {"pending": 11, "dead": 2}
    dead = {m["recipient"]: m for m in out["messages"]}
    assert set(dead) == {"person:nguyen.van.an", f"role:ghost@{UNIT}"}
    assert dead[f"role:ghost@{UNIT}"]["last_error"] == f"no one holds role 'ghost' in unit '{UNIT}'"
    assert dead["person:nguyen.van.an"]["last_error"] == (
        "Nguyễn Văn An (nguyen.van.an) has no webhook address in the directory"
    )
    for m in out["messages"]:
        assert (m["status"], m["attempts"], m["instance_id"]) == ("dead", 0, iid)
        assert m["kind"] == "notification" and m["template"] == "notify_submitted"
        assert "body" not in m  # the list leaves bodies out
    text = ok(sangkien("outbox", "list", "--database-url", url))
    assert text.splitlines()[0] == "dead: 2  pending: 11"
    assert f"Hồ sơ “{TITLE}”" in text  # Vietnamese, unescaped (subjects cut at 50 characters)


def test_outbox_show_json(filled: tuple[str, str]) -> None:
    """`outbox show ID --json` prints one row with its body (notification) or payload (event)."""
    url, iid = filled
    rows = json.loads(ok(sangkien("outbox", "list", "--json", "--database-url", url)))["messages"]
    note = next(m for m in rows if m["recipient"] == "dung.pham@example.gov.vn")
    shown = json.loads(ok(sangkien("outbox", "show", note["id"], "--json", "--database-url", url)))
    assert {k: shown[k] for k in note} == note
    assert shown["subject"] == f"Hồ sơ “{TITLE}” đã được nộp: Dự thảo → Đang thẩm định"
    assert shown["body"].startswith("Kính gửi Ông/Bà Phạm Thị Dung,")
    assert shown["payload"] == {}
    event = next(m for m in rows if m["kind"] == "event" and m["subject"] == "transition.applied")
    shown = json.loads(ok(sangkien("outbox", "show", event["id"], "--json", "--database-url", url)))
    assert shown["body"] == ""
    assert (
        shown["payload"]["id"] == event["id"] and shown["payload"]["type"] == "transition.applied"
    )
    assert shown["payload"]["data"]["instance"]["id"] == iid
    text = ok(sangkien("outbox", "show", note["id"], "--database-url", url))
    assert f"id: {note['id']}" in text and "Kính gửi Ông/Bà Phạm Thị Dung," in text


def test_outbox_show_unknown_id_fails_in_one_line(filled: tuple[str, str]) -> None:
    """An unknown message id: exit 1 and one line on stderr, no traceback."""
    url, _ = filled
    proc = sangkien("outbox", "show", "no-such-id", "--database-url", url)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no-such-id" in proc.stderr and "Traceback" not in proc.stderr


def test_outbox_show_unknown_id_names_a_message(filled: tuple[str, str]) -> None:
    """The error for an unknown message id talks about a message, not an instance."""
    url, _ = filled
    proc = sangkien("outbox", "show", "no-such-id", "--database-url", url)
    assert "instance" not in proc.stderr and "message" in proc.stderr


def test_outbox_retry_all_dead(filled: tuple[str, str]) -> None:
    """`outbox retry --all-dead` queues the dead rows again with their attempts reset."""
    url, _ = filled
    # deliver what can be: the zalo: address has no adapter here and dies on delivery
    with Engine(url) as engine:
        sent = Dispatcher(
            engine, {"email": RecordingAdapter("email"), "webhook": RecordingAdapter("webhook")}
        ).run()
    assert (sent.delivered, sent.dead) == (10, 1)
    before = json.loads(ok(sangkien("outbox", "list", "--json", "--database-url", url)))
    (zalo,) = [m for m in before["messages"] if m["channel"] == "zalo"]
    assert (zalo["status"], zalo["attempts"]) == ("dead", 1)
    assert zalo["last_error"] == (
        "permanent: no adapter for channel 'zalo' (enabled: email, webhook)"
    )
    usage = sangkien("outbox", "retry", "--database-url", url)
    assert usage.returncode == 2 and "give MESSAGE_IDS, --instance or --all-dead" in usage.stderr

    said = ok(sangkien("outbox", "retry", "--all-dead", "--database-url", url)).strip()
    after = json.loads(ok(sangkien("outbox", "list", "--json", "--database-url", url)))
    was_dead = {m["id"] for m in before["messages"] if m["status"] == "dead"}
    revived = [m for m in after["messages"] if m["id"] in was_dead and m["status"] == "pending"]
    assert said == f"{len(revived)} message(s) queued again"
    again = next(m for m in after["messages"] if m["id"] == zalo["id"])
    assert (again["status"], again["attempts"], again["last_error"]) == ("pending", 0, None)
    assert after["counts"]["delivered"] == 10
    assert ok(sangkien("outbox", "retry", "--all-dead", "--database-url", url)).strip() == (
        "0 message(s) queued again"
    )


# --------------------------------------------------------------------------- worker


@pytest.fixture
def hook() -> Iterator[tuple[str, list[tuple[str, bool, Any]]]]:
    """A local Standard Webhooks receiver; yields (base URL, [(webhook-id, verified, body)])."""
    got: list[tuple[str, bool, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["content-length"]))
            got.append(
                (self.headers["webhook-id"], verify(SECRET, self.headers, raw), json.loads(raw))
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", got
    server.shutdown()
    server.server_close()


def worker_env(url: str, base: str) -> dict[str, str]:
    return {
        "SANGKIEN_DATABASE_URL": url,
        "SANGKIEN_CHANNELS": "log,webhook",
        "SANGKIEN_WEBHOOK_SECRET": SECRET,
        "SANGKIEN_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "SANGKIEN_SUBSCRIBERS": json.dumps([{"url": f"{base}/hook"}]),
    }


def test_worker_once_delivers_to_the_webhook_receiver(
    tmp_path: Path, hook: tuple[str, list[tuple[str, bool, Any]]]
) -> None:
    """`sangkien worker --once` delivers the pending event webhooks, signed, once each."""
    base, got = hook
    url = f"sqlite:///{tmp_path / 'worker.db'}"
    engine = Engine(
        url, migrate=True, workflows=[EVENTS], subscribers=[Subscriber(url=f"{base}/hook")]
    )
    inst = engine.start("notify_events", actor=AN, data={"title": TITLE})
    engine.fire(inst.id, "close", actor=AN)
    engine.close()
    proc = sangkien("worker", "--once", env=worker_env(url, base))
    assert ok(proc).strip() == "fired 0, skipped 0, cancelled 0, retried 0"
    assert "delivered 2, retried 0, dead 0" in proc.stderr.splitlines()
    out = json.loads(ok(sangkien("outbox", "list", "--json", "--database-url", url)))
    assert out["counts"] == {"delivered": 2}
    assert sorted(i for i, _, _ in got) == sorted(m["id"] for m in out["messages"])
    assert all(v for _, v, _ in got)
    assert sorted(body["type"] for _, _, body in got) == ["instance.started", "transition.applied"]


def test_running_worker_delivers_to_the_webhook_receiver(
    tmp_path: Path, hook: tuple[str, list[tuple[str, bool, Any]]]
) -> None:
    """`sangkien worker` (the loop) delivers pending event webhooks, then stops on SIGTERM."""
    base, got = hook
    url = f"sqlite:///{tmp_path / 'worker.db'}"
    engine = Engine(
        url, migrate=True, workflows=[EVENTS], subscribers=[Subscriber(url=f"{base}/hook")]
    )
    engine.start("notify_events", actor=AN, data={"title": TITLE})
    engine.close()
    full = {k: v for k, v in os.environ.items() if not k.startswith("SANGKIEN_")}
    full.update({"SANGKIEN_LOG_FORMAT": "json", **worker_env(url, base)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "sangkien", "worker", "--interval", "0.2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=full,
    )
    try:
        until = time.monotonic() + 30  # a worker's start-up on a busy machine; ends on arrival
        while not got and time.monotonic() < until and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert [body["type"] for _, _, body in got] == ["instance.started"]


def test_cli_start_uses_the_notification_settings(
    tmp_path: Path, hook: tuple[str, list[tuple[str, bool, Any]]]
) -> None:
    """`sangkien start` resolves recipients in SANGKIEN_DIRECTORY and queues subscriber events."""
    base, _ = hook
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(REVIEW, folder / REVIEW.name)
    shutil.copytree(TEMPLATES, folder / "templates")
    directory = tmp_path / "directory.yaml"
    directory.write_text(json.dumps(DIRECTORY, ensure_ascii=False), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {
        **worker_env(url, base),
        "SANGKIEN_CHANNELS": "log,email",
        "SANGKIEN_WORKFLOWS": str(folder),
        "SANGKIEN_DIRECTORY": str(directory),
        "SANGKIEN_LINK_PATTERN": "https://portal.example.gov.vn/sang-kien/{instance_id}",
    }
    started = json.loads(
        ok(
            sangkien(
                "start",
                "notify_review",
                "--actor",
                AN.id,
                "--role",
                "clerk",
                "--unit",
                UNIT,
                "--set",
                f"title={TITLE}",
                "--json",
                env=env,
            )
        )
    )
    out = json.loads(ok(sangkien("outbox", "list", "--json", env=env)))
    kinds = sorted((m["kind"], m["status"], m["recipient"]) for m in out["messages"])
    assert kinds == [
        ("event", "pending", f"{base}/hook"),
        ("notification", "pending", "an.nguyen@example.gov.vn"),
    ]
    note = next(m for m in out["messages"] if m["kind"] == "notification")
    assert note["subject"] == f"Đã tạo hồ sơ “{TITLE}” (Dự thảo)"
    shown = json.loads(ok(sangkien("outbox", "show", note["id"], "--json", env=env)))
    assert f"https://portal.example.gov.vn/sang-kien/{started['id']}" in shown["body"]
