"""``sangkien calendar``: inspect working-day calendars and compute legal periods.

Attach to the main command line with ``cli.add_command(calendar)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import click

from sangkien.calendar import (
    Calendar,
    CalendarError,
    DurationError,
    load_calendar,
    parse_duration,
)

__all__ = ["calendar"]

_WEEKDAY = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class _Failure(click.ClickException):
    """A user-facing failure: one line on stderr, exit 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _load(name: str, dirs: Sequence[str]) -> Calendar:
    from sangkien.config import Settings

    try:
        configured = [str(p) for p in Settings().calendar_dir_paths()]
    except Exception:  # a bad unrelated SANGKIEN_* variable must not hide the calendar
        configured = []
    try:
        return load_calendar(name, [*configured, *dirs])
    except CalendarError as exc:
        raise _Failure(_one_line(exc)) from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _day(d: date) -> str:
    return f"{d.isoformat()} {_WEEKDAY[d.weekday()]}"


def _calendar_options(fn: Any) -> Any:
    fn = click.option(
        "--calendar-dir",
        "calendar_dirs",
        multiple=True,
        type=click.Path(exists=False),
        help="Extra folder (or file) of calendar YAML read after the shipped one; repeatable. "
        "A year it lists replaces the shipped year.",
    )(fn)
    fn = click.option(
        "--calendar",
        "calendar_name",
        default="vn",
        show_default=True,
        help="Calendar name (config/data/calendars/<name>.yaml).",
    )(fn)
    return fn


@click.group("calendar")
def calendar() -> None:
    """Working-day calendars: days off, make-up days and legal periods."""


@calendar.command("show")
@click.argument("year", type=click.IntRange(1900, 2999))
@_calendar_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(year: int, calendar_name: str, calendar_dirs: tuple[str, ...], as_json: bool) -> None:
    """Print the days off, make-up working days and working-day count of YEAR."""
    cal = _load(calendar_name, calendar_dirs)
    try:
        off = cal.days_off(year, include_weekends=True)
        work = cal.working_weekend_days(year)
        count = cal.working_days_count(year)
        source = cal.source(year)
        only_pkg, only_here = (
            cal.package_differences(year) if year in cal.official_years else ({}, {})
        )
    except CalendarError as exc:
        raise _Failure(_one_line(exc)) from None
    if as_json:
        body = {
            "calendar": cal.name,
            "year": year,
            "timezone": cal.timezone.key,
            "source": source,
            "fingerprint": cal.fingerprint,
            "days_off": [
                {"date": d.isoformat(), "name": n, "weekend": d.weekday() in cal.weekend}
                for d, n in off.items()
            ],
            "working_weekend_days": [{"date": d.isoformat(), "name": n} for d, n in work.items()],
            "working_days": count,
            "package_differences": {
                "only_in_package": {d.isoformat(): n for d, n in only_pkg.items()},
                "only_in_data": {d.isoformat(): n for d, n in only_here.items()},
            },
        }
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    click.echo(f"Calendar {cal.name} ({cal.timezone.key}), {year}")
    click.echo(f"Source: {source}")
    click.echo("Days off:")
    for d, n in off.items():
        mark = "  (weekend)" if d.weekday() in cal.weekend else ""
        click.echo(f"  {_day(d)}  {n}{mark}")
    if not off:
        click.echo("  (none)")
    click.echo("Make-up working days (weekend days worked):")
    for d, n in work.items():
        click.echo(f"  {_day(d)}  {n}")
    if not work:
        click.echo("  (none)")
    click.echo(f"Working days in {year}: {count}")
    if only_pkg or only_here:
        click.echo("The holidays package differs from this data (the data wins):")
        for d, n in only_pkg.items():
            click.echo(f"  package only: {_day(d)}  {n}")
        for d, n in only_here.items():
            click.echo(f"  data only:    {_day(d)}  {n}")
    click.echo(f"Fingerprint: {cal.fingerprint}")


def _parse_start(text: str, cal: Calendar) -> datetime | date:
    raw = text.strip()
    try:
        if len(raw) == 10:
            return date.fromisoformat(raw)
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _Failure(
            f"--from {text!r} is not a date (2025-01-23) or date-time "
            "(2025-01-23T10:00, 2025-01-23T03:00Z, 2025-01-23T10:00+07:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=cal.timezone)  # a time typed by a person is local
    return moment


@calendar.command("due")
@click.option(
    "--from",
    "start_text",
    required=True,
    metavar="DATE_OR_DATETIME",
    help="The event: a local date, a local date-time, or one with Z / an offset.",
)
@click.option(
    "--after",
    "duration_text",
    required=True,
    metavar="DURATION",
    help="e.g. '10 working days', '1 month', '30 days', '4 hours', P1M.",
)
@_calendar_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def due(
    start_text: str,
    duration_text: str,
    calendar_name: str,
    calendar_dirs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Print when a period of DURATION after an event ends, and the days it skipped."""
    cal = _load(calendar_name, calendar_dirs)
    try:
        duration = parse_duration(duration_text)
    except DurationError as exc:
        raise _Failure(_one_line(exc)) from None
    start = _parse_start(start_text, cal)
    try:
        period = cal.period(start, duration)
        years = set()
        if period.last_day is not None:
            years = {period.start.year, period.last_day.year}
        sources = {y: cal.source(y) for y in sorted(years)}
    except CalendarError as exc:
        raise _Failure(_one_line(exc)) from None
    due_local = period.due.astimezone(cal.timezone)
    due_utc = period.due.astimezone(UTC)
    moved = (
        period.nominal_last_day is not None
        and period.last_day is not None
        and period.nominal_last_day != period.last_day
    )
    if as_json:
        body = {
            "calendar": cal.name,
            "fingerprint": cal.fingerprint,
            "from": period.start.isoformat(),
            "duration": str(duration),
            "due_local": due_local.isoformat(),
            "due_utc": due_utc.isoformat().replace("+00:00", "Z"),
            "last_day": period.last_day.isoformat() if period.last_day else None,
            "nominal_last_day": (
                period.nominal_last_day.isoformat() if period.nominal_last_day else None
            ),
            "skipped": [{"date": d.isoformat(), "reason": r} for d, r in period.skipped],
            "sources": {str(y): s for y, s in sources.items()},
        }
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    start_day = period.start.date()
    shown = start_day.isoformat() if type(start) is date else period.start.isoformat()
    click.echo(f"From:   {shown} ({_WEEKDAY[start_day.weekday()]}, local)")
    click.echo(f"After:  {duration}")
    click.echo(f"Due:    {due_local.isoformat()} ({_WEEKDAY[due_local.weekday()]}, local)")
    click.echo(f"        {due_utc.isoformat().replace('+00:00', 'Z')} (UTC)")
    if duration.unit == "working_days":
        if period.skipped:
            click.echo("Skipped (not working days):")
            for d, reason in period.skipped:
                click.echo(f"  {_day(d)}  {reason}")
    elif moved and period.nominal_last_day is not None:
        click.echo(
            f"The last day {_day(period.nominal_last_day)} is not a working day; the period "
            "ends at the end of the next working day. Days passed over:"
        )
        for d, reason in period.skipped:
            click.echo(f"  {_day(d)}  {reason}")
    for y, s in sources.items():
        click.echo(f"Source {y}: {s}")
