"""The command line: exit codes, one-line errors, JSON output, database selection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sangkien.store.db import head_revision

HERE = Path(__file__).resolve().parent
LEAVE = HERE / "workflows" / "cli_leave.yaml"


def run(
    *args: str, db: str | None = None, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SANGKIEN_")}
    full_env["SANGKIEN_LOG_FORMAT"] = "json"
    if db:
        full_env["SANGKIEN_DATABASE_URL"] = db
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sangkien", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
    )


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def _start(db: str) -> dict:
    proc = run(
        "start",
        str(LEAVE),
        "--actor",
        "u1",
        "--role",
        "employee",
        "--unit",
        "hr",
        "--set",
        "days=3",
        "--json",
        db=db,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_start_fire_show_history_json(db: str) -> None:
    """An instance runs end to end through the CLI with --json output."""
    inst = _start(db)
    assert inst["state"] == "requested" and inst["data"] == {"days": 3} and inst["version"] == 1
    proc = run(
        "fire",
        inst["id"],
        "approve",
        "--actor",
        "m1",
        "--role",
        "manager",
        "--unit",
        "hr",
        "--json",
        db=db,
    )
    assert proc.returncode == 0, proc.stderr
    after = json.loads(proc.stdout)
    assert after["state"] == "approved" and after["version"] == 2
    shown = json.loads(run("show", inst["id"], "--json", db=db).stdout)
    assert shown["state"] == "approved"
    hist = json.loads(run("history", inst["id"], "--json", db=db).stdout)
    assert [e["to_state"] for e in hist] == ["requested", "approved"]
    assert hist[1]["prev_hash"] == hist[0]["hash"]
    listed = json.loads(run("list", "--workflow", "leave", "--json", db=db).stdout)
    assert [i["id"] for i in listed] == [inst["id"]]


def test_refused_fire_exits_1_with_one_line(db: str) -> None:
    """A refused trigger exits 1 and says, in one line, which rule refused it."""
    inst = _start(db)
    proc = run(
        "fire", inst["id"], "approve", "--actor", "u1", "--role", "employee", "--unit", "hr", db=db
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "role manager required; you have employee" in errors[0]
    assert_no_traceback(proc)


def test_triggers_lists_reasons(db: str) -> None:
    """`triggers` shows what the actor may fire and why the rest is refused."""
    inst = _start(db)
    proc = run(
        "triggers",
        inst["id"],
        "--actor",
        "u1",
        "--role",
        "employee",
        "--unit",
        "hr",
        "--json",
        db=db,
    )
    options = {o["trigger"]: o for o in json.loads(proc.stdout)}
    assert options["approve"]["allowed"] is False
    assert "role manager required" in options["approve"]["reasons"][0]
    assert options["note"]["allowed"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "no-such-id"), "instance 'no-such-id' not found"),
        (("fire", "no-such-id", "approve", "--actor", "a"), "not found"),
        (("start", "nonexistent_workflow", "--actor", "a", "--unit", "u"), "no workflow"),
        (("start", "missing.yaml", "--actor", "a", "--unit", "u"), "no such workflow file"),
        (("start", str(LEAVE), "--actor", "a", "--unit", "u", "--data", "{bad"), "not valid JSON"),
    ],
)
def test_user_errors_exit_1_without_traceback(db: str, args: tuple[str, ...], message: str) -> None:
    """Bad input exits 1 with a one-line reason and never a traceback."""
    proc = run(*args, db=db)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert_no_traceback(proc)


def test_usage_error_exits_2(db: str) -> None:
    """A usage error (missing argument) exits 2."""
    proc = run("fire", db=db)
    assert proc.returncode == 2
    assert_no_traceback(proc)


def test_database_url_option_beats_environment(tmp_path: Path) -> None:
    """--database-url chooses the database; SANGKIEN_DATABASE_URL is the fallback."""
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    _start(a)
    in_b = json.loads(run("list", "--json", "--database-url", b, db=a).stdout)
    in_a = json.loads(run("list", "--json", db=a).stdout)
    assert in_b == [] and len(in_a) == 1


def test_default_database_is_sqlite_file_in_cwd(tmp_path: Path) -> None:
    """Without settings the CLI uses sqlite:///sangkien.db in the working directory."""
    proc = run(
        "start",
        str(LEAVE),
        "--actor",
        "u1",
        "--role",
        "employee",
        "--unit",
        "hr",
        "--set",
        "days=2",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sangkien.db").exists()


def test_changed_workflow_without_version_bump_is_refused(db: str, tmp_path: Path) -> None:
    """Editing a workflow in use without bumping its version is refused, saying so."""
    _start(db)
    changed = tmp_path / "leave.yaml"
    changed.write_text(LEAVE.read_text().replace("max: 30", "max: 40"), encoding="utf-8")
    proc = run(
        "start",
        str(changed),
        "--actor",
        "u1",
        "--role",
        "employee",
        "--unit",
        "hr",
        "--set",
        "days=3",
        db=db,
    )
    assert proc.returncode == 1
    assert "bump 'version'" in proc.stderr
    bumped = tmp_path / "leave2.yaml"
    bumped.write_text(changed.read_text().replace("version: 1", "version: 2"), encoding="utf-8")
    proc = run(
        "start",
        str(bumped),
        "--actor",
        "u1",
        "--role",
        "employee",
        "--unit",
        "hr",
        "--set",
        "days=35",
        "--json",
        db=db,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["workflow_version"] == 2


def test_verify_detects_tampering(db: str) -> None:
    """`verify` exits 0 on intact history and 1 once an event is edited behind its back."""
    import sqlalchemy as sa

    inst = _start(db)
    assert run("verify", db=db).returncode == 0
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE sk_events SET comment = 'edited' WHERE seq = 1")
    engine.dispose()
    proc = run("verify", inst["id"], db=db)
    assert proc.returncode == 1
    assert "event 1" in proc.stdout and "altered" in proc.stdout


def test_schema_is_json_schema() -> None:
    """`schema` prints the JSON Schema of the language, naming the top-level keys."""
    proc = run("schema")
    schema = json.loads(proc.stdout)
    assert schema["type"] == "object"
    assert {"workflow", "version", "states", "transitions", "roles"} <= set(schema["properties"])
    assert "from" in json.dumps(schema["$defs"]["TransitionSpec"])


def test_diagram_formats() -> None:
    """`diagram` renders Mermaid and DOT for a workflow file."""
    mermaid = run("diagram", str(LEAVE)).stdout
    assert mermaid.startswith("stateDiagram-v2") and "requested --> approved : approve" in mermaid
    dot = run("diagram", str(LEAVE), "--format", "dot").stdout
    assert dot.startswith("digraph") and 'requested -> approved [label="approve"]' in dot


def test_db_upgrade_and_current(db: str) -> None:
    """`db upgrade` migrates and `db current` reports the revision."""
    proc = run("db", "upgrade", db=db)
    assert proc.returncode == 0 and "revision" in proc.stdout
    assert run("db", "current", db=db).stdout.startswith(head_revision())


def test_transition_logged_as_one_json_line(db: str) -> None:
    """Each transition writes one JSON log line with ids, states, actor and duration."""
    inst = _start(db)
    proc = run(
        "fire", inst["id"], "approve", "--actor", "m1", "--role", "manager", "--unit", "hr", db=db
    )
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    transitions = [x for x in lines if x["event"] == "transition"]
    assert len(transitions) == 1
    t = transitions[0]
    assert t["instance_id"] == inst["id"] and t["workflow"] == "leave"
    assert (t["trigger"], t["from_state"], t["to_state"], t["actor"]) == (
        "approve",
        "requested",
        "approved",
        "m1",
    )
    assert t["duration_ms"] >= 0


def test_settings_lists_every_variable_with_secrets_masked() -> None:
    """`sangkien settings` shows each SANGKIEN_* variable as this process sees it."""
    proc = run(
        "settings",
        env={
            "SANGKIEN_PORT": "9000",
            "SANGKIEN_SMTP_PASSWORD": "hunter2",
            "SANGKIEN_DATABASE_URL": "postgresql+psycopg://sk:hunter3@db.internal/sk",
        },
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split() == ["SANGKIEN_PORT", "9000", "(set)"] for line in lines)
    assert any(line.split() == ["SANGKIEN_SMTP_PASSWORD", "***", "(set)"] for line in lines)
    assert any(line.split() == ["SANGKIEN_SMTP_PORT", "25"] for line in lines)  # the default
    assert "postgresql+psycopg://sk:***@db.internal/sk" in proc.stdout
    assert "hunter" not in proc.stdout + proc.stderr


def test_an_invalid_secret_is_named_but_not_shown() -> None:
    proc = run("settings", env={"SANGKIEN_JWT_SECRET": "hunter2-too-short"})
    assert proc.returncode == 1
    assert "invalid setting SANGKIEN_JWT_SECRET" in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr


def test_settings_names_the_invalid_variable_in_one_line() -> None:
    proc = run("settings", env={"SANGKIEN_OUTBOX_MAX_ATTEMPTS": "0"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: invalid setting SANGKIEN_OUTBOX_MAX_ATTEMPTS: "
        "Input should be greater than or equal to 1 (got '0')"
    ]
    assert_no_traceback(proc)


def test_the_operations_guide_lists_every_setting() -> None:
    """docs/operations.md carries the table `sangkien settings --markdown` prints."""
    proc = run("settings", "--markdown")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.strip()
    assert table.count("\n| `SANGKIEN_") >= 40
    guide = (HERE.parent / "docs" / "operations.md").read_text(encoding="utf-8")
    assert table in guide
