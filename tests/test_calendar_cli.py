"""``sangkien calendar show`` and ``sangkien calendar due``."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from sangkien.calendar_cli import calendar


def _cli() -> click.Group:
    import sangkien.cli as main

    group = getattr(main, "cli", None)
    if isinstance(group, click.Group) and "calendar" in group.commands:
        return group
    throwaway = click.Group("sangkien")
    throwaway.add_command(calendar)
    return throwaway


def run(*args: str) -> Result:
    return CliRunner().invoke(_cli(), ["calendar", *args])


def _assert_one_line_error(result: Result, needle: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert needle in lines[0]


def test_show_official_year() -> None:
    """show 2025 lists the days off with names, the make-up Saturday, the count and the source."""
    result = run("show", "2025")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "2025-05-02 Fri" in out and "2025-01-27 Mon  Tết Nguyên đán Ất Tỵ" in out
    assert "2025-01-25 Sat  Tết Nguyên đán Ất Tỵ  (weekend)" in out
    assert "Make-up working days" in out and "2025-04-26 Sat" in out
    assert "Working days in 2025: 250" in out
    assert "Source: official data" in out
    assert "Fingerprint: " in out


def test_show_reports_package_differences_for_official_year() -> None:
    """show 2026 names the days where the holidays package disagrees with the official data."""
    result = run("show", "2026")
    assert result.exit_code == 0, result.output
    assert "data only:    2026-01-02 Fri" in result.output


def test_show_fallback_year_names_the_package() -> None:
    """show 2030 says the days come from the holidays package."""
    result = run("show", "2030", "--calendar", "vn")
    assert result.exit_code == 0, result.output
    assert "Source: holidays package" in result.output
    assert "2030-01-01 Tue" in result.output


def test_show_json() -> None:
    """show --json gives machine-readable days off, make-up days and the working-day count."""
    result = run("show", "2026", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["working_days"] == 250
    assert {"date": "2026-01-10", "name": "Làm bù cho thứ Sáu 02/01/2026"} in body[
        "working_weekend_days"
    ]
    assert any(d["date"] == "2026-02-16" for d in body["days_off"])


def test_due_working_days_lists_skipped_days() -> None:
    """due prints local and UTC due times and each skipped day with its reason."""
    result = run("due", "--from", "2025-01-23", "--after", "10 working days")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "2025-02-13T23:59:59.999999+07:00" in out
    assert "2025-02-13T16:59:59.999999Z" in out
    assert "2025-01-29 Wed  Tết Nguyên đán Ất Tỵ" in out
    assert "2025-02-08 Sat  weekend (Saturday)" in out


def test_due_month_moved_off_holiday() -> None:
    """due explains when the last day of a month period is a holiday and moves on."""
    result = run("due", "--from", "2025-03-30T10:00", "--after", "1 tháng")
    assert result.exit_code == 0, result.output
    assert "2025-05-05T16:59:59.999999Z" in result.output
    assert "The last day 2025-04-30 Wed is not a working day" in result.output


def test_due_json_with_utc_start() -> None:
    """due --json converts a Z start to local time first (17:30Z is already 2 January)."""
    result = run("due", "--from", "2025-01-01T17:30Z", "--after", "1 working day", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["from"] == "2025-01-02T00:30:00+07:00"
    assert body["due_utc"] == "2025-01-03T16:59:59.999999Z"
    assert body["duration"] == "1 working day"
    assert body["skipped"] == []


def test_due_hours_are_exact() -> None:
    """due with hours adds them exactly and prints no skipped days."""
    result = run("due", "--from", "2025-01-24T09:00+07:00", "--after", "PT4H", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["due_utc"] == "2025-01-24T06:00:00Z"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["due", "--from", "2025-01-23", "--after", "3 fortnights"], "unknown unit"),
        (["due", "--from", "23/01/2025", "--after", "1 day"], "is not a date"),
        (["due", "--from", "2025-01-23", "--after", "1 day", "--calendar", "mars"], "no calendar"),
        (["show", "2025", "--calendar", "../x"], "invalid calendar name"),
    ],
)
def test_errors_are_one_line_exit_1(args: list[str], needle: str) -> None:
    """Bad input exits 1 with a single line saying why, never a traceback."""
    _assert_one_line_error(run(*args), needle)


def test_bad_calendar_dir_file_names_the_file(tmp_path: Path) -> None:
    """A malformed file in --calendar-dir is reported with its path, on one line."""
    (tmp_path / "vn-2027.yaml").write_text("years:\n  2027: [oops]\n", encoding="utf-8")
    result = run("show", "2027", "--calendar-dir", str(tmp_path))
    _assert_one_line_error(result, "vn-2027.yaml")


def test_calendar_dir_adds_a_year(tmp_path: Path) -> None:
    """--calendar-dir makes an administrator's 2027 data the source for 2027."""
    (tmp_path / "vn-2027.yaml").write_text(
        "years:\n  2027:\n    source: QĐ thử\n    days_off:\n"
        "      - {date: 2027-01-01, name: Tết Dương lịch}\n",
        encoding="utf-8",
    )
    result = run("show", "2027", "--calendar-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Source: official data" in result.output and "QĐ thử" in result.output
