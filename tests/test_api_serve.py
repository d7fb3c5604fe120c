"""`sangkien serve` runs as a real process: it answers, authenticates and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def _command(name: str) -> list[str]:
    """Run *name* through the main CLI once it is attached there, else through ours."""
    from sangkien.cli import cli

    if name in getattr(cli, "commands", {}):
        return [sys.executable, "-m", "sangkien", name]
    return [sys.executable, "-c", f"from sangkien.api.cli import {name}; {name}()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANGKIEN_")}
    env["SANGKIEN_DATABASE_URL"] = f"sqlite:///{tmp_path / 'serve.db'}"
    env["SANGKIEN_LOG_FORMAT"] = "json"
    return env


def _wait_healthy(base: str, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become healthy in time")


def test_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The server migrates SQLite, accepts a `token`, serves the API and exits 0 on SIGTERM."""
    env = _env(tmp_path)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*_command("serve"), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_healthy(base, proc)
        assert httpx.get(f"{base}/readyz").json() == {"status": "ready", "database": "sqlite"}

        made = subprocess.run(
            [*_command("token"), "--sub", "le.thi.hoa"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        bearer = {"Authorization": f"Bearer {made.stdout.strip()}"}
        assert "DEMO secret" in made.stderr

        assert httpx.get(f"{base}/v1/workflows").status_code == 401
        keys = {w["key"] for w in httpx.get(f"{base}/v1/workflows", headers=bearer).json()}
        assert keys == {"campaign", "initiative"}
        started = httpx.post(
            f"{base}/v1/instances",
            json={"workflow": "campaign", "data": {"title": "Phong trào thử"}},
            headers=bearer,
        )
        assert started.status_code == 201, started.text
        assert started.json()["created_by"] == "le.thi.hoa"
        assert "sangkien_instances_started_total" in httpx.get(f"{base}/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    # in JSON mode every line on stderr is one a log collector can parse: uvicorn's own
    # lifecycle lines and the banner included
    events = [json.loads(line) for line in err.splitlines() if line.strip()]
    listening = next(e for e in events if e["event"] == "server.listening")
    assert listening["docs"] == f"{base}/docs"
    assert listening["database"] == "sqlite"
    assert "DEMO secret" in listening["auth"]
    assert any(
        e.get("logger") == "uvicorn.error" and "Application startup complete" in e["event"]
        for e in events
    )
    names = [e["event"] for e in events]
    assert "worker.started" in names
    assert "worker.stopped" in names


def test_serve_refuses_the_network_without_credentials(tmp_path: Path) -> None:
    """Without any credential configured, serving beyond loopback is refused with a reason."""
    result = subprocess.run(
        [*_command("serve"), "--host", "0.0.0.0", "--port", str(_free_port())],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "SANGKIEN_JWT_SECRET" in result.stderr
    assert "Traceback" not in result.stderr
