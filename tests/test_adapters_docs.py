"""docs/adapters.md stays true: its examples run, and its settings tables are complete."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sangkien.adapters import load_adapters
from sangkien.adapters.webhook import generate_secret, sign
from sangkien.config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "adapters.md").read_text(encoding="utf-8")


def _example(name: str) -> str:
    """The fenced block that follows ``<!-- example: NAME -->`` in the doc."""
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```[a-z]*\n(.*?)```", DOC, re.S)
    assert found, f"docs/adapters.md has no example {name!r}"
    return found.group(1)


def test_sms_example_passes_its_own_contract_tests(tmp_path: Path) -> None:
    """The SMS gateway adapter and its AdapterContract test class, as printed, pass under pytest."""
    (tmp_path / "sangkien_sms.py").write_text(_example("sangkien_sms.py"), encoding="utf-8")
    (tmp_path / "test_sms.py").write_text(_example("test_sms.py"), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sms.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"\b9 passed\b", run.stdout), run.stdout
    assert "skipped" not in run.stdout


def test_sms_example_entry_point_is_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The printed pyproject entry point, installed, makes load_adapters build the SMS adapter."""
    project = tomllib.loads(_example("pyproject.toml"))["project"]
    entries = project["entry-points"]["sangkien.adapters"]
    assert entries == {"sms": "sangkien_sms:SmsGatewayAdapter"}
    (tmp_path / "sangkien_sms.py").write_text(_example("sangkien_sms.py"), encoding="utf-8")
    info = tmp_path / "sangkien_sms-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n",
        encoding="utf-8",
    )
    (info / "entry_points.txt").write_text(
        "[sangkien.adapters]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sangkien_sms", raising=False)
    monkeypatch.setenv("SANGKIEN_SMS_URL", "http://127.0.0.1:9/send")
    monkeypatch.setenv("SANGKIEN_SMS_TOKEN", "t0ken")
    adapters = load_adapters(Settings(channels="log,sms"))
    sms = adapters["sms"]
    assert type(sms).__name__ == "SmsGatewayAdapter"
    assert "t0ken" not in repr(sms)
    sms.close()  # type: ignore[attr-defined]


def test_python_verification_snippet() -> None:
    """The receiver snippet accepts a request signed by sangkien and refuses a tampered one."""
    secret = generate_secret()
    namespace: dict[str, Any] = {}
    exec(_example("verify-python").replace('"whsec_…"', repr(secret)), namespace)
    processed: list[Any] = []
    namespace["already_seen"] = lambda msg_id: False
    namespace["process"] = processed.append
    body = json.dumps({"type": "transition.applied", "note": "Đã duyệt"}).encode()
    stamp = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, "msg_1", stamp, body),
    }
    assert namespace["handle"](headers, body) == 204
    assert processed == [json.loads(body)]
    assert namespace["handle"](headers, body + b" ") == 401


def test_node_verification_snippet(tmp_path: Path) -> None:
    """The Node.js snippet accepts sangkien's signature and refuses a tampered body."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    secret = generate_secret()
    body = '{"note":"Đã duyệt sáng kiến"}'
    stamp = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": f"v1,AAAA {sign(secret, 'msg_1', stamp, body)}",
    }
    script = tmp_path / "check.js"
    script.write_text(
        _example("verify-node")
        + f"\nconst h = {json.dumps(headers)};\n"
        + f"const body = Buffer.from({json.dumps(body)}, 'utf8');\n"
        + f"console.log(verifyWebhook({json.dumps(secret)}, h, body),"
        + f" verifyWebhook({json.dumps(secret)}, h, Buffer.from('x')),"
        + f" verifyWebhook({json.dumps(generate_secret())}, h, body));\n",
        encoding="utf-8",
    )
    run = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["true", "false", "false"]


def test_published_test_vector_matches_sign() -> None:
    """The signature quoted for implementers is what sign() computes."""
    assert "`v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=`" in DOC
    assert (
        sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            '{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_every_adapter_setting_is_documented() -> None:
    """Each smtp_*, webhook_* and channel setting appears as its SANGKIEN_ variable."""
    names = [n for n in Settings.model_fields if n.startswith(("smtp_", "webhook_"))]
    names += ["channels", "subscribers"]
    missing = [n for n in names if f"SANGKIEN_{n.upper()}" not in DOC]
    assert not missing, missing
