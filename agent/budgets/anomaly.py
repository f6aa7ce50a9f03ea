"""Runaway detection: a subject calling far above its usual rate, caught within minutes.

The test is a CUSUM (Page's cumulative sum) on the subject's request arrivals, for "the rate is
``MULTIPLE`` times the baseline" against "the rate is the baseline". Each request adds
``log(MULTIPLE)``; time drains the sum at ``(MULTIPLE - 1) * baseline`` per second; the sum stays
between 0 and ``THRESHOLD``; an alarm fires when it reaches ``THRESHOLD``. For Poisson arrivals
this is the quickest detector for a given false-alarm rate. With ``MULTIPLE`` 30 the sum drifts
down below 29 / ln 30 = 8.5x the baseline (busy days at 3x, with their noise, stay quiet) and up
above it: a loop at 10x gains 10 ln 30 - 29 = 5 nats per baseline request's worth of time.
(Measured in `aifinops bench forecast --labels`; work in progress for issue 19: loops at night,
where the baseline's floor is far above the real rate, are still missed.)

The baseline is per hour of the week: the median, over the last weeks, of the subject's requests
in that hour, floored (nights are quiet, not free: at least a quarter of the subject's median busy
hour, and ``MIN_PER_HOUR``). A subject with no history takes its department's per-member
baseline. O(1) work and a few floats per request and subject.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

import numpy as np

MULTIPLE = 30.0  # the alternative the test weighs: break-even at 29 / ln 30 = 8.5x the baseline
THRESHOLD = 30.0  # nats of evidence for an alarm (bench: 0.06 false alarms a subject-month)
MIN_PER_HOUR = 1.0  # a baseline is never below one request an hour
WEEKS = 4
HOURS_OF_WEEK = 7 * 24


def hour_of_week(moment: datetime) -> int:
    return moment.weekday() * 24 + moment.hour


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of ``moment``'s week: baselines are learned from the weeks before it."""
    return datetime.combine(moment.date() - timedelta(days=moment.weekday()), time(0), UTC)


def learn_baselines(counts: Iterable[tuple[str, str, datetime, int]], week: datetime) -> dict[str, Baseline]:
    """Baselines from (user, department, hour start, requests) rows, for the week starting at
    ``week``: ``user:NAME`` for each user with a week of history before it, ``department:NAME``
    per member (for users without one)."""
    start = week - timedelta(weeks=WEEKS)
    per_user: dict[str, dict[datetime, int]] = defaultdict(lambda: defaultdict(int))
    per_department: dict[str, dict[datetime, int]] = defaultdict(lambda: defaultdict(int))
    members: dict[str, set[str]] = defaultdict(set)
    for user, department, hour, count in counts:
        if start <= hour < week:
            per_user[user][hour] += count
            per_department[department][hour] += count
            members[department].add(user)
    learned: dict[str, Baseline] = {}
    for department, hours in per_department.items():
        if (b := Baseline.learn(hours.items(), week)) is not None:
            learned[f"department:{department}"] = b.scaled(1 / len(members[department]))
    for user, hours in per_user.items():
        if (b := Baseline.learn(hours.items(), week)) is not None:
            learned[f"user:{user}"] = b
    return learned


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
        grid = np.zeros((weeks, HOURS_OF_WEEK))
        first_seen = None
        for hour, count in hourly_counts:
            if not start <= hour < now:
                continue
            first_seen = hour if first_seen is None or hour < first_seen else first_seen
            grid[min(int((hour - start) / timedelta(weeks=1)), weeks - 1), hour_of_week(hour)] += count
        if first_seen is None or now - first_seen < timedelta(weeks=1):
            return None
        full = max(1, min(weeks, int((now - first_seen) / timedelta(weeks=1))))
        recent = grid[-full:]
        per_hour = np.median(recent, axis=0)
        busy = recent[recent > 0]
        floor = max(MIN_PER_HOUR, float(np.median(busy)) / 4 if busy.size else MIN_PER_HOUR)
        return cls(np.maximum(per_hour, floor))

    def scaled(self, factor: float) -> Baseline:
        return Baseline(np.maximum(self.per_hour * factor, MIN_PER_HOUR))


@dataclass
class _Sum:
    value: float = 0.0
    at: float = 0.0  # epoch seconds of the last update
    alarmed_at: float = -math.inf


@dataclass(frozen=True)
class Alarm:
    subject: str
    at: datetime
    rate_per_hour: float  # what the evidence says the rate is now (requests an hour)
    baseline_per_hour: float
    reason: str


@dataclass
class RateWatch:
    """One CUSUM per subject; ``observe`` for each request, in time order per subject."""

    multiple: float = MULTIPLE
    threshold: float = THRESHOLD
    quiet_after_alarm_s: float = 3600.0  # one alarm per subject and hour at most
    _sums: dict[str, _Sum] = field(default_factory=dict)

    def observe(self, subject: str, moment: datetime, baseline: Baseline) -> Alarm | None:
        t = moment.timestamp()
        state = self._sums.setdefault(subject, _Sum(at=t))
        rate = baseline.per_second(moment)
        drain = (self.multiple - 1.0) * rate * max(t - state.at, 0.0)
        # Capped at the threshold: evidence piled up during a quiet hour would otherwise keep
        # alarming long after the loop stopped.
        state.value = min(max(0.0, state.value - drain) + math.log(self.multiple), self.threshold)
        state.at = t
        if state.value < self.threshold or t - state.alarmed_at < self.quiet_after_alarm_s:
            return None
        state.alarmed_at, state.value = t, 0.0
        per_hour = rate * 3600
        return Alarm(subject, moment.astimezone(UTC), per_hour * self.multiple, per_hour,
                     f"{subject} is calling at about {self.multiple:g}x its usual rate for this hour "
                     f"({per_hour:.1f} requests an hour)")  # fmt: skip
