"""docs/notifications.md stays true: its Python examples run and print what the page shows."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from sangkien.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "notifications.md").read_text(encoding="utf-8")
PYTHON = re.findall(r"```python\n(.*?)```", DOC, re.S)
CONSOLE = re.findall(r"```console\n(.*?)```", DOC, re.S)
ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")


def block(starting: str) -> str:
    (found,) = [b for b in PYTHON if starting in b]
    return found


def shown_after(code: str) -> str:
    """The console block printed right after *code* on the page."""
    rest = DOC[DOC.index(code) + len(code) :]
    return rest[rest.index("```console\n") + len("```console\n") :].split("```", 1)[0]


def run(code: str, cwd: Path, **settings: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANGKIEN_")}
    env.update(settings)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ids_masked(text: str) -> str:
    return ID.sub("<id>", text)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder like the source tree's root: tests/ is there, nothing else is written to it."""
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    return tmp_path


def test_examples_run_and_print_what_the_page_shows(workdir: Path) -> None:
    """The directory example, the RecordingAdapter retries and the signature check run as shown."""
    assert len(PYTHON) == 4 and CONSOLE
    notify = block("YamlDirectory.from_data(")
    assert run(notify, workdir) == shown_after(notify)

    demo = workdir / "notify-demo.db"
    original = demo.read_bytes()
    retries = block("webhook.fail_next(2)")
    assert ids_masked(run(retries, workdir)) == ids_masked(shown_after(retries))

    demo.write_bytes(original)
    controller = Controller(_Accept(), hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        out = run(
            block("from sangkien.bootstrap import"),
            workdir,
            SANGKIEN_DATABASE_URL="sqlite:///notify-demo.db",
            SANGKIEN_CHANNELS="log,email,webhook",
            SANGKIEN_SMTP_HOST="127.0.0.1",
            SANGKIEN_SMTP_PORT=str(controller.port),
            SANGKIEN_SMTP_FROM="Hệ thống sáng kiến <sangkien@example.gov.vn>",
            SANGKIEN_WEBHOOK_SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            SANGKIEN_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
        )
    finally:
        controller.stop()
    stated = "`DispatchResult(claimed=12, delivered=6, retried=0, dead=6, recorded_late=0)`"
    assert stated in DOC and out.strip() == stated.strip("`")

    demo.write_bytes(original)
    sign = block("verify(SECRET, headers, body")
    (shown_id,) = set(ID.findall(sign))
    event_id = _event_id(workdir)
    out = run(sign.replace(shown_id, event_id), workdir)
    expected = shown_after(sign).replace(shown_id, event_id)
    # the signature covers the id, so only the signature line may differ
    strip = re.compile(r"^webhook-signature: v1,.*$", re.M)
    assert strip.sub("", out) == strip.sub("", expected)
    assert out.rstrip().splitlines()[-2:] == ["True", "False"]


class _Accept:
    """An aiosmtpd handler accepting every message."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _event_id(workdir: Path) -> str:
    code = (
        "from sangkien import Engine\n"
        "from sangkien.outbox import list_messages\n"
        "e = Engine('sqlite:///notify-demo.db')\n"
        "print([m.id for m in list_messages(e) if m.subject == 'transition.applied'][0])\n"
    )
    return run(code, workdir).strip().splitlines()[-1]


def test_settings_table_names_every_notification_setting() -> None:
    """Every SANGKIEN_ setting about channels, SMTP, webhooks and the outbox is in the table."""
    table = DOC[DOC.index("## 9. Settings") : DOC.index("## 10. Security")]
    for name in Settings.model_fields:
        if name.startswith(("smtp_", "webhook_", "outbox_")) or name in (
            "channels",
            "directory",
            "link_pattern",
            "subscribers",
        ):
            env = f"SANGKIEN_{name.upper()}"
            short = "_" + name.split("_", 1)[1].upper() if name.startswith("smtp_") else None
            assert env in table or (short and short in table), f"{env} is not documented"
