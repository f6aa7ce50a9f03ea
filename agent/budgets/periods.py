"""Calendar budget periods (day, ISO week, calendar month) in a stated IANA time zone.

A period runs from the start of its first local day to the start of the first local day of the
next period; the end is exclusive and is the moment the budget resets. Every bound is an aware
UTC datetime, so it can be compared with ledger timestamps and stored as is.

"The start of local day D" is the first instant whose local date is D or later:

- usually local midnight, so a day lasts 23 or 25 hours across a daylight-saving change
  (23.5 or 24.5 on Lord Howe Island);
- where midnight does not exist because clocks jump forward at 00:00 (America/Santiago,
  America/Havana, Asia/Beirut, Asia/Tehran until 2022, ...), the first instant after the jump,
  01:00 local (also for a jump that starts the evening before, which tzdata has not had since
  1970 but a future rule may);
- where midnight happens twice because clocks fall back from 01:00 to 00:00 (America/Havana),
  its first occurrence;
- where a whole date was skipped (Pacific/Kiritimati went from -10 to +14 over 1994-12-31),
  that date has an empty period and no instant ever falls into it.

The periods tile time with no gap and no overlap. A period contains an instant when its start is
at or before the instant and its end after it; which period that is, is *usually* the one named by
the instant's local date, but not always: St. John's, Goose Bay and Moncton used to fall back at
00:01 to 23:01 the day before, so for 59 minutes the wall clock showed the previous date again.
Those minutes belong to the new day, whose midnight had already passed: a budget never resets
twice, and never goes back to a period that has ended.

`period_key` names a period with a stable text id ("2026-11-28", "2026-W48", "2026-11"), used as
a database key and in alert dedupe keys. It does not name the time zone: callers that may change
zones keep the zone next to the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = get_args(Period)

_MIDNIGHT = time(0)
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class PeriodWindow:
    """One budget period: its key, its start and its exclusive end (the reset), both aware UTC."""

    period: Period
    key: str
    start: datetime
    end: datetime

    @property
    def resets_at(self) -> datetime:
        return self.end


def load_zone(tz: str) -> ZoneInfo:
    """The IANA zone called `tz` (exact spelling, e.g. "Europe/Berlin"), or ValueError."""
    if not isinstance(tz, str) or not tz:
        raise ValueError(f"time zone must be an IANA name such as 'Europe/Berlin', got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:  # unknown, malformed, a folder, not TZif
        raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as 'Europe/Berlin'") from e


def period_window(period: Period, at: datetime, tz: str) -> PeriodWindow:
    """The `period` containing the aware instant `at`, in the time zone called `tz`."""
    zone = load_zone(tz)
    if period not in PERIODS:
        raise ValueError(f"unknown budget period {period!r}: expected one of {', '.join(PERIODS)}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"budget periods need an aware datetime (with a time zone), got naive {at.isoformat()}")
    first = _first_date(period, at.astimezone(zone).date())
    start, end = _day_start(first, zone), _day_start(_next_first_date(period, first), zone)
    while end <= at:  # the wall clock fell back to a date whose period had already ended
        first = _next_first_date(period, first)
        start, end = end, _day_start(_next_first_date(period, first), zone)
    return PeriodWindow(period, _key(period, first), start, end)


def period_bounds(period: Period, at: datetime, tz: str) -> tuple[datetime, datetime]:
    """Start and exclusive end (the reset time) of the period containing `at`, as aware UTC."""
    window = period_window(period, at, tz)
    return window.start, window.end


def period_key(period: Period, at: datetime, tz: str) -> str:
    """The id of the period containing `at`: "2026-11-28", "2026-W48" (ISO week) or "2026-11"."""
    return period_window(period, at, tz).key


def resets_at(period: Period, at: datetime, tz: str) -> datetime:
    """When the period containing `at` ends and its budget starts again from zero (aware UTC)."""
    return period_window(period, at, tz).end


def _first_date(period: Period, day: date) -> date:
    """The local date that opens the period containing local date `day`."""
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_first_date(period: Period, first: date) -> date:
    if period == "day":
        return first + timedelta(days=1)
    if period == "week":
        return first + timedelta(days=7)
    return date(first.year + 1, 1, 1) if first.month == 12 else date(first.year, first.month + 1, 1)


def _key(period: Period, first: date) -> str:
    if period == "day":
        return first.isoformat()
    if period == "week":
        iso = first.isocalendar()
        return f"{iso.year:04d}-W{iso.week:02d}"
    return f"{first.year:04d}-{first.month:02d}"


def _day_start(day: date, zone: ZoneInfo) -> datetime:
    """The first instant (aware UTC) whose local date in `zone` is `day` or later."""
    wall = datetime.combine(day, _MIDNIGHT)
    # fold=0 and fold=1 differ only around a transition: for a repeated midnight they are its two
    # occurrences, for a skipped one they bracket the jump forward.
    a = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    b = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    lo, hi = min(a, b), max(a, b)
    if _local_date(lo, zone) >= day:
        return lo  # midnight exists: its first occurrence
    # Midnight was skipped: the day starts at the jump, somewhere in (lo, hi]. Offsets and
    # transitions are whole seconds; search the seconds.
    low, high = 0, int((hi - lo) / _SECOND)
    while high - low > 1:
        mid = (low + high) // 2
        if _local_date(lo + mid * _SECOND, zone) >= day:
            high = mid
        else:
            low = mid
    return lo + high * _SECOND


def _local_date(instant: datetime, zone: ZoneInfo) -> date:
    return instant.astimezone(zone).date()
