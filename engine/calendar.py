"""Working-day calendars and legal periods (Civil Code 2015, arts. 147–148).

A :class:`Calendar` knows one jurisdiction's weekend, its official days off and the weekend days
worked to make up for swapped days. :meth:`Calendar.due` turns an event time and a
:class:`Duration` into the moment a period ends:

- minutes and hours are exact additions;
- for days, working days, weeks, months and years the day of the event is not counted; months
  and years land on the same day of the target month, else on its last day;
- a period whose last day is not a working day ends at the end of the next working day;
- day-based periods end at the END of their last day (23:59:59.999999) in the calendar's time
  zone, returned as an aware UTC datetime.

Days off come from configuration data (``config/data/calendars/<name>.yaml``, loaded by
:func:`load_calendar`): for a year listed there the data is authoritative; any other year falls
back to the ``holidays`` package, which knows the statutory and lunar holidays but only the swap
decisions it was released with (:meth:`Calendar.source` says which applies).

Errors (both are :class:`~sangkien.errors.SangkienError` and :class:`ValueError`)::

    SangkienError
    ├── CalendarError     a calendar file or argument is invalid, or a date is out of range
    └── DurationError     a duration text is not understood
"""

from __future__ import annotations

import calendar as _stdcal
import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sangkien.errors import DefinitionError, SangkienError

__all__ = [
    "UNITS",
    "Calendar",
    "CalendarError",
    "DayEntry",
    "Duration",
    "DurationError",
    "DurationUnit",
    "OfficialYear",
    "Period",
    "load_calendar",
    "parse_duration",
    "shipped_calendars_dir",
]

DurationUnit = Literal["minutes", "hours", "days", "working_days", "weeks", "months", "years"]
UNITS: tuple[str, ...] = get_args(DurationUnit)

DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
MAX_AMOUNT = 100_000
"""Largest duration amount accepted (100 000 days is already 273 years)."""

_MAX_SCAN_DAYS = 3_660
"""How far to look for a working day before deciding the calendar has none."""


class CalendarError(SangkienError, ValueError):
    """A calendar file or argument is invalid, or a computed date is out of range."""


class DurationError(SangkienError, ValueError):
    """A duration text could not be understood."""


# --------------------------------------------------------------------------- durations

_LABELS: dict[str, tuple[str, str]] = {
    "minutes": ("minute", "minutes"),
    "hours": ("hour", "hours"),
    "days": ("day", "days"),
    "working_days": ("working day", "working days"),
    "weeks": ("week", "weeks"),
    "months": ("month", "months"),
    "years": ("year", "years"),
}

_ALIASES: dict[str, str] = {
    "minute": "minutes",
    "minutes": "minutes",
    "min": "minutes",
    "mins": "minutes",
    "phút": "minutes",
    "hour": "hours",
    "hours": "hours",
    "giờ": "hours",
    "tiếng": "hours",
    "day": "days",
    "days": "days",
    "calendar day": "days",
    "calendar days": "days",
    "ngày": "days",
    "working day": "working_days",
    "working days": "working_days",
    "work day": "working_days",
    "work days": "working_days",
    "workday": "working_days",
    "workdays": "working_days",
    "business day": "working_days",
    "business days": "working_days",
    "ngày làm việc": "working_days",
    "week": "weeks",
    "weeks": "weeks",
    "tuần": "weeks",
    "month": "months",
    "months": "months",
    "tháng": "months",
    "year": "years",
    "years": "years",
    "năm": "years",
}

_ACCEPTED = (
    "a whole number and a unit, e.g. '10 working days', '1 working day', '5 days', '3 weeks', "
    "'1 month', '2 months', '1 year', '4 hours', '30 minutes'; Vietnamese '10 ngày làm việc', "
    "'3 ngày', '1 tháng'; or ISO 8601 with one unit: P10D, P2W, P1M, P1Y, PT4H, PT30M"
)

_HUMAN = re.compile(r"^(?P<n>[+-]?\d+)\s*(?P<unit>\D.*)$")
_ISO = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?)?$"
)


@dataclass(frozen=True, slots=True)
class Duration:
    """A whole number of one unit; ``str()`` gives text that :func:`parse_duration` reads back."""

    amount: int
    unit: DurationUnit

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise DurationError(
                f"unknown duration unit {self.unit!r}; use one of {', '.join(UNITS)}"
            )
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise DurationError(f"duration amount must be a whole number, got {self.amount!r}")
        if not 0 <= self.amount <= MAX_AMOUNT:
            raise DurationError(
                f"duration amount must be between 0 and {MAX_AMOUNT}, got {self.amount}"
            )

    def __str__(self) -> str:
        one, many = _LABELS[self.unit]
        return f"{self.amount} {one if self.amount == 1 else many}"

    @property
    def exact(self) -> bool:
        """True for minutes and hours, which are added exactly (no day counting)."""
        return self.unit in ("minutes", "hours")

    def timedelta(self) -> timedelta:
        """Return the exact length of a minutes/hours duration."""
        if self.unit == "minutes":
            return timedelta(minutes=self.amount)
        if self.unit == "hours":
            return timedelta(hours=self.amount)
        raise DurationError(f"{self} has no fixed length; count it with a Calendar")


def _bad(text: object, why: str) -> DurationError:
    return DurationError(f"invalid duration {text!r}: {why}; accepted: {_ACCEPTED}")


def parse_duration(text: str | Duration) -> Duration:
    """Read a duration such as ``"10 working days"``, ``"1 tháng"`` or ``"P1M"``."""
    if isinstance(text, Duration):
        return text
    if not isinstance(text, str):
        raise _bad(text, f"expected text, got {type(text).__name__}")
    return _parse_text(text)


@functools.lru_cache(maxsize=1024)  # workflows repeat a handful of period texts
def _parse_text(text: str) -> Duration:
    raw = unicodedata.normalize("NFC", text).strip()
    if not raw:
        raise _bad(text, "it is empty")
    if raw[:1] in ("P", "p"):
        return _parse_iso(raw, text)
    if re.match(r"^[+-]?\d*[.,]\d", raw):
        raise _bad(text, "the amount must be a whole number")
    m = _HUMAN.match(raw)
    if not m:
        raise _bad(text, "expected a number followed by a unit")
    if m.group("n").startswith("-"):
        raise _bad(text, "it cannot be negative")
    amount = int(m.group("n"))
    unit_text = " ".join(m.group("unit").replace("_", " ").lower().split())
    unit = _ALIASES.get(unit_text)
    if unit is None:
        raise _bad(text, f"unknown unit {unit_text!r}")
    if amount > MAX_AMOUNT:
        raise _bad(text, f"at most {MAX_AMOUNT} {_LABELS[unit][1]}")
    return Duration(amount, cast(DurationUnit, unit))


def _parse_iso(raw: str, text: str) -> Duration:
    upper = raw.upper()
    m = _ISO.match(upper)
    if not m or upper in ("P", "PT") or upper.endswith("T"):
        raise _bad(text, "not an ISO 8601 duration")
    parts = {k: v for k, v in m.groupdict().items() if v is not None}
    if "seconds" in parts:
        raise _bad(text, "seconds are not supported")
    if len(parts) != 1:
        raise _bad(text, f"mixed units ({', '.join(parts)}) are not supported; write one unit")
    ((unit, value),) = parts.items()
    amount = int(value)
    if amount > MAX_AMOUNT:
        raise _bad(text, f"at most {MAX_AMOUNT} {unit}")
    return Duration(amount, cast(DurationUnit, unit))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class DayEntry:
    """One listed day: a day off, or a weekend day worked to make up for one."""

    day: date
    name: str
    source: str = ""
    where: str = field(default="", compare=False)
    """``file:line:col`` of the entry, for error messages."""


@dataclass(frozen=True, slots=True)
class OfficialYear:
    """The official decision for one year: every day off and every make-up working day."""

    year: int
    days_off: tuple[DayEntry, ...] = ()
    working_days: tuple[DayEntry, ...] = ()
    source: str = ""
    file: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class _Year:
    off: Mapping[date, str]
    work: Mapping[date, str]
    source: str


@dataclass(frozen=True, slots=True)
class Period:
    """How a period was counted: where it started, which days it skipped, when it ends."""

    start: datetime
    """The event, in the calendar's local time."""
    duration: Duration
    due: datetime
    """The end of the period, aware UTC."""
    nominal_last_day: date | None
    """For day-based units: the last day before moving off a non-working day."""
    last_day: date | None
    """For day-based units: the local day at whose end the period ends."""
    skipped: tuple[tuple[date, str], ...]
    """Days not counted (working days) or jumped over (other units), with the reason."""


_WEEKDAYS = {
    "mon": 0,
    "monday": 0,
    "tue": 1,
    "tuesday": 1,
    "wed": 2,
    "wednesday": 2,
    "thu": 3,
    "thursday": 3,
    "fri": 4,
    "friday": 4,
    "sat": 5,
    "saturday": 5,
    "sun": 6,
    "sunday": 6,
}
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _coerce_tz(value: ZoneInfo | str) -> ZoneInfo:
    if isinstance(value, ZoneInfo):
        return value
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarError(
            f"unknown time zone {value!r}; use an IANA name such as {DEFAULT_TIMEZONE!r}"
        ) from None


# --------------------------------------------------------------------------- calendar


@dataclass(frozen=True, eq=False)
class Calendar:
    """Working-day arithmetic for one jurisdiction; immutable and safe to share across threads.

    ``official`` years are authoritative; other years use the ``holidays`` package for
    ``holidays_country`` (or weekends only when that is None). Two calendars are equal when they
    compute the same deadlines (same :attr:`fingerprint`).
    """

    name: str = "vn"
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo(DEFAULT_TIMEZONE))
    weekend: frozenset[int] = frozenset({5, 6})
    """Weekly rest days, 0 = Monday … 6 = Sunday."""
    workday_start: time = time(8, 0)
    official: tuple[OfficialYear, ...] = ()
    holidays_country: str | None = "VN"
    title: str = ""
    files: tuple[str, ...] = field(default=(), compare=False)
    """Files the calendar was loaded from, in the order applied."""

    def __post_init__(self) -> None:
        tz = _coerce_tz(self.timezone)
        object.__setattr__(self, "timezone", tz)
        weekend = frozenset(self.weekend)
        if not all(isinstance(d, int) and 0 <= d <= 6 for d in weekend):
            raise CalendarError(f"calendar {self.name!r}: weekend days must be 0 (Mon) to 6 (Sun)")
        if len(weekend) >= 7:
            raise CalendarError(f"calendar {self.name!r}: the weekend cannot cover the whole week")
        object.__setattr__(self, "weekend", weekend)
        years = sorted(self.official, key=lambda y: y.year)
        seen_years = [y.year for y in years]
        if len(set(seen_years)) != len(seen_years):
            raise CalendarError(f"calendar {self.name!r}: a year is given twice in `official`")
        object.__setattr__(self, "official", tuple(years))
        off: dict[date, DayEntry] = {}
        work: dict[date, DayEntry] = {}
        for oy in years:
            for e in oy.days_off:
                if e.day in off and off[e.day].name != e.name:
                    raise CalendarError(
                        f"{e.where or self.name}: {e.day} is listed twice as a day off "
                        f"({off[e.day].name!r} and {e.name!r})"
                    )
                off[e.day] = e
            for e in oy.working_days:
                if e.day.weekday() not in weekend:
                    raise CalendarError(
                        f"{e.where or self.name}: {e.day} is a {_DAY_NAMES[e.day.weekday()]}, "
                        "already a working day; make-up working days are weekend days"
                    )
                work[e.day] = e
        for d, e in work.items():
            if d in off:
                raise CalendarError(
                    f"{e.where or self.name}: {d} is listed both as a day off "
                    f"({off[d].name!r}) and as a working day ({e.name!r})"
                )
        object.__setattr__(self, "_off", off)
        object.__setattr__(self, "_work", work)
        object.__setattr__(self, "_official_years", frozenset(seen_years))
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_fingerprint", self._compute_fingerprint())

    # -- identity

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Calendar):
            return NotImplemented
        return self.name == other.name and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash((self.name, self.fingerprint))

    def __repr__(self) -> str:
        years = ",".join(str(y.year) for y in self.official) or "-"
        return (
            f"Calendar(name={self.name!r}, timezone={self.timezone.key!r}, years={years}, "
            f"fallback={self.holidays_country!r}, fingerprint={self.fingerprint!r})"
        )

    @property
    def fingerprint(self) -> str:
        """Short hash of everything that can change a computed deadline.

        Names and source notes are left out; the ``holidays`` package version is included when
        a fallback country is set, since upgrading it can change the fallback years.
        """
        return cast(str, self.__dict__["_fingerprint"])

    def _compute_fingerprint(self) -> str:
        fallback: list[str] | None = None
        if self.holidays_country:
            fallback = [self.holidays_country, _holidays_version()]
        body = {
            "timezone": self.timezone.key,
            "weekend": sorted(self.weekend),
            "workday_start": self.workday_start.isoformat(),
            "fallback": fallback,
            "years": {
                str(y.year): {
                    "off": sorted(e.day.isoformat() for e in y.days_off),
                    "work": sorted(e.day.isoformat() for e in y.working_days),
                }
                for y in self.official
            },
        }
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    # -- per-year data

    @property
    def official_years(self) -> frozenset[int]:
        """Years whose days off come from official data rather than the package."""
        return cast(frozenset[int], self.__dict__["_official_years"])

    def _year(self, year: int) -> _Year:
        cache: dict[int, _Year] = self.__dict__["_cache"]
        found = cache.get(year)
        if found is None:
            found = self._build_year(year)
            cache[year] = found
        return found

    def _build_year(self, year: int) -> _Year:
        all_off: dict[date, DayEntry] = self.__dict__["_off"]
        all_work: dict[date, DayEntry] = self.__dict__["_work"]
        off = {d: e.name for d, e in all_off.items() if d.year == year}
        work = {d: e.name for d, e in all_work.items() if d.year == year}
        if year in self.official_years:
            oy = next(y for y in self.official if y.year == year)
            where = f" ({oy.file})" if oy.file else ""
            note = f": {oy.source}" if oy.source else ""
            source = f"official data{where}{note}"
        elif self.holidays_country:
            pkg_off, pkg_work = _package_year(self.holidays_country, year)
            merged_off = {d: n for d, n in pkg_off.items() if d not in work}
            merged_off.update(off)
            merged_work = {d: n for d, n in pkg_work.items() if d not in off}
            merged_work = {d: n for d, n in merged_work.items() if d.weekday() in self.weekend}
            merged_work.update(work)
            off, work = merged_off, merged_work
            source = (
                f"holidays package {_holidays_version()} (country {self.holidays_country}); "
                f"no official decision for {year} in the calendar data, so Tết and swapped "
                "days are the package's estimate"
            )
        else:
            source = f"weekends only (no data for {year} and no holidays_country fallback)"
        return _Year(
            MappingProxyType(dict(sorted(off.items()))),
            MappingProxyType(dict(sorted(work.items()))),
            source,
        )

    def source(self, year: int) -> str:
        """Say where the days off of *year* come from (official data or the package)."""
        return self._year(year).source

    def days_off(self, year: int, *, include_weekends: bool = False) -> dict[date, str]:
        """Return the days off of *year* with their names, weekend days only if asked."""
        return {
            d: n
            for d, n in self._year(year).off.items()
            if include_weekends or d.weekday() not in self.weekend
        }

    def working_weekend_days(self, year: int) -> dict[date, str]:
        """Return the weekend days of *year* that are worked (make-up days) with their names."""
        return dict(self._year(year).work)

    def package_differences(self, year: int) -> tuple[dict[date, str], dict[date, str]]:
        """Compare *year* with the ``holidays`` package, on days that change working-day counts.

        Returns ``(only_in_package, only_here)``: days off on a weekday (or make-up working
        days, named "worked: …") that the package has and this calendar does not, and the
        reverse. Empty when there is no fallback country.
        """
        if not self.holidays_country:
            return {}, {}
        pkg_off, pkg_work = _package_year(self.holidays_country, year)

        def effective(off: Mapping[date, str], work: Mapping[date, str]) -> dict[date, str]:
            out = {d: n for d, n in off.items() if d.weekday() not in self.weekend}
            out.update({d: f"worked: {n}" for d, n in work.items() if d.weekday() in self.weekend})
            return out

        theirs = effective(pkg_off, pkg_work)
        ours = effective(self._year(year).off, self._year(year).work)
        return (
            {d: n for d, n in sorted(theirs.items()) if d not in ours},
            {d: n for d, n in sorted(ours.items()) if d not in theirs},
        )

    # -- day arithmetic

    def is_working_day(self, d: date) -> bool:
        """Tell whether *d* is a working day (make-up weekend days included)."""
        if isinstance(d, datetime):
            d = self.local_date(d)
        y = self._year(d.year)
        if d in y.work:
            return True
        if d.weekday() in self.weekend:
            return False
        return d not in y.off

    def why_not_working(self, d: date) -> str | None:
        """Return why *d* is not a working day (holiday name or weekend), or None if it is one."""
        if self.is_working_day(d):
            return None
        name = self._year(d.year).off.get(d)
        if name is not None:
            return name
        return f"weekend ({_DAY_NAMES[d.weekday()]})"

    def working_days_count(self, year: int) -> int:
        """Count the working days of *year*."""
        d, end, n = date(year, 1, 1), date(year, 12, 31), 0
        while d <= end:
            n += self.is_working_day(d)
            d += timedelta(days=1)
        return n

    def next_working_day(self, d: date) -> date:
        """Return the first working day strictly after *d*."""
        return self._step(d, +1)

    def previous_working_day(self, d: date) -> date:
        """Return the last working day strictly before *d*."""
        return self._step(d, -1)

    def _step(self, d: date, direction: int) -> date:
        one = timedelta(days=direction)
        cur = d
        for _ in range(_MAX_SCAN_DAYS):
            cur = _shift(cur, one)
            if self.is_working_day(cur):
                return cur
        raise CalendarError(
            f"calendar {self.name!r} has no working day within {_MAX_SCAN_DAYS} days of {d}"
        )

    def add_working_days(self, d: date, n: int) -> date:
        """Count *n* working days after *d* (*d* not counted); negative *n* counts backwards.

        ``n == 0`` returns *d* if it is a working day, else the next working day.
        """
        if n == 0:
            return d if self.is_working_day(d) else self.next_working_day(d)
        cur = d
        for _ in range(abs(n)):
            cur = self._step(cur, 1 if n > 0 else -1)
        return cur

    # -- moments

    def local(self, moment: datetime) -> datetime:
        """Convert an aware datetime to the calendar's local time."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise CalendarError(
                f"naive datetime {moment.isoformat()}; pass an aware datetime (UTC in storage)"
            )
        return moment.astimezone(self.timezone)

    def local_date(self, moment: datetime | date) -> date:
        """Return the local calendar day of *moment* (a plain date is returned unchanged)."""
        if isinstance(moment, datetime):
            return self.local(moment).date()
        return moment

    def end_of_day(self, d: date) -> datetime:
        """Return the last instant (23:59:59.999999 local) of day *d*, as aware UTC."""
        return datetime.combine(d, time.max, tzinfo=self.timezone).astimezone(UTC)

    def start_of_workday(self, d: date) -> datetime:
        """Return *workday_start* local on day *d*, as aware UTC."""
        return datetime.combine(d, self.workday_start, tzinfo=self.timezone).astimezone(UTC)

    def _start(self, start: datetime | date) -> datetime:
        if isinstance(start, datetime):
            return self.local(start)
        return datetime.combine(start, time.min, tzinfo=self.timezone)

    def period(self, start: datetime | date, duration: Duration | str) -> Period:
        """Count *duration* from the event at *start* and explain the result (see :meth:`due`)."""
        return self._period(start, duration, explain=True)

    def _period(self, start: datetime | date, duration: Duration | str, *, explain: bool) -> Period:
        """The period; its days skipped are listed only if *explain* (``due`` needs none)."""
        dur = parse_duration(duration)
        local_start = self._start(start)
        if dur.exact:
            try:
                due = (local_start + dur.timedelta()).astimezone(UTC)
            except OverflowError:
                raise CalendarError(f"{dur} after {start} is out of range") from None
            return Period(local_start, dur, due, None, None, ())
        event_day = local_start.date()
        skipped: tuple[tuple[date, str], ...] = ()
        try:
            if dur.unit == "working_days":
                last = self.add_working_days(event_day, dur.amount)
                nominal = last
                if explain:
                    skipped = tuple(
                        (d, cast(str, self.why_not_working(d)))
                        for d in _days(_shift(event_day, timedelta(days=1)), last)
                        if not self.is_working_day(d)
                    )
            else:
                nominal = _add_calendar(event_day, dur.amount, dur.unit, +1)
                last = nominal if self.is_working_day(nominal) else self.next_working_day(nominal)
                if explain:
                    skipped = tuple(
                        (d, cast(str, self.why_not_working(d)))
                        for d in _days(nominal, last)
                        if d != last
                    )
            due = self.end_of_day(last)
        except OverflowError:
            raise CalendarError(f"{dur} after {event_day} is out of range") from None
        return Period(local_start, dur, due, nominal, last, skipped)

    def due(self, start: datetime | date, duration: Duration | str) -> datetime:
        """Return when a period of *duration* starting at the event *start* ends (aware UTC).

        *start* is an aware datetime (a plain date means that local day). Minutes and hours
        are added exactly. Other units follow the Civil Code: the event day is not counted,
        months/years keep the day of the month (or take the month's last day), a last day that
        is not a working day moves to the next working day, and the period ends at the end of
        that day in the calendar's time zone.
        """
        return self._period(start, duration, explain=False).due

    def before(self, due: datetime | date, duration: Duration | str) -> datetime:
        """Return when a reminder *duration* before *due* fires (aware UTC).

        Minutes and hours are subtracted exactly. Other units count back from the local due
        DAY (working days skip days off; days, weeks, months and years are calendar counts,
        not moved off weekends) and fire at *workday_start* local time on the day reached.
        """
        dur = parse_duration(duration)
        if dur.exact:
            if not isinstance(due, datetime):
                due = self.end_of_day(due)
            return self.local(due).astimezone(UTC) - dur.timedelta()
        due_day = self.local_date(due)
        try:
            if dur.amount == 0:
                day = due_day
            elif dur.unit == "working_days":
                day = self.add_working_days(due_day, -dur.amount)
            else:
                day = _add_calendar(due_day, dur.amount, dur.unit, -1)
        except OverflowError:
            raise CalendarError(f"{dur} before {due_day} is out of range") from None
        return self.start_of_workday(day)

    def after(self, due: datetime | date, duration: Duration | str) -> datetime:
        """Return when an escalation *duration* after *due* fires (aware UTC).

        A zero duration is *due* itself; anything else is counted like :meth:`due` with the
        due day as the event day (so "3 working days" ends at the end of the third working day
        after the due day).
        """
        dur = parse_duration(duration)
        if not isinstance(due, datetime):
            due = self.end_of_day(due)
        if dur.amount == 0:
            return self.local(due).astimezone(UTC)
        return self.due(due, dur)


def _shift(d: date, delta: timedelta) -> date:
    try:
        return d + delta
    except OverflowError:
        raise CalendarError(f"date out of range after {d}") from None


def _days(first: date, last: date) -> Iterator[date]:
    d = first
    while d <= last:
        yield d
        d += timedelta(days=1)


def _add_months(d: date, months: int) -> date:
    index = d.year * 12 + (d.month - 1) + months
    year, month = divmod(index, 12)
    if not 1 <= year <= 9999:
        raise OverflowError
    day = min(d.day, _stdcal.monthrange(year, month + 1)[1])
    return date(year, month + 1, day)


def _add_calendar(d: date, amount: int, unit: str, sign: int) -> date:
    if unit == "days":
        return d + timedelta(days=sign * amount)
    if unit == "weeks":
        return d + timedelta(weeks=sign * amount)
    if unit == "months":
        return _add_months(d, sign * amount)
    if unit == "years":
        return _add_months(d, sign * 12 * amount)
    raise CalendarError(f"unit {unit!r} is not a calendar unit")  # pragma: no cover


# --------------------------------------------------------------------------- holidays package


@lru_cache(maxsize=1)
def _holidays_version() -> str:
    from importlib.metadata import version

    return version("holidays")


@lru_cache(maxsize=256)
def _package_year(country: str, year: int) -> tuple[Mapping[date, str], Mapping[date, str]]:
    """Days off and make-up working days dated in *year*, from the ``holidays`` package."""
    import holidays

    try:
        # Neighbouring years too: a swap decided for one year may move a day in the next.
        h = holidays.country_holidays(country, years=range(year - 1, year + 2), language="vi")
    except (NotImplementedError, KeyError, ValueError) as exc:
        raise CalendarError(
            f"the holidays package cannot give country {country!r}: {exc}"
        ) from None
    off = {d: str(n) for d, n in sorted(h.items()) if d.year == year}
    work: dict[date, str] = {}
    for d in sorted(getattr(h, "weekend_workdays", ()) or ()):
        if d.year != year:
            continue
        stamp = d.strftime("%d/%m/%Y")
        swapped = [o for o, n in h.items() if stamp in str(n)]
        work[d] = f"Làm bù cho ngày {swapped[0].strftime('%d/%m/%Y')}" if swapped else "Ngày làm bù"
    return MappingProxyType(off), MappingProxyType(work)


# --------------------------------------------------------------------------- loading

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TOP_KEYS = (
    "calendar",
    "title",
    "timezone",
    "weekend",
    "workday_start",
    "holidays_country",
    "years",
)
_YEAR_KEYS = ("source", "note", "days_off", "working_days")
_ENTRY_KEYS = ("date", "from", "to", "name", "source", "note")
_MAX_SPAN_DAYS = 31


def shipped_calendars_dir() -> Path:
    """Folder holding the calendars that ship with sangkien (``vn.yaml``)."""
    return Path(str(resources.files("sangkien.config"))) / "data" / "calendars"


class _Doc:
    """One parsed calendar file, with positions for error messages."""

    def __init__(self, text: str | bytes, file: str) -> None:
        from sangkien._yaml import load_yaml

        try:
            self.located = load_yaml(text, file)
        except DefinitionError as exc:
            raise CalendarError(str(exc).replace("workflow mapping", "calendar mapping")) from None
        self.file = file

    def at(self, path: tuple[str | int, ...], *, key: bool = False) -> str:
        line, col = self.located.position(path, key=key)
        return f"{self.file}:{line}:{col}"

    def fail(
        self, path: tuple[str | int, ...], message: str, *, key: bool = False
    ) -> CalendarError:
        return CalendarError(f"{self.at(path, key=key)}: {message}")


def _check_keys(doc: _Doc, path: tuple[str | int, ...], value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if not isinstance(value, dict):
        what = "the file" if not path else "/".join(str(p) for p in path)
        raise doc.fail(path, f"{what} must be a mapping with keys {', '.join(allowed)}")
    for k in value:
        if k not in allowed:
            raise doc.fail(
                (*path, k), f"unknown key {k!r}; expected one of {', '.join(allowed)}", key=True
            )


def _text(doc: _Doc, path: tuple[str | int, ...], value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise doc.fail(path, f"{what} must be non-empty text, got {value!r}")
    return value.strip()


def _date(doc: _Doc, path: tuple[str | int, ...], value: Any) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise doc.fail(path, f"expected a date YYYY-MM-DD, got {value!r}")


def _entries(doc: _Doc, path: tuple[str | int, ...], value: Any, year: int) -> list[DayEntry]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise doc.fail(path, "expected a list of {date, name, source} entries")
    out: list[DayEntry] = []
    for i, item in enumerate(value):
        p = (*path, i)
        _check_keys(doc, p, item, _ENTRY_KEYS)
        name = _text(doc, (*p, "name"), item.get("name"), "`name`")
        src = item.get("source")
        source = "" if src is None else _text(doc, (*p, "source"), src, "`source`")
        if "date" in item:
            if "from" in item or "to" in item:
                raise doc.fail(p, "give either `date:` or `from:` and `to:`, not both")
            days = [_date(doc, (*p, "date"), item["date"])]
        elif "from" in item and "to" in item:
            first = _date(doc, (*p, "from"), item["from"])
            last = _date(doc, (*p, "to"), item["to"])
            if last < first:
                raise doc.fail((*p, "to"), f"`to` ({last}) is before `from` ({first})")
            if (last - first).days >= _MAX_SPAN_DAYS:
                raise doc.fail((*p, "to"), f"a span may cover at most {_MAX_SPAN_DAYS} days")
            days = list(_days(first, last))
        else:
            raise doc.fail(p, "each entry needs `date:` (one day) or `from:` and `to:` (a span)")
        for d in days:
            if abs(d.year - year) > 1:
                raise doc.fail(p, f"{d} is too far from the year {year} it is listed under")
            out.append(DayEntry(d, name, source, doc.at(p)))
    return out


def _parse_year(doc: _Doc, key: str, value: Any) -> OfficialYear:
    path: tuple[str | int, ...] = ("years", key)
    try:
        year = int(key)
    except ValueError:
        year = 0
    if not 1900 <= year <= 2999 or str(year) != key.strip():
        raise doc.fail(path, f"year keys must be years such as 2027, got {key!r}", key=True)
    _check_keys(doc, path, value, _YEAR_KEYS)
    off = _entries(doc, (*path, "days_off"), value.get("days_off"), year)
    work = _entries(doc, (*path, "working_days"), value.get("working_days"), year)
    seen: dict[date, DayEntry] = {}
    for e in off:
        if e.day in seen:
            raise CalendarError(
                f"{e.where}: {e.day} is already a day off ({seen[e.day].name!r} at "
                f"{seen[e.day].where})"
            )
        seen[e.day] = e
    for e in work:
        if e.day in seen:
            raise CalendarError(
                f"{e.where}: {e.day} is listed as a working day and as a day off "
                f"({seen[e.day].name!r} at {seen[e.day].where})"
            )
    src = value.get("source")
    source = "" if src is None else _text(doc, (*path, "source"), src, "`source`")
    return OfficialYear(year, tuple(off), tuple(work), source, doc.file)


def _parse_file(doc: _Doc, name: str) -> tuple[dict[str, Any], dict[int, OfficialYear]]:
    data = doc.located.data
    _check_keys(doc, (), data, _TOP_KEYS)
    settings: dict[str, Any] = {}
    if "calendar" in data and data["calendar"] != name:
        raise doc.fail(
            ("calendar",), f"this file is for calendar {data['calendar']!r}, not {name!r}"
        )
    if "title" in data:
        settings["title"] = _text(doc, ("title",), data["title"], "`title`")
    if "timezone" in data:
        tz = _text(doc, ("timezone",), data["timezone"], "`timezone`")
        try:
            settings["timezone"] = _coerce_tz(tz)
        except CalendarError as exc:
            raise doc.fail(("timezone",), str(exc)) from None
    if "weekend" in data:
        raw = data["weekend"]
        if not isinstance(raw, list):
            raise doc.fail(("weekend",), "expected a list of day names such as [sat, sun]")
        days: set[int] = set()
        for i, item in enumerate(raw):
            d = _WEEKDAYS.get(str(item).strip().lower()) if isinstance(item, str) else None
            if d is None:
                raise doc.fail(("weekend", i), f"unknown day {item!r}; use mon, tue … sun")
            days.add(d)
        if len(days) >= 7:
            raise doc.fail(("weekend",), "the weekend cannot cover the whole week")
        settings["weekend"] = frozenset(days)
    if "workday_start" in data:
        raw = data["workday_start"]
        try:
            if not isinstance(raw, str) or not re.fullmatch(r"\d{1,2}:\d{2}", raw.strip()):
                raise ValueError
            settings["workday_start"] = time.fromisoformat(raw.strip().zfill(5))
        except ValueError:
            raise doc.fail(
                ("workday_start",), f'expected a time "HH:MM" such as "08:00", got {raw!r}'
            ) from None
    if "holidays_country" in data:
        raw = data["holidays_country"]
        if raw is not None:
            raw = _text(doc, ("holidays_country",), raw, "`holidays_country`").upper()
            import holidays

            if raw not in holidays.list_supported_countries():
                raise doc.fail(
                    ("holidays_country",),
                    f"the holidays package has no country {raw!r}; use e.g. VN, or null",
                )
        settings["holidays_country"] = raw
    years: dict[int, OfficialYear] = {}
    raw_years = data.get("years")
    if raw_years is not None:
        if not isinstance(raw_years, dict):
            raise doc.fail(("years",), "expected a mapping of year to its days off")
        for key, value in raw_years.items():
            oy = _parse_year(doc, key, value)
            years[oy.year] = oy
    return settings, years


def _read(path: Path | Any, label: str) -> bytes:
    try:
        return cast(bytes, path.read_bytes())
    except OSError as exc:
        raise CalendarError(f"cannot read calendar file {label}: {exc.strerror or exc}") from None


def _extra_files(where: Path, name: str) -> list[Path]:
    if where.is_file():
        return [where]
    if not where.is_dir():
        raise CalendarError(f"calendar folder {where} does not exist")
    patterns = (f"{name}.yaml", f"{name}.yml", f"{name}-*.yaml", f"{name}-*.yml")
    found = {p for pattern in patterns for p in where.glob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: (p.stem != name, p.name))


def load_calendar(name: str = "vn", extra_dirs: Iterable[str | Path] = ()) -> Calendar:
    """Load calendar *name*: the shipped ``<name>.yaml``, then files from *extra_dirs*.

    In each extra folder ``<name>.yaml`` and then ``<name>-*.yaml`` are read in name order (a
    path to a single file is read as is). Later files override the settings they give, and a
    year they list replaces that whole year. Raises :class:`CalendarError` naming the file,
    line and problem.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise CalendarError(
            f"invalid calendar name {name!r}; use lowercase letters, digits, '-' or '_'"
        )
    sources: list[tuple[str, bytes]] = []
    shipped = resources.files("sangkien.config").joinpath("data", "calendars", f"{name}.yaml")
    if shipped.is_file():
        sources.append((f"{name}.yaml (shipped)", _read(shipped, f"{name}.yaml")))
    for where in extra_dirs:
        for path in _extra_files(Path(where), name):
            sources.append((str(path), _read(path, str(path))))
    if not sources:
        folder = resources.files("sangkien.config").joinpath("data", "calendars")
        available = (
            sorted(
                p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
            )
            if folder.is_dir()
            else []
        )
        raise CalendarError(
            f"no calendar {name!r}; shipped calendars: {', '.join(available) or 'none'} "
            "(add <name>.yaml to a calendar folder for others)"
        )
    settings: dict[str, Any] = {}
    years: dict[int, OfficialYear] = {}
    for label, raw in sources:
        file_settings, file_years = _parse_file(_Doc(raw, label), name)
        settings.update(file_settings)
        years.update(file_years)
    return Calendar(
        name=name,
        official=tuple(years.values()),
        files=tuple(label for label, _ in sources),
        **settings,
    )
