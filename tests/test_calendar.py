"""Working-day calendar and legal periods against the official 2025 and 2026 tables.

Official decisions for civil servants (DOMAIN.md):
  2025: Tết off Sat 25/1 – Sun 2/2; Fri 2/5 off, worked Sat 26/4.
  2026: Tết off Sat 14/2 – Sun 22/2; Fri 2/1 off, worked Sat 10/1.
Vietnam is UTC+7 all year: local midnight is 17:00Z the day before, and the end of a local day
(23:59:59.999999) is 16:59:59.999999Z the same day.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sangkien.calendar import (
    UNITS,
    Calendar,
    CalendarError,
    Duration,
    DurationError,
    load_calendar,
    parse_duration,
)
from sangkien.errors import SangkienError


@pytest.fixture(scope="module")
def cal() -> Calendar:
    return load_calendar("vn")


def at(y: int, m: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """An aware UTC moment."""
    return datetime(y, m, d, h, mi, tzinfo=UTC)


def end_of(y: int, m: int, d: int) -> datetime:
    """End of local day y-m-d in Vietnam, in UTC (16:59:59.999999Z that day)."""
    return datetime(y, m, d, 16, 59, 59, 999999, tzinfo=UTC)


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(n) for n in range((last - first).days + 1)]


# --------------------------------------------------------------------------- shipped data


def test_shipped_calendar_settings(cal: Calendar) -> None:
    """vn.yaml ships the civil-servant settings: Asia/Ho_Chi_Minh, Sat+Sun weekend, 08:00 start."""
    assert cal.name == "vn"
    assert cal.timezone.key == "Asia/Ho_Chi_Minh"
    assert cal.weekend == frozenset({5, 6})
    assert cal.workday_start == time(8, 0)
    assert {2025, 2026} <= cal.official_years


@pytest.mark.parametrize(
    ("first", "last"),
    [(date(2025, 1, 25), date(2025, 2, 2)), (date(2026, 2, 14), date(2026, 2, 22))],
    ids=["tet-2025", "tet-2026"],
)
def test_every_tet_day_is_off(cal: Calendar, first: date, last: date) -> None:
    """Every day of the official Tết span is not a working day, and the days around it are."""
    for d in days(first, last):
        assert not cal.is_working_day(d), d
        assert cal.why_not_working(d) is not None
    assert cal.is_working_day(first - timedelta(1))  # the Friday before
    assert cal.is_working_day(last + timedelta(1))  # the Monday after


@pytest.mark.parametrize("d", [date(2025, 4, 26), date(2026, 1, 10)])
def test_make_up_saturdays_are_working_days(cal: Calendar, d: date) -> None:
    """26/4/2025 and 10/1/2026 are Saturdays worked to make up for a swapped Friday."""
    assert d.weekday() == 5
    assert cal.is_working_day(d)
    assert cal.why_not_working(d) is None
    assert d in cal.working_weekend_days(d.year)


@pytest.mark.parametrize("d", [date(2025, 5, 2), date(2026, 1, 2)])
def test_swapped_fridays_are_days_off(cal: Calendar, d: date) -> None:
    """2/5/2025 and 2/1/2026 are Fridays off by the swap decision."""
    assert d.weekday() == 4
    assert not cal.is_working_day(d)
    assert d in cal.days_off(d.year)


@pytest.mark.parametrize(
    "d",
    [
        date(2025, 1, 1),
        date(2025, 4, 7),  # Hùng Kings, 10/3 Ất Tỵ
        date(2025, 4, 30),
        date(2025, 5, 1),
        date(2025, 9, 1),
        date(2025, 9, 2),
        date(2026, 1, 1),
        date(2026, 4, 27),  # Hùng Kings 10/3 Bính Ngọ is Sunday 26/4: substitute Monday
        date(2026, 4, 30),
        date(2026, 5, 1),
        date(2026, 9, 1),
        date(2026, 9, 2),
    ],
)
def test_statutory_holidays_are_off(cal: Calendar, d: date) -> None:
    """The Labour Code art. 112 holidays of 2025 and 2026 (and substitute days) are days off."""
    assert not cal.is_working_day(d)
    assert cal.days_off(d.year)[d]


def test_days_off_lists_weekdays_unless_weekends_asked(cal: Calendar) -> None:
    """days_off() gives the weekdays off; include_weekends adds the weekend days of a span."""
    weekdays = cal.days_off(2025)
    assert date(2025, 1, 25) not in weekdays  # Saturday, first day of Tết
    assert all(d.weekday() < 5 for d in weekdays)
    assert date(2025, 1, 25) in cal.days_off(2025, include_weekends=True)
    assert list(weekdays) == sorted(weekdays)


@pytest.mark.parametrize("year", [2025, 2026])
def test_working_days_in_year(cal: Calendar, year: int) -> None:
    """Both years have 250 working days.

    2025 has 261 weekdays, 12 off (1/1, 27–31/1, 7/4, 30/4, 1/5, 2/5, 1/9, 2/9) plus Sat 26/4.
    2026 has 261 weekdays, 12 off (1/1, 2/1, 16–20/2, 27/4, 30/4, 1/5, 1/9, 2/9) plus Sat 10/1.
    """
    assert cal.working_days_count(year) == 250


def test_data_is_authoritative_over_the_package(cal: Calendar) -> None:
    """Days the holidays package adds for 2026 but the official data lacks stay working days."""
    # The package (0.109) has Mon 31/8/2026 off (worked Sat 22/8) and 24/11/2026 (Culture Day,
    # not yet law); the shipped data has neither, so neither changes a deadline.
    assert cal.is_working_day(date(2026, 8, 31))
    assert not cal.is_working_day(date(2026, 8, 22))
    assert cal.is_working_day(date(2026, 11, 24))
    assert "official data" in cal.source(2026)


def test_fallback_year_uses_the_package(cal: Calendar) -> None:
    """A year absent from the data falls back to the holidays package, and says so."""
    assert "holidays package" in cal.source(2030)
    assert not cal.is_working_day(date(2030, 1, 1))  # Wednesday, New Year
    assert not cal.is_working_day(date(2030, 9, 2))  # Monday, National Day
    assert cal.days_off(2030)[date(2030, 4, 30)]


def test_no_fallback_means_weekends_only() -> None:
    """Without a holidays country, a year absent from the data has only weekends off."""
    bare = Calendar(name="bare", holidays_country=None)
    assert bare.is_working_day(date(2030, 1, 1))
    assert not bare.is_working_day(date(2030, 1, 5))  # Saturday
    assert "weekends only" in bare.source(2030)


# --------------------------------------------------------------------------- working days


def test_ten_working_days_across_tet_2025(cal: Calendar) -> None:
    """10 working days from Thu 23/1/2025 skip Tết and end at the end of Thu 13/2/2025."""
    # Event Thu 23/1 (not counted). 1: Fri 24/1. Sat 25/1 – Sun 2/2 Tết.
    # 2: Mon 3/2, 3: Tue 4/2, 4: Wed 5/2, 5: Thu 6/2, 6: Fri 7/2, (8–9/2 weekend),
    # 7: Mon 10/2, 8: Tue 11/2, 9: Wed 12/2, 10: Thu 13/2.
    assert cal.due(at(2025, 1, 23, 3), "10 working days") == end_of(2025, 2, 13)
    period = cal.period(at(2025, 1, 23, 3), "10 working days")
    assert [d for d, _ in period.skipped] == [
        *days(date(2025, 1, 25), date(2025, 2, 2)),
        date(2025, 2, 8),
        date(2025, 2, 9),
    ]


def test_ten_working_days_across_tet_2026(cal: Calendar) -> None:
    """10 working days from Wed 11/2/2026 skip Tết and end at the end of Wed 4/3/2026."""
    # Event Wed 11/2 (not counted). 1: Thu 12/2, 2: Fri 13/2. Sat 14/2 – Sun 22/2 Tết.
    # 3: Mon 23/2, 4: Tue 24/2, 5: Wed 25/2, 6: Thu 26/2, 7: Fri 27/2, (28/2–1/3 weekend),
    # 8: Mon 2/3, 9: Tue 3/3, 10: Wed 4/3.
    assert cal.due(at(2026, 2, 11, 3), "10 working days") == end_of(2026, 3, 4)


def test_working_days_count_the_make_up_saturday(cal: Calendar) -> None:
    """From Fri 25/4/2025, Sat 26/4 is working day 1 and 30/4–4/5 are skipped."""
    start = at(2025, 4, 25, 3)
    assert cal.due(start, "1 working day") == end_of(2025, 4, 26)
    # 2: Mon 28/4, 3: Tue 29/4, then 30/4, 1/5, 2/5 off and 3–4/5 weekend, 4: Mon 5/5.
    assert cal.due(start, "4 working days") == end_of(2025, 5, 5)


def test_working_days_across_new_year_2026(cal: Calendar) -> None:
    """From Wed 31/12/2025, 1 working day skips 1/1, the swapped 2/1 and the weekend: Mon 5/1."""
    assert cal.due(at(2025, 12, 31, 3), "1 working day") == end_of(2026, 1, 5)
    # From Fri 9/1/2026 the next working day is the make-up Saturday 10/1.
    assert cal.due(at(2026, 1, 9, 3), "1 working day") == end_of(2026, 1, 10)


def test_add_working_days_both_directions(cal: Calendar) -> None:
    """add_working_days counts forward and back without counting the start day."""
    assert cal.add_working_days(date(2025, 1, 24), 1) == date(2025, 2, 3)
    assert cal.add_working_days(date(2025, 2, 3), -1) == date(2025, 1, 24)
    assert cal.add_working_days(date(2025, 1, 25), 0) == date(2025, 2, 3)
    assert cal.next_working_day(date(2026, 2, 13)) == date(2026, 2, 23)


@settings(max_examples=60, deadline=None)
@given(
    start=st.dates(min_value=date(2025, 1, 1), max_value=date(2026, 12, 31)),
    n=st.integers(min_value=1, max_value=40),
)
def test_add_working_days_lands_on_the_nth_working_day(start: date, n: int) -> None:
    """The result is a working day and exactly n working days lie after start up to it."""
    cal = _SHARED
    end = cal.add_working_days(start, n)
    assert cal.is_working_day(end)
    assert sum(cal.is_working_day(d) for d in days(start + timedelta(1), end)) == n


_SHARED = load_calendar("vn")


# --------------------------------------------------------------------------- calendar periods


def test_month_from_31_january_ends_28_february(cal: Calendar) -> None:
    """31/1/2025 + 1 month has no 31/2, so it ends at the end of Fri 28/2/2025."""
    assert cal.due(at(2025, 1, 31, 3), "1 month") == end_of(2025, 2, 28)


def test_month_from_31_january_in_leap_year_ends_29_february(cal: Calendar) -> None:
    """31/1/2028 + 1 month ends at the end of Tue 29/2/2028 (leap year)."""
    assert cal.due(at(2028, 1, 31, 3), "P1M") == end_of(2028, 2, 29)


def test_year_from_29_february_ends_28_february(cal: Calendar) -> None:
    """29/2/2028 + 1 year ends on the last day of February 2029 (Wed 28/2)."""
    assert cal.due(at(2028, 2, 29, 3), "1 year") == end_of(2029, 2, 28)


def test_month_ending_on_saturday_moves_to_next_working_day(cal: Calendar) -> None:
    """10/4/2025 + 1 month is Sat 10/5; the period ends at the end of Mon 12/5."""
    period = cal.period(at(2025, 4, 10, 3), "1 month")
    assert period.nominal_last_day == date(2025, 5, 10)
    assert period.due == end_of(2025, 5, 12)


def test_month_ending_on_holiday_moves_past_the_whole_break(cal: Calendar) -> None:
    """30/3/2025 + 1 month is 30/4 (holiday); 1/5, 2/5 and the weekend follow: Mon 5/5."""
    period = cal.period(at(2025, 3, 30, 3), "1 month")
    assert period.nominal_last_day == date(2025, 4, 30)
    assert period.last_day == date(2025, 5, 5)
    assert [d for d, _ in period.skipped] == days(date(2025, 4, 30), date(2025, 5, 4))


def test_days_ending_on_sunday_move_to_monday(cal: Calendar) -> None:
    """Thu 29/5/2025 + 3 days is Sun 1/6; the period ends at the end of Mon 2/6."""
    assert cal.due(at(2025, 5, 29, 3), "3 days") == end_of(2025, 6, 2)


def test_event_day_is_not_counted(cal: Calendar) -> None:
    """An event late on Mon 3/3/2025 + 1 day ends at the end of Tue 4/3, not of Mon 3/3."""
    late_monday = at(2025, 3, 3, 16, 0)  # 23:00 local
    assert cal.due(late_monday, "1 day") == end_of(2025, 3, 4)
    assert cal.due(late_monday, "0 days") == end_of(2025, 3, 3)
    assert cal.due(late_monday, "2 weeks") == end_of(2025, 3, 17)


def test_due_is_end_of_local_day_in_utc(cal: Calendar) -> None:
    """A day-based due is 23:59:59.999999 local, i.e. 16:59:59.999999Z, and aware UTC."""
    due = cal.due(at(2025, 3, 3, 3), "1 day")
    assert due.tzinfo is UTC
    assert due.isoformat() == "2025-03-04T16:59:59.999999+00:00"
    local = due.astimezone(cal.timezone)
    assert (local.date(), local.time()) == (date(2025, 3, 4), time.max)


def test_event_after_17_utc_is_the_next_local_day(cal: Calendar) -> None:
    """2025-01-01T17:30Z is 00:30 on 2 January in Vietnam, so counting starts from 2 January."""
    assert cal.local_date(at(2025, 1, 1, 17, 30)) == date(2025, 1, 2)
    assert cal.due(at(2025, 1, 1, 17, 30), "1 day") == end_of(2025, 1, 3)
    assert cal.due(at(2025, 1, 1, 17, 30), "1 working day") == end_of(2025, 1, 3)
    # One hour earlier it is still 1 January (a holiday) locally.
    assert cal.due(at(2025, 1, 1, 16, 30), "1 day") == end_of(2025, 1, 2)
    assert cal.due(at(2025, 1, 1, 16, 30), "1 working day") == end_of(2025, 1, 2)


def test_offset_input_is_converted_to_local(cal: Calendar) -> None:
    """A start given in another offset is converted to Vietnam time before counting."""
    from zoneinfo import ZoneInfo

    paris = datetime(2025, 1, 1, 19, 0, tzinfo=ZoneInfo("Europe/Paris"))  # 18:00Z = 01:00 local
    assert cal.due(paris, "1 day") == end_of(2025, 1, 3)


def test_hours_and_minutes_are_exact(cal: Calendar) -> None:
    """Hours and minutes are added exactly, even across Tết, with no end-of-day rounding."""
    start = at(2025, 1, 24, 9, 0)
    assert cal.due(start, "4 hours") == at(2025, 1, 24, 13, 0)
    assert cal.due(start, "PT30M") == at(2025, 1, 24, 9, 30)
    assert cal.due(start, "48 hours") == at(2025, 1, 26, 9, 0)


def test_plain_date_start_means_that_local_day(cal: Calendar) -> None:
    """A date (not datetime) start is that local day."""
    assert cal.due(date(2025, 1, 23), "10 working days") == end_of(2025, 2, 13)


def test_naive_datetime_is_refused(cal: Calendar) -> None:
    """A naive datetime is ambiguous (local or UTC?) and is refused."""
    with pytest.raises(CalendarError, match="naive"):
        cal.due(datetime(2025, 1, 1, 10), "1 day")


# --------------------------------------------------------------------------- reminders, escalation


def test_reminders_count_working_days_back_from_due_day(cal: Calendar) -> None:
    """A reminder N working days before due fires at 08:00 local (01:00Z) on that day."""
    due = end_of(2025, 2, 13)  # Thu
    # Back from Thu 13/2: 1 Wed 12, 2 Tue 11, 3 Mon 10, 4 Fri 7, 5 Thu 6.
    assert cal.before(due, "5 working days") == at(2025, 2, 6, 1)
    assert cal.before(due, "1 working day") == at(2025, 2, 12, 1)
    assert cal.before(due, "0 working days") == at(2025, 2, 13, 1)


def test_reminder_skips_tet_backwards(cal: Calendar) -> None:
    """2 working days before Tue 4/2/2025 is Fri 24/1, jumping back over Tết."""
    assert cal.before(end_of(2025, 2, 4), "2 working days") == at(2025, 1, 24, 1)


def test_reminders_in_calendar_units_and_hours(cal: Calendar) -> None:
    """Days/months count calendar days back at 08:00 local; hours subtract exactly."""
    due = end_of(2025, 3, 31)
    assert cal.before(due, "3 days") == at(2025, 3, 28, 1)
    assert cal.before(due, "1 month") == at(2025, 2, 28, 1)  # 31/3 - 1 month: 28/2
    assert cal.before(due, "2 hours") == datetime(2025, 3, 31, 14, 59, 59, 999999, tzinfo=UTC)


def test_escalation_after_due(cal: Calendar) -> None:
    """'0 days' after due is the due itself; other steps count from the due day."""
    due = end_of(2025, 2, 13)  # Thu
    assert cal.after(due, "0 days") == due
    assert cal.after(due, "3 working days") == end_of(2025, 2, 18)  # Fri 14, Mon 17, Tue 18
    assert cal.after(end_of(2025, 2, 7), "1 day") == end_of(2025, 2, 10)  # Sat 8/2 -> Mon 10/2
    assert cal.after(due, "2 hours") == due + timedelta(hours=2)


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10 working days", Duration(10, "working_days")),
        ("1 working day", Duration(1, "working_days")),
        ("1 month", Duration(1, "months")),
        ("2 months", Duration(2, "months")),
        ("3 weeks", Duration(3, "weeks")),
        ("5 days", Duration(5, "days")),
        ("1 day", Duration(1, "days")),
        ("0 days", Duration(0, "days")),
        ("4 hours", Duration(4, "hours")),
        ("30 minutes", Duration(30, "minutes")),
        ("1 year", Duration(1, "years")),
        ("  5   Working   Days ", Duration(5, "working_days")),
        ("10 working_days", Duration(10, "working_days")),
        ("P1M", Duration(1, "months")),
        ("P10D", Duration(10, "days")),
        ("P2W", Duration(2, "weeks")),
        ("PT4H", Duration(4, "hours")),
        ("PT30M", Duration(30, "minutes")),
        ("P1Y", Duration(1, "years")),
        ("p1m", Duration(1, "months")),
        ("10 ngày làm việc", Duration(10, "working_days")),
        ("1 tháng", Duration(1, "months")),
        ("3 ngày", Duration(3, "days")),
        ("2 tuần", Duration(2, "weeks")),
    ],
)
def test_parse_duration_accepts(text: str, expected: Duration) -> None:
    """Human, ISO 8601 and Vietnamese forms parse to the same Duration."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("ten days", "number followed by a unit"),
        ("10", "number followed by a unit"),
        ("days", "number followed by a unit"),
        ("1.5 days", "whole number"),
        ("-3 days", "negative"),
        ("3 fortnights", "unknown unit"),
        ("P1M2D", "mixed units"),
        ("PT30S", "seconds"),
        ("P", "ISO 8601"),
        ("PT", "ISO 8601"),
        ("P1.5D", "ISO 8601"),
        ("100001 days", "at most"),
    ],
)
def test_parse_duration_refuses(text: str, why: str) -> None:
    """Invalid durations raise DurationError saying why and listing the accepted forms."""
    with pytest.raises(DurationError, match=why) as info:
        parse_duration(text)
    assert "10 working days" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, SangkienError)


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("amount", [0, 1, 2, 25])
def test_duration_str_round_trips(unit: str, amount: int) -> None:
    """str(Duration) is text that parse_duration reads back to the same Duration."""
    d = Duration(amount, unit)  # type: ignore[arg-type]
    assert parse_duration(str(d)) == d


def test_duration_text_is_singular_or_plural() -> None:
    """str(Duration) reads naturally: '1 working day', '10 working days'."""
    assert str(Duration(1, "working_days")) == "1 working day"
    assert str(Duration(10, "working_days")) == "10 working days"
    assert str(Duration(1, "months")) == "1 month"


def test_duration_refuses_bad_fields() -> None:
    """A Duration needs a known unit and a non-negative whole amount."""
    with pytest.raises(DurationError):
        Duration(1, "fortnights")  # type: ignore[arg-type]
    with pytest.raises(DurationError):
        Duration(-1, "days")
    with pytest.raises(DurationError):
        Duration(True, "days")


# --------------------------------------------------------------------------- loading, data changes

YEAR_2027 = """\
calendar: vn
years:
  2027:
    source: hypothetical decision for the test
    days_off:
      - {date: 2027-01-01, name: Tết Dương lịch}
      - {from: 2027-02-06, to: 2027-02-14, name: Tết Nguyên đán Đinh Mùi}
      - {date: 2027-04-16, name: Giỗ Tổ Hùng Vương}
      - {date: 2027-04-30, name: Ngày Chiến thắng}
      - {date: 2027-05-03, name: Nghỉ bù Quốc tế Lao động}
      - {date: 2027-09-02, name: Quốc khánh}
      - {date: 2027-09-03, name: Quốc khánh (ngày liền kề)}
"""


def test_extra_dir_adds_a_year_and_changes_results(tmp_path: Path, cal: Calendar) -> None:
    """A vn-2027.yaml in an extra folder makes 2027 official; deadlines and fingerprint move."""
    (tmp_path / "vn-2027.yaml").write_text(YEAR_2027, encoding="utf-8")
    start = at(2027, 2, 3, 3)  # Wed 3/2/2027
    # The package's Tết 2027 estimate: Thu 4/2, Fri 5/2 and Mon 8 – Wed 10/2 off -> Thu 11/2.
    assert cal.due(start, "1 working day") == end_of(2027, 2, 11)
    extended = load_calendar("vn", [tmp_path])
    # The data's Tết is Sat 6/2 – Sun 14/2, so Thu 4/2 is a working day.
    assert extended.due(start, "1 working day") == end_of(2027, 2, 4)
    assert "official data" in extended.source(2027)
    assert "holidays package" in cal.source(2027)
    assert extended.fingerprint != cal.fingerprint
    assert extended != cal
    # The shipped years are untouched.
    assert extended.days_off(2025) == cal.days_off(2025)


def test_later_file_replaces_a_whole_year(tmp_path: Path, cal: Calendar) -> None:
    """A year in a later file replaces that year entirely (here: the 2025 swap is undone)."""
    (tmp_path / "vn.yaml").write_text(
        "years:\n  2025:\n    days_off:\n      - {date: 2025-01-01, name: Tết Dương lịch}\n",
        encoding="utf-8",
    )
    (tmp_path / "vn-z.yaml").write_text(
        "years:\n  2025:\n    days_off:\n      - {date: 2025-05-02, name: Nghỉ}\n",
        encoding="utf-8",
    )
    changed = load_calendar("vn", [tmp_path])
    assert list(changed.days_off(2025)) == [date(2025, 5, 2)]  # vn-z.yaml read last wins
    assert changed.is_working_day(date(2025, 1, 1))
    assert not changed.is_working_day(date(2025, 4, 26))  # no make-up Saturday any more
    assert changed.days_off(2026) == cal.days_off(2026)


def test_fingerprint_is_stable_and_ignores_names(tmp_path: Path, cal: Calendar) -> None:
    """Reloading gives the same fingerprint; renaming a day changes no deadline and no hash."""
    assert load_calendar("vn").fingerprint == cal.fingerprint
    assert hash(load_calendar("vn")) == hash(cal)
    (tmp_path / "vn.yaml").write_text(
        YEAR_2027.replace("Tết Dương lịch", "New Year"), encoding="utf-8"
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "vn.yaml").write_text(YEAR_2027, encoding="utf-8")
    assert (
        load_calendar("vn", [tmp_path]).fingerprint
        == load_calendar("vn", [tmp_path / "other"]).fingerprint
    )


def test_calendar_is_immutable(cal: Calendar) -> None:
    """A Calendar cannot be changed after it is built."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        cal.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just\n- a list\n", "must be a mapping"),
        ("timezone: Asia/Ho_Chi_Minh\nholiday: [x]\n", "unknown key 'holiday'"),
        ("calendar: th\n", "for calendar 'th'"),
        ("timezone: Mars/Olympus\n", "unknown time zone"),
        ("weekend: [sat, funday]\n", "unknown day"),
        ("workday_start: 8\n", "HH:MM"),
        ("holidays_country: XX\n", "no country 'XX'"),
        ("years:\n  twenty:\n    days_off: []\n", "year keys"),
        ("years:\n  2027:\n    days_off:\n      - {date: 2027-02-30, name: x}\n", "YYYY-MM-DD"),
        ("years:\n  2027:\n    days_off:\n      - {date: 2027-02-03}\n", "`name`"),
        (
            "years:\n  2027:\n    days_off:\n      - {from: 2027-02-10, to: 2027-02-06, name: x}\n",
            "before",
        ),
        (
            "years:\n  2027:\n    working_days:\n      - {date: 2027-02-03, name: x}\n",
            "make-up working days are weekend days",
        ),
        (
            "years:\n  2027:\n    days_off:\n      - {date: 2027-02-06, name: a}\n"
            "    working_days:\n      - {date: 2027-02-06, name: b}\n",
            "working day and as a day off",
        ),
        (
            "years:\n  2027:\n    days_off:\n      - {date: 2027-01-01, name: a}\n"
            "      - {date: 2027-01-01, name: b}\n",
            "already a day off",
        ),
        ("years:\n  2027:\n    days_off:\n      - {date: 2031-01-01, name: a}\n", "too far"),
        ("years: [2027\n", "YAML syntax"),
        ("x: !!python/object:os.system {}\n", "not allowed"),
    ],
)
def test_malformed_calendar_file_is_refused(tmp_path: Path, text: str, message: str) -> None:
    """A malformed calendar file raises CalendarError naming the file, position and problem."""
    path = tmp_path / "vn-bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CalendarError, match=message) as info:
        load_calendar("vn", [tmp_path])
    assert "vn-bad.yaml" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_error_message_has_line_and_column(tmp_path: Path) -> None:
    """Errors in a calendar file point at file:line:col of the offending value."""
    (tmp_path / "vn-bad.yaml").write_text(
        "years:\n  2027:\n    days_off:\n      - date: 2027-13-01\n        name: x\n",
        encoding="utf-8",
    )
    with pytest.raises(CalendarError, match=r"vn-bad\.yaml:4:15: expected a date"):
        load_calendar("vn", [tmp_path])


@pytest.mark.parametrize("name", ["../etc", "VN", "", "a/b"])
def test_invalid_calendar_name_is_refused(name: str) -> None:
    """Calendar names are simple lowercase identifiers, never paths."""
    with pytest.raises(CalendarError, match="invalid calendar name"):
        load_calendar(name)


def test_unknown_calendar_and_missing_folder(tmp_path: Path) -> None:
    """An unknown calendar name and a missing extra folder are clear errors."""
    with pytest.raises(CalendarError, match=r"no calendar 'mars'.*vn"):
        load_calendar("mars")
    with pytest.raises(CalendarError, match="does not exist"):
        load_calendar("vn", [tmp_path / "missing"])


def test_calendar_only_in_extra_dir(tmp_path: Path) -> None:
    """A calendar that does not ship can come entirely from an extra folder."""
    (tmp_path / "office.yaml").write_text(
        "calendar: office\nweekend: [sun]\nholidays_country: null\n", encoding="utf-8"
    )
    office = load_calendar("office", [tmp_path])
    assert office.is_working_day(date(2025, 1, 4))  # Saturday
    assert not office.is_working_day(date(2025, 1, 5))  # Sunday
