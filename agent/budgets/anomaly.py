"""Runaway detection: a subject calling far above its usual rate, caught within minutes.

The test is a CUSUM (Page's cumulative sum) on the subject's request arrivals, for "the rate is
``MULTIPLE`` times the baseline" against "the rate is the baseline". Each request adds
``log(MULTIPLE)``; time drains the sum at ``(MULTIPLE - 1) * baseline`` per second; the sum stays
between 0 and ``THRESHOLD``; an alarm fires when it reaches ``THRESHOLD``. For Poisson arrivals
this is the quickest detector for a given false-alarm rate. With ``MULTIPLE`` 30 the sum drifts
down below 29 / ln 30 = 8.5x the baseline and up above it: a loop at 10x gains 10 ln 30 - 29 = 5
nats per baseline request's worth of time, so at a request a minute it is caught in 4 minutes.

The baseline (``Baseline.learn``) is per hour of the week, from the 4 weeks before this one:
each weekday's usual day (the median over the weeks; days off such as holidays, under
``QUIET_DAY`` of it, left out; days before the subject's first request are no history), spread
over the hours by the usual shape of a working day or a weekend day (pooled over all of them: a
far steadier estimate than one median per hour), never below ``MIN_PER_HOUR``. A subject
without a week of history takes its department's per-member baseline. A busy day is not a
runaway: the baseline is raised by how far the day has run above its usual, up to 3x
(``RateWatch``).

Tuned on generated histories (seeds 11-13, `bench/spend_history.py`; the benchmark's seeds are
others): see docs/BENCHMARKS.md for recall, delay and false alarms, and for why a loop of a few
requests an hour cannot be told from chance within 5 minutes by any detector. O(1) work and a
few floats per request and subject.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from functools import cached_property

import numpy as np

MULTIPLE = 30.0  # the alternative the test weighs: break-even at 29 / ln 30 = 8.5x the baseline
THRESHOLD = 20.0  # nats of evidence for an alarm (tuned on generated seeds 11-13, see the module doc)
BUSY_DAY_CAP = 3.0  # a day running busy raises the baseline up to this much
BUSY_DAY_MIN_EXPECTED = 10.0  # requests usually made by then, before a day's pace counts
MIN_PER_HOUR = 0.25  # a baseline is never below a request every four hours
QUIET_DAY = 0.3  # a day under this share of its weekday's median is a day off
WEEKS = 4
HOURS_OF_WEEK = 7 * 24


def hour_of_week(moment: datetime) -> int:
    return moment.weekday() * 24 + moment.hour


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of ``moment``'s week: baselines are learned from the weeks before it."""
    return datetime.combine(moment.date() - timedelta(days=moment.weekday()), time(0), UTC)


def learn_baselines(counts: Iterable[tuple[str, str, datetime, int]], week: datetime) -> dict[str, Baseline]:
    """Baselines from (user, department, hour start, requests) rows, for the week starting at
    ``week``: ``user:NAME`` for each user with a week of history before it, and ``member:NAME``,
    a department's per member (for its users without one)."""
    start = week - timedelta(weeks=WEEKS)
    counts = [row for row in counts if start <= row[2] < week]
    members: dict[str, set[str]] = defaultdict(set)
    for user, department, _, _ in counts:
        members[department].add(user)
    users = learn_totals(((f"user:{user}", hour, n) for user, _, hour, n in counts), week)
    departments = learn_totals(((department, hour, n) for _, department, hour, n in counts), week)
    per_member = {f"member:{d}": b.scaled(1 / len(members[d])) for d, b in departments.items()}
    return per_member | users


def learn_totals(counts: Iterable[tuple[str, datetime, int]], week: datetime) -> dict[str, Baseline]:
    """Baselines of whole subjects (``department:X``, ``feature:X``, ``model:X``) from (subject,
    hour start, requests) rows, for the week starting at ``week``."""
    start = week - timedelta(weeks=WEEKS)
    per_subject: dict[str, dict[datetime, int]] = defaultdict(lambda: defaultdict(int))
    for subject, hour, count in counts:
        if start <= hour < week:
            per_subject[subject][hour] += count
    learned = {subject: Baseline.learn(hours.items(), week) for subject, hours in per_subject.items()}
    return {subject: b for subject, b in learned.items() if b is not None}


@dataclass(frozen=True)
class Baseline:
    """Expected requests per hour, for each hour of the week (Monday 00:00 first, in UTC)."""

    per_hour: np.ndarray  # (168,)

    def per_second(self, moment: datetime) -> float:
        return float(self.per_hour[hour_of_week(moment)]) / 3600.0

    @classmethod
    def learn(cls, hourly_counts: Iterable[tuple[datetime, int]], now: datetime, weeks: int = WEEKS) -> Baseline | None:
        """From (hour start, requests) of the weeks before ``now``; None with under a week of history."""
        start = now - timedelta(weeks=weeks)
        grid = np.zeros((weeks * 7, 24))  # a row per day of the window
        first_seen = None
        for hour, count in hourly_counts:
            if not start <= hour < now:
                continue
            first_seen = hour if first_seen is None or hour < first_seen else first_seen
            grid[(hour - start).days, hour.hour] += count
        if first_seen is None or now - first_seen < timedelta(weeks=1):
            return None
        # Days before the subject's first request are no history, not quiet days.
        grid[: (first_seen - start).days] = np.nan
        by_week = grid.reshape(weeks, 7, 24)
        days = by_week.sum(axis=2)  # (weeks, 7); NaN before the first request
        # A day far below its weekday's median is a day off (a holiday, leave), not the usual: left out.
        with np.errstate(invalid="ignore"):
            off = days < QUIET_DAY * np.nanmedian(days, axis=0)
        kept = np.where(off[:, :, None], np.nan, by_week)  # each weekday keeps at least half its days
        # Each weekday's usual day (median) spread by the usual shape of a working day or of a
        # weekend day (hour shares over all their days): far less noisy than one median per hour.
        level = np.nanmedian(kept.sum(axis=2), axis=0)  # (7,)
        per_day = np.zeros((7, 24))
        for weekdays in (slice(0, 5), slice(5, 7)):
            hours = np.nansum(kept[:, weekdays], axis=(0, 1))
            shape = hours / hours.sum() if hours.sum() > 0 else np.full(24, 1 / 24)
            per_day[weekdays] = level[weekdays, None] * shape[None, :]
        return cls(np.maximum(per_day.reshape(HOURS_OF_WEEK), MIN_PER_HOUR))

    def scaled(self, factor: float) -> Baseline:
        return Baseline(np.maximum(self.per_hour * factor, MIN_PER_HOUR))

    @cached_property
    def _cumulative_list(self) -> list[float]:
        return [float(v) for v in np.concatenate(([0.0], np.cumsum(self.per_hour)))]

    def expected_before(self, weekday: int, hour: int) -> float:
        """Requests usually made on ``weekday`` before ``hour`` (0-24)."""
        cumulative = self._cumulative_list
        return cumulative[weekday * 24 + hour] - cumulative[weekday * 24]


@dataclass
class _Sum:
    value: float = 0.0
    at: float = 0.0  # epoch seconds of the last update
    alarmed_at: float = -math.inf
    day: int = -1  # the UTC day (ordinal) ``hours`` counts
    hours: list[int] = field(default_factory=lambda: [0] * 24)  # requests in each hour of that day


@dataclass(frozen=True)
class Alarm:
    subject: str
    at: datetime
    baseline_per_hour: float  # the usual rate for this hour, times how busy the day has been
    busy_factor: float  # that day factor (1 to BUSY_DAY_CAP)
    reason: str


@dataclass
class RateWatch:
    """One CUSUM per subject; ``observe`` for each request, in time order per subject.

    A busy day is not a runaway: the baseline is scaled by how far the subject's day, up to the
    hour before this one, ran above its usual (1 to ``busy_day_cap``; only once that usual is
    ``BUSY_DAY_MIN_EXPECTED`` requests, so that two early calls do not triple the night). A loop
    that starts sharply still stands out against it for an hour at least.
    """

    multiple: float = MULTIPLE
    threshold: float = THRESHOLD
    busy_day_cap: float = BUSY_DAY_CAP
    quiet_after_alarm_s: float = 3600.0  # one alarm per subject and hour at most
    _sums: dict[str, _Sum] = field(default_factory=dict)

    def observe(self, subject: str, moment: datetime, baseline: Baseline) -> Alarm | None:
        alarms = self.observe_many(((subject, baseline),), moment)
        return alarms[0] if alarms else None

    def observe_many(self, watched: Iterable[tuple[str, Baseline]], moment: datetime) -> list[Alarm]:
        """One request that counts for several subjects (its user, department, ...)."""
        t = moment.timestamp()
        utc = moment.astimezone(UTC)
        day, hour, weekday = utc.toordinal(), utc.hour, utc.weekday()
        slot = weekday * 24 + hour
        alarms: list[Alarm] = []
        for subject, baseline in watched:
            state = self._sums.get(subject)
            if state is None:
                state = self._sums[subject] = _Sum(at=t)
            if state.day != day:
                state.day, state.hours = day, [0] * 24
            state.hours[hour] += 1
            busy = 1.0
            if hour >= 2:
                expected = baseline.expected_before(weekday, hour - 1)
                if expected >= BUSY_DAY_MIN_EXPECTED:
                    busy = min(max(sum(state.hours[: hour - 1]) / expected, 1.0), self.busy_day_cap)
            rate = float(baseline.per_hour[slot]) / 3600.0 * busy
            drain = (self.multiple - 1.0) * rate * max(t - state.at, 0.0)
            # Capped at the threshold: evidence piled up during a quiet hour would otherwise keep
            # alarming long after the loop stopped.
            state.value = min(max(0.0, state.value - drain) + self._gain, self.threshold)
            state.at = t
            if state.value < self.threshold or t - state.alarmed_at < self.quiet_after_alarm_s:
                continue
            state.alarmed_at, state.value = t, 0.0
            per_hour = rate * 3600
            usual = f"{per_hour:.1f} requests an hour" + (f", the day running {busy:.1f}x busy" if busy > 1 else "")
            reason = f"{subject} is calling at over {self.break_even:.1f}x its usual rate for this hour ({usual})"
            alarms.append(Alarm(subject, utc, per_hour, busy, reason))
        return alarms

    @cached_property
    def _gain(self) -> float:
        return math.log(self.multiple)

    @property
    def break_even(self) -> float:
        """The rate, in multiples of the baseline, above which evidence piles up."""
        return (self.multiple - 1.0) / math.log(self.multiple)
