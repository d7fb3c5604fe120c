"""`sangkien simulate`: the timelines of the example scenarios and of small ones, and bad input.

Times are checked exactly: a day-based deadline ends at the end of its last day in Vietnam
(16:59:59.999999 UTC), reminders fire at 08:00 local (01:00 UTC), and the shipped campaign
escalates one minute after the end of its deadline days, when its guards agree the day is over.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sangkien.simulate import ScenarioError, TimelineEntry, simulate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
CAMPAIGN = EXAMPLES / "campaign-2026.yaml"
LEAVE = EXAMPLES / "leave-scenario.yaml"
SCENARIOS = sorted({*EXAMPLES.glob("*scenario*.yaml"), CAMPAIGN})
VN = timedelta(hours=7)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def eod(y: int, m: int, d: int) -> datetime:
    """End of day *y-m-d* in Vietnam, as UTC."""
    return utc(y, m, d, 16, 59, 59, 999999)


def at8(y: int, m: int, d: int) -> datetime:
    """08:00 in Vietnam on *y-m-d*, as UTC."""
    return utc(y, m, d, 1, 0)


def of(timeline: list[TimelineEntry], instance: str) -> list[TimelineEntry]:
    return [e for e in timeline if e.instance == instance]


def deadline_kinds(entries: list[TimelineEntry]) -> list[tuple[str, datetime]]:
    keep = {
        "deadline_set",
        "reminder",
        "reminder_skipped",
        "deadline_missed",
        "escalation",
        "escalation_failed",
        "transition",
    }
    return [(e.kind, e.at) for e in entries if e.kind in keep]


@pytest.fixture(scope="module")
def campaign() -> list[TimelineEntry]:
    return simulate(CAMPAIGN, lang="en")


@pytest.fixture(scope="module")
def leave() -> list[TimelineEntry]:
    return simulate(LEAVE, lang="en")


# ------------------------------------------------------------------ the example scenarios


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_example_timeline_is_in_time_order(path: Path) -> None:
    """Every example scenario runs, without refusal or failed escalation, in time order."""
    timeline = simulate(path)
    assert timeline
    assert all(a.at <= b.at for a, b in itertools.pairwise(timeline))
    assert not [e.text for e in timeline if e.kind in ("refused", "escalation_failed")]


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_example_reminders_fire_at_8_before_their_due(path: Path) -> None:
    """Every reminder of the examples fires at 08:00 local on a day before its due time."""
    reminders = [e for e in simulate(path) if e.kind == "reminder"]
    assert reminders
    for r in reminders:
        due = datetime.fromisoformat(r.detail["due_at"])
        assert r.at < due, r.text
        assert (r.at + VN).time().isoformat() == "08:00:00", r.text
        assert (r.at + VN).date() < (due + VN).date(), r.text


def test_campaign_closes_registration_one_minute_after_the_deadline_day(
    campaign: list[TimelineEntry],
) -> None:
    """The extended registration deadline (10/4) closes registration at 00:00:59 on 11/4."""
    c = of(campaign, "campaign")
    extended = [e for e in c if "extend_deadlines" in e.text]
    assert [(e.kind, e.at) for e in extended] == [("action", utc(2026, 3, 27, 8, 0))]
    closing = [e for e in c if e.kind == "transition" and "close_registration" in e.text]
    assert [e.at for e in closing] == [eod(2026, 4, 10) + timedelta(minutes=1)]
    assert closing[0].text.endswith("(automatic)")
    missed = [e.at for e in c if e.kind == "deadline_missed"]
    assert missed == [eod(2026, 4, 10), eod(2026, 6, 30)]
    evaluation = [e for e in c if e.kind == "transition" and "start_evaluation" in e.text]
    assert [e.at for e in evaluation] == [eod(2026, 6, 30) + timedelta(minutes=1)]


def test_campaign_reminders_follow_the_extension(campaign: list[TimelineEntry]) -> None:
    """Reminders 5 and 1 working days before the deadline; the extension replaces pending ones."""
    reminders = [
        (e.at, e.detail["due_at"]) for e in of(campaign, "campaign") if e.kind == "reminder"
    ]
    assert reminders == [
        (at8(2026, 3, 24), eod(2026, 3, 31).isoformat()),  # before the extension on 27/3
        (at8(2026, 4, 3), eod(2026, 4, 10).isoformat()),
        (at8(2026, 4, 9), eod(2026, 4, 10).isoformat()),
        (at8(2026, 6, 16), eod(2026, 6, 30).isoformat()),  # 10 working days before 30/6
        (at8(2026, 6, 26), eod(2026, 6, 30).isoformat()),  # 2 working days before
    ]


def test_review_clock_waits_while_the_author_amends(campaign: list[TimelineEntry]) -> None:
    """Paused 20/4-4/5 (14 days), the 1-month review clock from 13/4 is due 27/5, not 13/5."""
    a = of(campaign, "A")
    set_texts = [e.text for e in a if e.kind == "deadline_set"]
    assert "clock review due 2026-05-13 23:59" in set_texts
    review = [e for e in a if e.detail.get("deadline") == "clock:review"]
    assert [(e.kind, e.at) for e in review] == [
        ("reminder", at8(2026, 5, 20)),
        ("reminder", at8(2026, 5, 26)),
        ("deadline_missed", eod(2026, 5, 27)),
        ("escalation", eod(2026, 5, 27)),  # step 2 (5 working days later) cancelled by accept
    ]
    assert {e.detail["due_at"] for e in review} == {eod(2026, 5, 27).isoformat()}
    assert "clock decision due 2026-09-03 23:59" in set_texts  # 1/9 and 2/9 are holidays


def test_right_to_apply_lapses_and_expires_the_initiative(campaign: list[TimelineEntry]) -> None:
    """B, first applied 26/4/2025, expires at the end of 28/4/2026 (26/4 Sunday, 27/4 off)."""
    b = of(campaign, "B")
    assert deadline_kinds(b)[-6:] == [
        ("deadline_set", utc(2026, 3, 5, 7, 0)),
        ("reminder", at8(2026, 3, 30)),  # 20 working days before
        ("reminder", at8(2026, 4, 20)),  # 5 working days before
        ("deadline_missed", eod(2026, 4, 28)),
        ("escalation", eod(2026, 4, 28)),
        ("transition", eod(2026, 4, 28)),
    ]
    assert b[-1].text == "expire: applied -> expired (automatic)"


def test_right_lapsed_during_tet_expires_at_once(campaign: list[TimelineEntry]) -> None:
    """C, first applied 20/2/2025: the right ended on 23/2/2026 (after Tết); apply expires it."""
    c = of(campaign, "C")
    applied = utc(2026, 3, 9, 3, 0)
    assert "clock right_to_apply due 2026-02-23 23:59" in [e.text for e in c]
    assert [k for k, at in deadline_kinds(c) if at == applied] == [
        "transition",
        "deadline_set",
        "reminder_skipped",
        "reminder_skipped",
        "deadline_missed",
        "escalation",
        "transition",
    ]
    assert c[-1].text == "expire: applied -> expired (automatic)"


def test_leave_clock_counts_the_make_up_saturday(leave: list[TimelineEntry]) -> None:
    """Started Friday 9/1/2026, 3 working days count Saturday 10/1 (make-up day): due 13/1."""
    lan = of(leave, "lan")
    assert [(e.kind, e.at) for e in lan] == [
        ("started", utc(2026, 1, 9, 2, 0)),
        ("deadline_set", utc(2026, 1, 9, 2, 0)),
        ("reminder", at8(2026, 1, 12)),
        ("transition", utc(2026, 1, 13, 3, 0)),
    ]
    assert lan[1].detail["due_at"] == eod(2026, 1, 13).isoformat()


def test_leave_paused_clock_shifts_the_due_and_escalates_twice(
    leave: list[TimelineEntry],
) -> None:
    """Paused over Tết, the 3-working-day clock moves from 24/2 to 26/2; step 2 approves."""
    minh = of(leave, "minh")
    assert minh[1].detail["due_at"] == eod(2026, 2, 24).isoformat()
    assert deadline_kinds(minh)[1:] == [
        ("transition", utc(2026, 2, 13, 3, 0)),  # ask_info: the clock waits
        ("deadline_set", utc(2026, 2, 13, 3, 0)),  # info_requested: 5 working days
        ("transition", utc(2026, 2, 24, 2, 0)),  # answer: the clock runs again
        ("reminder", at8(2026, 2, 25)),
        ("deadline_missed", eod(2026, 2, 26)),
        ("escalation", eod(2026, 2, 26)),
        ("escalation", eod(2026, 3, 2)),  # 2 working days after 26/2: 27/2, 2/3
        ("transition", eod(2026, 3, 2)),
    ]
    last = minh[-2]
    assert last.detail["fire"] == "approve"
    assert last.detail["escalation"] == 2 and last.detail["of"] == 2
    assert '"approved_by_default": true' in last.text


def test_leave_unanswered_question_withdraws_the_request(leave: list[TimelineEntry]) -> None:
    """The 5-working-day state deadline from 3/3 ends 10/3; 1 working day later: withdrawn."""
    hung = of(leave, "hung")
    assert [(k, at) for k, at in deadline_kinds(hung) if k != "deadline_set"][-4:] == [
        ("reminder", at8(2026, 3, 6)),
        ("deadline_missed", eod(2026, 3, 10)),
        ("escalation", eod(2026, 3, 11)),
        ("transition", eod(2026, 3, 11)),
    ]
    assert hung[-1].text == "withdraw: info_requested -> withdrawn (automatic)"


# ------------------------------------------------------------------ small scenarios

SMALL_WORKFLOW = textwrap.dedent("""\
    workflow: sim_small
    version: 1
    title: Small
    roles: [clerk, head]
    fields:
      due_on: {type: date}
    states:
      open:
        initial: true
        deadline:
          after: 2 working days
          remind: [1 working day]
          notify: [head]
          escalate:
            - after: 0 days
              notify: [head]
            - after: 1 working day
              fire: close
      waiting:
        deadline:
          at: data.due_on
      closed: {final: true}
    transitions:
      - trigger: close
        from: [open, waiting]
        to: closed
        roles: [head, system]
      - trigger: wait
        from: open
        to: waiting
        roles: [clerk]
      - trigger: move
        from: waiting
        roles: [clerk]
        accepts: [due_on]
    """)


def write(tmp_path: Path, scenario: str, workflow: str = SMALL_WORKFLOW) -> Path:
    (tmp_path / "small.yaml").write_text(workflow, encoding="utf-8")
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent(scenario), encoding="utf-8")
    return path


HEADER = """\
    workflows: [small.yaml]
    start: 2026-04-27T08:00:00+07:00
    until: 2026-05-31
    actors:
      clerk: {id: c1, roles: [clerk], unit: u1}
"""


def test_small_scenario_escalates_in_order_over_the_holidays(tmp_path: Path) -> None:
    """Started Tue 28/4: 2 working days are 29/4 and 4/5 (30/4-3/5 off), then miss, close."""
    path = write(
        tmp_path,
        HEADER
        + """\
    steps:
      - {at: 2026-04-28T10:00:00+07:00, start: sim_small, as: x, actor: clerk}
    """,
    )
    timeline = simulate(path)
    assert [(e.kind, e.at) for e in timeline] == [
        ("started", utc(2026, 4, 28, 3, 0)),
        ("deadline_set", utc(2026, 4, 28, 3, 0)),
        ("reminder", at8(2026, 4, 29)),  # 1 working day before 4/5
        ("deadline_missed", eod(2026, 5, 4)),
        ("escalation", eod(2026, 5, 4)),
        ("escalation", eod(2026, 5, 5)),
        ("transition", eod(2026, 5, 5)),
    ]
    assert timeline[1].detail["due_at"] == eod(2026, 5, 4).isoformat()
    assert timeline[-1].text == "close: open -> closed (automatic)"


def test_small_scenario_leaving_the_state_cancels_its_timers(tmp_path: Path) -> None:
    """Leaving a state before its due time cancels its reminder and escalations."""
    path = write(
        tmp_path,
        HEADER
        + """\
      head: {id: h1, roles: [head], unit: u1}
    steps:
      - {at: 2026-04-28T10:00:00+07:00, start: sim_small, as: x, actor: clerk}
      - {after: 1 hour, fire: close, on: x, actor: head}
    """,
    )
    timeline = simulate(path)
    assert [e.kind for e in timeline] == ["started", "deadline_set", "transition"]


def test_small_scenario_refused_step_is_a_timeline_entry(tmp_path: Path) -> None:
    """A step the workflow refuses is shown as 'refused' and the run goes on."""
    path = write(
        tmp_path,
        HEADER
        + """\
    steps:
      - {at: 2026-04-28T10:00:00+07:00, start: sim_small, as: x, actor: clerk}
      - {after: 1 hour, fire: close, on: x, actor: clerk}
    """,
    )
    timeline = simulate(path)
    refused = [e for e in timeline if e.kind == "refused"]
    assert len(refused) == 1 and refused[0].at == utc(2026, 4, 28, 4, 0)
    assert refused[0].text.startswith("close refused: ")
    assert timeline[-1].text == "close: open -> closed (automatic)"


def position(path: Path, needle: str) -> tuple[int, int]:
    """1-based (line, column) of the first *needle* in the file at *path*."""
    text = path.read_text(encoding="utf-8")
    offset = text.index(needle)
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _bad(tmp_path: Path, scenario: str) -> tuple[str, int, int, str]:
    path = write(tmp_path, scenario)
    with pytest.raises(ScenarioError) as info:
        simulate(path)
    m = re.match(r"^(.+?):(\d+):(\d+): (.+)$", str(info.value))
    assert m, str(info.value)
    return m[1], int(m[2]), int(m[3]), m[4]


def test_unknown_actor_is_reported_at_its_line_and_column(tmp_path: Path) -> None:
    """A step naming an undeclared actor raises ScenarioError at that actor's position."""
    file, line, col, msg = _bad(
        tmp_path,
        HEADER
        + """\
    steps:
      - {at: 2026-04-28T10:00:00+07:00, start: sim_small, as: x, actor: nobody}
    """,
    )
    assert file.endswith("scenario.yaml")
    assert (line, col) == position(tmp_path / "scenario.yaml", "nobody")
    assert msg == "unknown actor 'nobody'; declare it under 'actors'"


def test_unknown_top_level_key_is_reported(tmp_path: Path) -> None:
    """An unknown top-level key raises ScenarioError on its line, naming the allowed keys."""
    _, line, _, msg = _bad(tmp_path, HEADER + "    stepz: []\n")
    assert line == position(tmp_path / "scenario.yaml", "stepz")[0]
    assert msg.startswith("unknown key 'stepz' (allowed: workflows, start, until")


def test_steps_out_of_order_are_reported(tmp_path: Path) -> None:
    """A step dated before the previous one raises ScenarioError at that step."""
    _, line, col, msg = _bad(
        tmp_path,
        HEADER
        + """\
    steps:
      - {at: 2026-04-28T10:00:00+07:00, start: sim_small, as: x, actor: clerk}
      - {at: 2026-04-28T09:00:00+07:00, fire: wait, on: x, actor: clerk}
    """,
    )
    assert (line, col) == position(tmp_path / "scenario.yaml", "{at: 2026-04-28T09")
    assert msg == "steps must be in time order"


def test_bad_duration_is_reported_at_its_value(tmp_path: Path) -> None:
    """A step 'after' that is not a duration raises ScenarioError at that value."""
    _, line, col, msg = _bad(
        tmp_path,
        HEADER
        + """\
    steps:
      - {at: 2026-04-28T10:00:00+07:00, start: sim_small, as: x, actor: clerk}
      - {after: 2 fortnights, fire: wait, on: x, actor: clerk}
    """,
    )
    assert (line, col) == position(tmp_path / "scenario.yaml", "2 fortnights")
    assert msg.startswith("invalid duration '2 fortnights': unknown unit 'fortnights'")


def test_unknown_instance_is_reported(tmp_path: Path) -> None:
    """A step firing on an instance never started raises ScenarioError at its 'on'."""
    _, line, col, msg = _bad(
        tmp_path,
        HEADER
        + """\
    steps:
      - {at: 2026-04-28T10:00:00+07:00, fire: wait, on: y, actor: clerk}
    """,
    )
    assert (line, col) == position(tmp_path / "scenario.yaml", "y, actor")
    assert msg.startswith("unknown instance 'y'")


def test_unknown_step_key_is_reported(tmp_path: Path) -> None:
    """A misspelt key inside a step raises ScenarioError instead of being ignored."""
    _, line, _, msg = _bad(
        tmp_path,
        HEADER
        + """\
    steps:
      - {at: 2026-04-28T10:00:00+07:00, start: sim_small, as: x, actr: clerk}
    """,
    )
    assert line == position(tmp_path / "scenario.yaml", "actr")[0]
    assert "actr" in msg


def test_at_deadline_follows_a_recorded_change_of_its_date(tmp_path: Path) -> None:
    """Moving data.due_on with a recorded action moves the `at: data.due_on` deadline."""
    path = write(
        tmp_path,
        HEADER
        + """\
    steps:
      - {at: 2026-04-28T10:00:00+07:00, start: sim_small, as: x, actor: clerk}
      - {after: 1 hour, fire: wait, on: x, actor: clerk, data: {due_on: 2026-05-08}}
      - {after: 1 hour, fire: move, on: x, actor: clerk, data: {due_on: 2026-05-15}}
    """,
    )
    missed = [e.at for e in simulate(path) if e.kind == "deadline_missed"]
    assert missed == [eod(2026, 5, 15)]


CORRECTED_FIRST_APPLICATION = """\
workflows: [{campaign}, {initiative}]
start: 2026-03-02T08:00:00+07:00
until: 2026-06-30
actors:
  officer: {{id: o, roles: [emulation_officer], unit: x}}
  chair: {{id: c, roles: [committee_chair, unit_head], unit: x}}
  an: {{id: an, roles: [civil_servant], unit: x}}
steps:
  - at: 2026-03-02T08:30:00+07:00
    start: campaign
    as: camp
    actor: officer
    data: {{title: T, registration_deadline: 2026-03-31, submission_deadline: 2026-09-30}}
  - {{after: 10 minutes, fire: launch, on: camp, actor: chair,
     data: {{decision_number: "1", launched_on: 2026-03-02}}}}
  - {{after: 1 hour, start: initiative, parent: camp, as: A, actor: an, data: {{title: A}}}}
  - {{after: 10 minutes, fire: register, on: A, actor: an, data: {{authors: [An]}}}}
  - {{after: 10 minutes, fire: apply, on: A, actor: an, data: {{first_applied_on: 2025-04-06}}}}
  - {{after: 1 day, fire: update, on: A, actor: an, data: {{first_applied_on: 2025-05-06}}}}
"""


def test_clock_from_follows_a_corrected_date(tmp_path: Path) -> None:
    """Correcting first_applied_on (6/4 -> 6/5/2025) moves the right_to_apply lapse to 6/5/2026."""
    path = tmp_path / "corrected.yaml"
    path.write_text(
        CORRECTED_FIRST_APPLICATION.format(
            campaign=ROOT / "workflows" / "campaign.yaml",
            initiative=ROOT / "workflows" / "initiative.yaml",
        ),
        encoding="utf-8",
    )
    a = of(simulate(path), "A")
    assert [e.at for e in a if e.kind == "deadline_missed"] == [eod(2026, 5, 6)]
    assert [e.text for e in a if "expire" in e.text][-1].startswith("expire: applied -> expired")


# ------------------------------------------------------------------ the command line


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sangkien", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.slow
def test_cli_simulate_json_matches_the_api(leave: list[TimelineEntry]) -> None:
    """`sangkien simulate FILE --json` prints the same timeline as simulate(), as JSON."""
    proc = run_cli("simulate", str(LEAVE), "--json", "--lang", "en")
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    assert entries == [e.to_dict() for e in leave]
    auto = [e for e in entries if e["text"].endswith("(automatic)")]
    assert [(e["instance"], e["at"]) for e in auto] == [
        ("minh", eod(2026, 3, 2).isoformat()),
        ("hung", eod(2026, 3, 11).isoformat()),
    ]


@pytest.mark.slow
def test_cli_simulate_text_shows_local_times() -> None:
    """The text timeline prints local times: the campaign closes at 2026-04-11 00:00."""
    proc = run_cli("simulate", str(CAMPAIGN))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(
        re.match(
            r"^2026-04-11 00:00  campaign +close_registration: launched -> "
            r"registration_closed \(automatic\)$",
            x,
        )
        for x in lines
    ), proc.stdout


@pytest.mark.slow
def test_cli_simulate_bad_scenario_is_one_line(tmp_path: Path) -> None:
    """A bad scenario exits 1 with one 'error: file:line:col: message' line, no traceback."""
    path = write(
        tmp_path,
        HEADER
        + """\
    steps:
      - {at: 2026-04-28T10:00:00+07:00, start: sim_small, as: x, actor: nobody}
    """,
    )
    proc = run_cli("simulate", str(path), "--json")
    assert proc.returncode == 1
    assert proc.stdout == ""
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    line, col = position(path, "nobody")
    assert errors == [
        f"error: {path}:{line}:{col}: unknown actor 'nobody'; declare it under 'actors'"
    ]
    assert "Traceback" not in proc.stderr
