"""Budget periods: calendar days, ISO weeks and months in any IANA zone, across DST and odd zones."""

from __future__ import annotations

import functools
import io
import struct
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.budgets.periods import (
    PERIODS,
    Period,
    _day_start,  # the one case tzdata lacks, with a zone made here
    load_zone,
    period_bounds,
    period_key,
    period_window,
    resets_at,
)

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # 30-minute DST
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/Santiago",  # clocks jump 00:00 -> 01:00: no midnight
    "America/Havana",  # no midnight in March, two midnights in November
    "Asia/Beirut",  # no midnight on DST day
    "Asia/Kolkata",
    "Pacific/Kiritimati",  # +14, skipped 1994-12-31 entirely
    "America/St_Johns",  # -03:30; until 2010 fell back at 00:01 to 23:01 the day before
]
US = timedelta(microseconds=1)
LOW = datetime(1990, 1, 1, tzinfo=UTC)
HIGH = datetime(2100, 12, 31, tzinfo=UTC)

PROPERTY = settings(max_examples=300, deadline=None)


@functools.cache
def clock_changes() -> tuple[tuple[str, datetime], ...]:
    """Every UTC-offset change of ZONES between 1990 and 2040 (the rules repeat after that)."""
    changes = []
    step = timedelta(days=1)  # no zone changes its clock twice a day
    for tz in ZONES:
        zone = ZoneInfo(tz)
        at = LOW
        while at < datetime(2040, 1, 1, tzinfo=UTC):
            if (at + step).astimezone(zone).utcoffset() != at.astimezone(zone).utcoffset():
                lo, hi = at, at + step
                while hi - lo > timedelta(seconds=1):
                    mid = lo + (hi - lo) / 2
                    lo, hi = (
                        (mid, hi) if mid.astimezone(zone).utcoffset() == lo.astimezone(zone).utcoffset() else (lo, mid)
                    )
                changes.append((tz, hi))
            at += step
    return tuple(changes)


def near_change(pick: int, shift_s: int) -> tuple[str, datetime]:
    tz, change = clock_changes()[pick % len(clock_changes())]
    return tz, change + timedelta(seconds=shift_s)


any_instant = st.tuples(st.sampled_from(ZONES), st.integers(0, int((HIGH - LOW) / US)).map(lambda n: LOW + n * US))
# within a day and a bit of a clock change, where the odd periods are; half of them within 2 hours
near_a_change = st.builds(
    near_change, st.integers(0, 10**6), st.integers(-27 * 3600, 27 * 3600) | st.integers(-7200, 7200)
)
cases = st.one_of(any_instant, near_a_change)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(tz: str, year: int, month: int, day: int, hour: int, minute: int, fold: int = 0) -> datetime:
    """A wall-clock time in `tz` as an aware UTC instant (ambiguous times never compare equal)."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz), fold=fold).astimezone(UTC)


def label_date(period: Period, key: str) -> date:
    """The local date that opens the period named `key`."""
    if period == "week":
        year, week = key.split("-W")
        return date.fromisocalendar(int(year), int(week), 1)
    if period == "month":
        return date.fromisoformat(key + "-01")
    return date.fromisoformat(key)


def midnight_exists(day: date, zone: ZoneInfo) -> bool:
    wall = datetime.combine(day, time(0))
    return any(
        wall.replace(tzinfo=zone, fold=fold).astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
        for fold in (0, 1)
    )


# -- properties ---------------------------------------------------------------------------------


@PROPERTY
@given(case=cases, period=st.sampled_from(PERIODS))
def test_the_period_contains_the_instant_and_its_neighbours_tile_time(
    case: tuple[str, datetime], period: Period
) -> None:
    tz, at = case
    start, end = period_bounds(period, at, tz)
    assert start.tzinfo is UTC and end.tzinfo is UTC
    assert start <= at < end
    # no gap, no overlap: the next period starts at this end, the previous one ends at this start
    assert period_bounds(period, end, tz)[0] == end
    assert period_bounds(period, start - US, tz)[1] == start
    assert period_bounds(period, end - US, tz) == (start, end)


@PROPERTY
@given(case=cases, period=st.sampled_from(PERIODS))
def test_the_key_is_constant_over_the_period_and_changes_after_it(case: tuple[str, datetime], period: Period) -> None:
    tz, at = case
    start, end = period_bounds(period, at, tz)
    key = period_key(period, at, tz)
    middle = start + (end - start) / 2
    assert period_key(period, start, tz) == period_key(period, middle, tz) == period_key(period, end - US, tz) == key
    assert period_key(period, end, tz) != key
    assert period_key(period, start - US, tz) != key
    assert label_date(period, period_key(period, end, tz)) > label_date(period, key)  # keys only move forward
    assert period_window(period, at, tz).key == key


@PROPERTY
@given(case=cases, period=st.sampled_from(PERIODS))
def test_a_period_starts_at_the_first_instant_of_its_first_day(case: tuple[str, datetime], period: Period) -> None:
    tz, at = case
    zone = ZoneInfo(tz)
    start, _ = period_bounds(period, at, tz)
    first = label_date(period, period_key(period, at, tz))
    if period == "week":
        assert first.weekday() == 0
    if period == "month":
        assert first.day == 1
    opened = start.astimezone(zone)
    if midnight_exists(first, zone):
        assert (opened.date(), opened.time()) == (first, time(0))
    else:  # the first valid instant of that day: just after the clocks jumped over midnight
        assert opened.date() >= first and opened.time() < time(2)
    assert (start - US).astimezone(zone).date() < first


@PROPERTY
@given(case=cases, period=st.sampled_from(PERIODS))
def test_period_length_is_the_calendar_length_less_the_offset_change(
    case: tuple[str, datetime], period: Period
) -> None:
    tz, at = case
    zone = ZoneInfo(tz)
    start, end = period_bounds(period, at, tz)
    opened, closed = start.astimezone(zone), end.astimezone(zone)
    wall = closed.replace(tzinfo=None) - opened.replace(tzinfo=None)
    assert end - start == wall - (closed.utcoffset() - opened.utcoffset())  # type: ignore[operator]
    hours = (end - start) / timedelta(hours=1)
    if period == "day":
        assert 22 <= hours <= 26
    elif period == "week":
        assert 6 * 24 <= hours <= 7 * 24 + 2  # six days only where a date was skipped (Kiritimati 1994)
    else:
        assert 27.9 * 24 <= hours <= 31.1 * 24


@PROPERTY
@given(case=cases)
def test_the_day_key_is_the_local_date_except_when_the_clock_fell_back_over_midnight(
    case: tuple[str, datetime],
) -> None:
    tz, at = case
    zone = ZoneInfo(tz)
    start, _ = period_bounds("day", at, tz)
    key = period_key("day", at, tz)
    local_date = at.astimezone(zone).date()
    if key != local_date.isoformat():
        # only in the old St. John's fall-back (00:01 -> 23:01): the wall clock showed yesterday
        # again although today's midnight had passed
        assert tz == "America/St_Johns"
        assert local_date < start.astimezone(zone).date()
    week, month = period_key("week", at, tz), period_key("month", at, tz)
    assert label_date("week", week) <= date.fromisoformat(key) < label_date("week", week) + timedelta(days=7)
    assert month == key[:7]


# -- explicit cases -----------------------------------------------------------------------------


def test_leap_day_2028() -> None:
    at = utc(2028, 2, 29, 12)
    assert period_bounds("day", at, "UTC") == (utc(2028, 2, 29), utc(2028, 3, 1))
    assert period_key("day", at, "UTC") == "2028-02-29"
    assert period_bounds("month", at, "UTC") == (utc(2028, 2, 1), utc(2028, 3, 1))
    assert period_key("month", at, "UTC") == "2028-02"
    assert period_key("week", at, "UTC") == "2028-W09"
    assert period_bounds("week", at, "UTC") == (utc(2028, 2, 28), utc(2028, 3, 6))
    # Berlin: 29 days of 24 hours, no DST change in February
    start, end = period_bounds("month", at, "Europe/Berlin")
    assert (start, end) == (utc(2028, 1, 31, 23), utc(2028, 2, 29, 23))
    assert end - start == timedelta(days=29)
    assert period_bounds("month", utc(2027, 2, 10), "UTC") == (utc(2027, 2, 1), utc(2027, 3, 1))  # not leap


@pytest.mark.parametrize(
    ("tz", "day", "start", "end", "hours"),
    [
        ("Europe/Berlin", date(2026, 3, 29), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), 23),  # spring forward
        ("Europe/Berlin", date(2026, 10, 25), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), 25),  # fall back
        ("America/New_York", date(2026, 3, 8), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), 23),
        ("America/New_York", date(2026, 11, 1), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), 25),
        ("Australia/Lord_Howe", date(2026, 10, 4), utc(2026, 10, 3, 13, 30), utc(2026, 10, 4, 13), 23.5),
        ("Australia/Lord_Howe", date(2026, 4, 5), utc(2026, 4, 4, 13), utc(2026, 4, 5, 13, 30), 24.5),
        # midnight does not exist: the day starts at 01:00, when the clocks land after the jump
        ("America/Santiago", date(2026, 9, 6), utc(2026, 9, 6, 4), utc(2026, 9, 7, 3), 23),
        ("America/Havana", date(2026, 3, 8), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), 23),
        ("Asia/Beirut", date(2020, 3, 29), utc(2020, 3, 28, 22), utc(2020, 3, 29, 21), 23),
        # midnight happens twice (01:00 -> 00:00): the day starts at the first one
        ("America/Havana", date(2026, 11, 1), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), 25),
        # the day before Kiritimati skipped 1994-12-31: 24 hours, then 1995-01-01
        ("Pacific/Kiritimati", date(1994, 12, 30), utc(1994, 12, 30, 10), utc(1994, 12, 31, 10), 24),
    ],
)
def test_days_across_clock_changes(tz: str, day: date, start: datetime, end: datetime, hours: float) -> None:
    for at in (start, start + (end - start) / 2, end - US):
        assert period_bounds("day", at, tz) == (start, end)
        assert period_key("day", at, tz) == day.isoformat()
    assert end - start == timedelta(hours=hours)
    assert period_key("day", end, tz) != day.isoformat()


def test_a_missing_midnight_starts_the_day_at_the_first_valid_instant() -> None:
    start, _ = period_bounds("day", utc(2026, 9, 6, 12), "America/Santiago")
    assert start.astimezone(ZoneInfo("America/Santiago")).isoformat() == "2026-09-06T01:00:00-03:00"
    assert period_key("day", start - US, "America/Santiago") == "2026-09-05"
    # the month and the week that open on such a day start there too
    assert period_bounds("week", utc(2026, 9, 8), "America/Santiago")[0] == utc(2026, 9, 7, 3)
    assert period_bounds("month", utc(2026, 9, 20), "America/Santiago")[0] == utc(2026, 9, 1, 4)


def posix_zone(rule: str) -> ZoneInfo:
    """A zone made only of a POSIX TZ rule (a TZif v2 file with no transitions)."""

    def block() -> bytes:
        header = b"TZif2" + bytes(15) + struct.pack(">6l", 0, 0, 0, 0, 1, 4)
        return header + struct.pack(">lbB", -3 * 3600, 0, 0) + b"AAA\0"

    return ZoneInfo.from_file(io.BytesIO(block() + block() + b"\n" + rule.encode() + b"\n"), key="Test/" + rule)


def test_a_jump_over_midnight_that_starts_the_evening_before() -> None:
    # No zone in tzdata does it since 1970, but nothing forbids it: at 23:00 (-03:00) on the last
    # Sunday of March clocks jump two hours, to 01:00 (-01:00) on Monday. Monday starts at the jump,
    # not at "midnight -03:00" (an hour after it).
    zone = posix_zone("AAA3BBB1,M3.5.0/23,M10.5.0/3")
    assert _day_start(date(2026, 3, 29), zone) == utc(2026, 3, 29, 3)
    assert _day_start(date(2026, 3, 30), zone) == utc(2026, 3, 30, 2)
    assert (utc(2026, 3, 30, 2) - US).astimezone(zone).isoformat() == "2026-03-29T22:59:59.999999-03:00"
    assert utc(2026, 3, 30, 2).astimezone(zone).isoformat() == "2026-03-30T01:00:00-01:00"


def test_a_skipped_date_has_no_period() -> None:
    tz = "Pacific/Kiritimati"
    jump = utc(1994, 12, 31, 10)  # 1994-12-30 23:59:59 -10:00 is followed by 1995-01-01 00:00 +14:00
    assert period_key("day", jump - US, tz) == "1994-12-30"
    assert period_key("day", jump, tz) == "1995-01-01"
    assert period_bounds("month", jump - US, tz) == (utc(1994, 12, 1, 10), jump)  # December ends a day early
    assert period_bounds("week", jump, tz) == (utc(1994, 12, 26, 10), utc(1995, 1, 1, 10))  # a 6-day week
    assert period_key("week", jump, tz) == "1994-W52"


def test_a_fall_back_over_midnight_never_reopens_yesterday() -> None:
    # St. John's 1990-10-28: at 00:01 NDT clocks went back to 23:01 NST on the 27th.
    tz = "America/St_Johns"
    midnight = local(tz, 1990, 10, 28, 0, 0)
    assert midnight == utc(1990, 10, 28, 2, 30)
    repeated = local(tz, 1990, 10, 27, 23, 30, fold=1)  # the second 23:30 of the 27th
    assert repeated == utc(1990, 10, 28, 3, 0)
    assert period_bounds("day", repeated, tz) == (midnight, utc(1990, 10, 29, 3, 30))
    assert period_key("day", repeated, tz) == "1990-10-28"
    assert period_bounds("day", local(tz, 1990, 10, 27, 23, 30, fold=0), tz)[1] == midnight
    # a month that ends in that hour: October 1990 was Sunday the 28th -> November, unaffected
    assert period_key("month", repeated, tz) == "1990-10"


@pytest.mark.parametrize(
    ("tz", "year_start"),
    [
        ("UTC", utc(2027, 1, 1)),
        ("Europe/Berlin", utc(2026, 12, 31, 23)),
        ("America/New_York", utc(2027, 1, 1, 5)),
        ("Asia/Kolkata", utc(2026, 12, 31, 18, 30)),
        ("Pacific/Chatham", utc(2026, 12, 31, 10, 15)),  # +13:45 in summer
        ("Pacific/Kiritimati", utc(2026, 12, 31, 10)),
        ("America/St_Johns", utc(2027, 1, 1, 3, 30)),
    ],
)
def test_new_year_across_zones(tz: str, year_start: datetime) -> None:
    assert period_key("month", year_start - US, tz) == "2026-12"
    assert period_key("month", year_start, tz) == "2027-01"
    assert period_key("day", year_start, tz) == "2027-01-01"
    assert period_bounds("month", year_start - US, tz)[1] == year_start
    assert resets_at("day", year_start - US, tz) == year_start
    # 2027-01-01 is a Friday: it still belongs to ISO week 53 of 2026, which ends on Monday the 4th
    assert period_key("week", year_start, tz) == "2026-W53"


def test_iso_weeks_start_on_monday_and_carry_the_iso_year() -> None:
    assert period_bounds("week", utc(2026, 11, 28, 15), "UTC") == (utc(2026, 11, 23), utc(2026, 11, 30))
    assert period_key("week", utc(2026, 11, 28), "UTC") == "2026-W48"
    assert period_key("week", utc(2024, 12, 30), "UTC") == "2025-W01"  # Monday 30 Dec 2024
    assert period_key("week", utc(2021, 1, 3), "UTC") == "2020-W53"  # Sunday 3 Jan 2021
    assert period_key("week", utc(2021, 1, 4), "UTC") == "2021-W01"
    # the week of the Berlin spring-forward lasts 167 hours
    start, end = period_bounds("week", utc(2026, 3, 26), "Europe/Berlin")
    assert (start, end) == (utc(2026, 3, 22, 23), utc(2026, 3, 29, 22))


def test_months_of_every_length_and_december_into_january() -> None:
    lengths = {
        (2026, 1): 31,
        (2026, 2): 28,
        (2026, 4): 30,
        (2028, 2): 29,
        (2100, 2): 28,  # not a leap year
        (2000, 2): 29,  # a leap year
        (2026, 12): 31,
    }
    for (year, month), days in lengths.items():
        start, end = period_bounds("month", utc(year, month, 15), "UTC")
        assert start == utc(year, month, 1)
        assert end - start == timedelta(days=days)
        assert period_key("month", start, "UTC") == f"{year}-{month:02d}"
    assert period_bounds("month", utc(2026, 12, 31, 22), "Europe/Berlin")[1] == utc(2026, 12, 31, 23)
    assert period_key("month", utc(2026, 12, 31, 23), "Europe/Berlin") == "2027-01"


def test_the_window_bundles_key_and_bounds() -> None:
    window = period_window("month", utc(2026, 11, 28, 12), "Europe/Berlin")
    assert (window.period, window.key) == ("month", "2026-11")
    assert (window.start, window.end) == (utc(2026, 10, 31, 23), utc(2026, 11, 30, 23))
    assert window.resets_at == window.end


@pytest.mark.parametrize(
    "tz", ["", "Mars/Olympus_Mons", "europe/berlin", "America", "/etc/localtime", "../x", "zone.tab"]
)
def test_unknown_zones_are_refused(tz: str) -> None:
    with pytest.raises(ValueError, match="time zone"):
        period_bounds("day", utc(2026, 1, 1), tz)
    with pytest.raises(ValueError, match="time zone"):
        load_zone(tz)


def test_naive_datetimes_and_unknown_periods_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        period_bounds("day", datetime(2026, 1, 1, 12), "UTC")
    with pytest.raises(ValueError, match="naive"):
        period_key("month", datetime(2026, 1, 1, 12), "Europe/Berlin")
    with pytest.raises(ValueError, match="period"):
        period_bounds("year", utc(2026, 1, 1), "UTC")  # type: ignore[arg-type]


def test_instants_in_any_offset_give_the_same_answer() -> None:
    at = utc(2026, 3, 29, 0, 30)
    in_tokyo = at.astimezone(ZoneInfo("Asia/Tokyo"))
    for period in PERIODS:
        assert period_window(period, at, "Europe/Berlin") == period_window(period, in_tokyo, "Europe/Berlin")
