"""The deadline commands of `sangkien` on an SQLite file: overdue, due-soon, deadlines, extend,
worker --once, and their refusals.

A FrozenClock cannot reach another process, so each test builds its instances with an Engine
whose clock is set in the past (dates relative to the real now), then runs the commands in a
subprocess, where time is the wall clock: what was due in the past is overdue there, and
`worker --once` fires it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sangkien import Actor, Engine, FrozenClock
from sangkien.calendar import load_calendar

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [ROOT / "workflows" / "campaign.yaml", ROOT / "workflows" / "initiative.yaml"]
LEAVE = ROOT / "docs" / "examples" / "leave-with-deadlines.yaml"
UNIT = "xa-nghia-hanh"

OFFICER = Actor("le.thi.hoa", ["emulation_officer"], UNIT)
CHAIR = Actor("pham.van.duc", ["committee_chair", "unit_head"], UNIT)
AUTHOR = Actor("nguyen.van.an", ["civil_servant"], UNIT)
EMPLOYEE = Actor("lan", ["staff"], UNIT)
HEAD = Actor("hoa", ["unit_head"], UNIT)

CAL = load_calendar("vn")
NOW = datetime.now(UTC)
T0 = NOW - timedelta(days=60)  # when the instances were made


def local_day(moment: datetime) -> date:
    return CAL.local_date(moment)


@dataclass
class Setup:
    url: str
    engine: Engine
    campaign: str
    initiative: str
    leave: str
    registration_deadline: date

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, "SANGKIEN_DATABASE_URL": self.url, "SANGKIEN_LOG_LEVEL": "WARNING"}
        full.pop("SANGKIEN_CALENDAR_DIRS", None)
        full.update(env)
        return subprocess.run(
            [sys.executable, "-m", "sangkien", *args],
            capture_output=True,
            text=True,
            env=full,
            timeout=120,
        )

    def json(self, *args: str) -> Any:
        proc = self.cli(*args, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    """A campaign whose registration deadline passed 20 days ago, an initiative whose right to
    apply lapses in about 10 days, and a leave request whose clock is paused."""
    url = f"sqlite:///{tmp_path / 'sangkien.db'}"
    clock = FrozenClock(T0)
    engine = Engine(url, workflows=[*SHIPPED, LEAVE], clock=clock)
    registration = local_day(NOW - timedelta(days=20))
    camp = engine.start(
        "campaign",
        actor=OFFICER,
        data={
            "title": "Phong trào sáng kiến",
            "registration_deadline": registration.isoformat(),
            "submission_deadline": local_day(NOW + timedelta(days=200)).isoformat(),
        },
    )
    engine.fire(
        camp.id,
        "launch",
        actor=CHAIR,
        data={"decision_number": "15/KH-UBND", "launched_on": local_day(T0).isoformat()},
    )
    first_applied = local_day(NOW + timedelta(days=10))
    first_applied = first_applied.replace(year=first_applied.year - 1)
    ini = engine.start("initiative", actor=AUTHOR, parent=camp.id, data={"title": "Zalo"})
    engine.fire(ini.id, "register", actor=AUTHOR, data={"authors": ["Nguyễn Văn An"]})
    engine.fire(ini.id, "apply", actor=AUTHOR, data={"first_applied_on": first_applied.isoformat()})
    leave = engine.start(
        "leave_with_deadlines",
        actor=EMPLOYEE,
        data={"first_day": "2030-01-07", "last_day": "2030-01-08"},
    )
    clock.set(T0 + timedelta(hours=1))
    engine.fire(leave.id, "ask_info", actor=HEAD, comment="Ai trực thay?")
    try:
        yield Setup(url, engine, camp.id, ini.id, leave.id, registration)
    finally:
        engine.close()


def by_deadline(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{d['instance_id']}/{d['deadline']}": d for d in items}


# ------------------------------------------------------------------ supervision


def test_overdue_json_lists_what_is_late(setup: Setup) -> None:
    """`overdue --json` lists the past deadlines with how late and the escalation step."""
    items = by_deadline(setup.json("overdue"))
    launched = items[f"{setup.campaign}/state:launched"]
    assert launched["workflow"] == "campaign" and launched["unit"] == UNIT
    assert launched["due_at"] == CAL.end_of_day(setup.registration_deadline).isoformat()
    assert launched["overdue"] is True and launched["late_by_seconds"] > 19 * 86400
    assert launched["working_days_late"] >= 10
    assert (launched["escalation_step"], launched["escalation_steps"]) == (0, 1)
    assert f"{setup.leave}/state:info_requested" in items
    assert f"{setup.initiative}/clock:right_to_apply" not in items  # not due yet
    assert f"{setup.leave}/clock:answer" not in items  # paused clocks are not listed


def test_overdue_filters_by_unit_and_workflow(setup: Setup) -> None:
    """`overdue --unit` and `--workflow` narrow the list; nothing left prints a sentence."""
    assert setup.json("overdue", "--unit", "elsewhere") == []
    only = setup.json("overdue", "--workflow", "campaign")
    assert [d["deadline"] for d in only] == ["state:launched"]
    proc = setup.cli("overdue", "--unit", "elsewhere")
    assert (proc.returncode, proc.stdout) == (0, "nothing is overdue\n")


def test_overdue_text_line(setup: Setup) -> None:
    """`overdue` prints one line per deadline: id, unit, workflow, deadline, due, lateness."""
    proc = setup.cli("overdue", "--workflow", "campaign")
    assert proc.returncode == 0, proc.stderr
    due = CAL.end_of_day(setup.registration_deadline).strftime("%Y-%m-%d %H:%M")
    assert re.match(
        rf"^{setup.campaign}  {UNIT} +campaign +state:launched +due {due}Z  "
        r"late \d+ working day\(s\) \(\d+d \d+h\)  escalation 0/1  Phong trào sáng kiến$",
        proc.stdout.strip(),
    ), proc.stdout


def test_due_soon_lists_deadlines_within_the_period(setup: Setup) -> None:
    """`due-soon --within` lists what falls due in that period, not what is already late."""
    soon = by_deadline(setup.json("due-soon", "--within", "30 days"))
    right = soon[f"{setup.initiative}/clock:right_to_apply"]
    assert right["overdue"] is False and right["late_by_seconds"] < 0
    assert f"{setup.campaign}/state:launched" not in soon
    assert setup.json("due-soon", "--within", "1 hour") == []


def test_due_soon_refuses_a_bad_period(setup: Setup) -> None:
    """`due-soon --within` with a bad period exits 1 with one line, no traceback."""
    proc = setup.cli("due-soon", "--within", "3 fortnights")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: invalid duration '3 fortnights'")
    assert len(proc.stderr.splitlines()) == 1


def test_deadlines_shows_an_instance_s_open_deadlines(setup: Setup) -> None:
    """`deadlines ID --json` shows the state deadline and the paused clock of one instance."""
    items = by_deadline(setup.json("deadlines", setup.leave))
    assert set(items) == {f"{setup.leave}/state:info_requested", f"{setup.leave}/clock:answer"}
    assert items[f"{setup.leave}/clock:answer"]["status"] == "paused"
    state = items[f"{setup.leave}/state:info_requested"]
    assert state["status"] == "active" and state["escalation_steps"] == 1
    ini = setup.json("deadlines", setup.initiative)
    assert [d["deadline"] for d in ini] == ["clock:right_to_apply"]


def test_deadlines_does_not_call_a_paused_clock_overdue(setup: Setup) -> None:
    """A paused clock is not reported overdue by `deadlines ID`."""
    items = by_deadline(setup.json("deadlines", setup.leave))
    paused = items[f"{setup.leave}/clock:answer"]
    assert paused["overdue"] is False
    assert paused["working_days_late"] == 0


# ------------------------------------------------------------------ extending


def test_extend_moves_the_due_date_and_records_the_reason(setup: Setup) -> None:
    """`extend ID --by` moves every open deadline by the period and records the reason."""
    before = setup.json("deadlines", setup.initiative)[0]
    proc = setup.cli(
        "extend",
        setup.initiative,
        "--by",
        "10 working days",
        "--reason",
        "Chờ ý kiến Sở Nội vụ",
        "--actor",
        "admin",
        "--unit",
        UNIT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{setup.initiative}  {UNIT}")
    assert "clock:right_to_apply" in proc.stdout
    after = setup.json("deadlines", setup.initiative)[0]
    expected = CAL.after(datetime.fromisoformat(before["due_at"]), "10 working days")
    assert datetime.fromisoformat(after["due_at"]) == expected
    event = setup.engine.history(setup.initiative)[-1]
    assert (event.kind, event.actor_id, event.comment) == (
        "deadline_extended",
        "admin",
        "Chờ ý kiến Sở Nội vụ",
    )


def test_extend_until_a_date(setup: Setup) -> None:
    """`extend ID --until DATE --deadline NAME` sets that deadline to the end of DATE."""
    until = local_day(NOW + timedelta(days=40))
    proc = setup.cli(
        "extend", setup.leave, "--until", until.isoformat(), "--deadline", "state",
        "--reason", "Nghỉ ốm", "--actor", "admin", "--unit", UNIT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    items = by_deadline(setup.json("deadlines", setup.leave))
    assert items[f"{setup.leave}/state:info_requested"]["due_at"] == (
        CAL.end_of_day(until).isoformat()
    )
    assert items[f"{setup.leave}/state:info_requested"]["overdue"] is False


def test_extend_a_whole_campaign(setup: Setup) -> None:
    """`extend --campaign ID` extends the open deadlines of every instance in the campaign."""
    before = setup.json("deadlines", setup.initiative)[0]["due_at"]
    proc = setup.cli(
        "extend", "--campaign", setup.campaign, "--by", "1 month",
        "--reason", "Gia hạn chung", "--actor", "admin", "--unit", UNIT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "extended the open deadlines of 1 instance(s)\n"
    after = setup.json("deadlines", setup.initiative)[0]["due_at"]
    assert datetime.fromisoformat(after) == CAL.after(datetime.fromisoformat(before), "1 month")
    assert setup.json("deadlines", setup.leave)  # not in the campaign: untouched
    assert setup.engine.history(setup.leave)[-1].kind != "deadline_extended"


def test_extend_without_reason_is_a_usage_error(setup: Setup) -> None:
    """`extend` without --reason exits 2 (usage) and says which option is missing."""
    proc = setup.cli(
        "extend", setup.initiative, "--by", "1 day", "--actor", "admin", "--unit", UNIT
    )
    assert proc.returncode == 2
    assert "Missing option '--reason'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_extend_needs_exactly_one_target(setup: Setup) -> None:
    """`extend` with both an ID and --campaign (or neither) exits 2."""
    both = setup.cli(
        "extend", setup.initiative, "--campaign", setup.campaign, "--by", "1 day",
        "--reason", "x", "--actor", "admin", "--unit", UNIT,
    )  # fmt: skip
    neither = setup.cli("extend", "--by", "1 day", "--reason", "x", "--actor", "admin")
    assert (both.returncode, neither.returncode) == (2, 2)
    assert "give INSTANCE_ID or --campaign, not both" in both.stderr


def test_extend_unknown_instance_is_one_line(setup: Setup) -> None:
    """`extend` on an unknown instance exits 1 with one 'error:' line, no traceback."""
    proc = setup.cli(
        "extend", "no-such-id", "--by", "1 day", "--reason", "x", "--actor", "admin",
        "--unit", UNIT,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: ") and "no-such-id" in proc.stderr


def test_extend_outside_the_actor_s_unit_is_not_found(setup: Setup) -> None:
    """`extend` by an actor of another unit is refused as if the instance did not exist."""
    proc = setup.cli(
        "extend", setup.initiative, "--by", "1 day", "--reason", "x", "--actor", "admin",
        "--unit", "elsewhere",
    )  # fmt: skip
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1 and setup.initiative in proc.stderr


def test_extend_bad_period_and_date_are_one_line(setup: Setup) -> None:
    """A bad --by period or --until date exits 1 with one line."""
    for option, value, text in (
        ("--by", "2 fortnights", "invalid duration '2 fortnights'"),
        ("--until", "31/12/2026", "--until '31/12/2026' is not a date YYYY-MM-DD"),
    ):
        proc = setup.cli(
            "extend", setup.initiative, option, value, "--reason", "x", "--actor", "admin",
            "--unit", UNIT,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and text in proc.stderr


def test_deadlines_of_unknown_instance_is_one_line(setup: Setup) -> None:
    """`deadlines` of an unknown instance exits 1 with one line, no traceback."""
    proc = setup.cli("deadlines", "no-such-id", "--json")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ")


# ------------------------------------------------------------------ the worker


WORKER_LINE = re.compile(r"^fired (\d+), skipped (\d+), cancelled (\d+), retried (\d+)$")


def test_worker_once_fires_what_is_due_and_closes_registration(setup: Setup) -> None:
    """`worker --once` fires the past deadlines: the campaign's registration is closed."""
    proc = setup.cli("worker", "--once")
    assert proc.returncode == 0, proc.stderr
    m = WORKER_LINE.match(proc.stdout.strip())
    assert m, proc.stdout
    fired, skipped, _cancelled, retried = map(int, m.groups())
    assert fired >= 4 and skipped >= 2 and retried == 0
    camp = setup.engine.get(setup.campaign)
    assert camp.state == "registration_closed"
    history = setup.engine.history(setup.campaign)
    kinds = [e.kind for e in history]
    assert kinds[-5:] == [
        "reminder_skipped",
        "reminder_skipped",
        "deadline_missed",
        "escalation",
        "transition",
    ]
    closing = history[-1]
    assert closing.trigger == "close_registration"
    assert closing.actor_id == "system:deadline:launched"
    assert list(closing.actor_roles) == ["system"]
    assert closing.comment and closing.comment.startswith("escalation 1/1 of deadline")
    leave = setup.engine.get(setup.leave)
    assert leave.state == "withdrawn"  # 5 working days to answer, then 1 more: withdrawn
    overdue = setup.json("overdue")
    assert [d for d in overdue if d["instance_id"] == setup.campaign] == []


def test_worker_once_twice_fires_nothing_more(setup: Setup) -> None:
    """A second `worker --once` right after the first has nothing left to fire."""
    first = setup.cli("worker", "--once")
    assert first.returncode == 0, first.stderr
    second = setup.cli("worker", "--once")
    assert second.returncode == 0, second.stderr
    m = WORKER_LINE.match(second.stdout.strip())
    assert m and m.groups() == ("0", "0", "0", "0"), second.stdout


def test_worker_sends_late_reminders_when_configured(setup: Setup) -> None:
    """With SANGKIEN_SKIP_LATE_REMINDERS=false the worker sends late reminders, skips none."""
    proc = setup.cli("worker", "--once", SANGKIEN_SKIP_LATE_REMINDERS="false")
    assert proc.returncode == 0, proc.stderr
    m = WORKER_LINE.match(proc.stdout.strip())
    assert m and m[2] == "0", proc.stdout


STARTER_ROLE_WORKFLOW = """\
workflow: starter_notice
version: 1
title: Starter notice
roles:
  employee: {holder: starter}
  unit_head: {}
states:
  submitted: {initial: true}
  asked:
    notify: [employee]
  done: {final: true}
transitions:
  - {trigger: ask, from: submitted, to: asked, roles: [unit_head]}
  - {trigger: finish, from: asked, to: done, roles: [unit_head]}
"""


def test_notify_a_starter_held_role_reaches_the_starter(tmp_path: Path) -> None:
    """`notify: [employee]` with employee `holder: starter` is addressed to the starter."""
    from sangkien.outbox import list_messages

    path = tmp_path / "starter_notice.yaml"
    path.write_text(STARTER_ROLE_WORKFLOW, encoding="utf-8")
    engine = Engine(f"sqlite:///{tmp_path / 'n.db'}", workflows=[path], clock=FrozenClock(T0))
    try:
        inst = engine.start("starter_notice", actor=EMPLOYEE)
        engine.fire(inst.id, "ask", actor=HEAD)
        messages = [
            m for m in list_messages(engine, instance_id=inst.id) if m.kind == "notification"
        ]
    finally:
        engine.close()
    assert messages
    assert [m.status for m in messages if m.status == "dead"] == [], [
        m.last_error for m in messages
    ]
    assert {m.recipient for m in messages} == {EMPLOYEE.id}
