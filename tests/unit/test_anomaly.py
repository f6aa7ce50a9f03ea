"""The runaway detector on arrivals whose answer is known."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from agent.budgets.anomaly import Baseline, RateWatch

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)


def steady(per_hour: float) -> Baseline:
    return Baseline(np.full(168, per_hour))


def arrivals(start: datetime, per_hour: float, minutes: float) -> list[datetime]:
    gap = 3600 / per_hour
    return [start + timedelta(seconds=i * gap) for i in range(int(minutes * 60 / gap))]


def test_a_loop_at_ten_times_the_rate_alarms_within_minutes_once_per_hour() -> None:
    watch, baseline = RateWatch(), steady(60)  # a request a minute
    assert all(watch.observe("user:ann", t, baseline) is None for t in arrivals(MONDAY, 60, 120))
    loop = arrivals(MONDAY + timedelta(hours=2), 600, 60)  # ten a minute, for an hour
    alarms = [(t, a) for t in loop if (a := watch.observe("user:ann", t, baseline)) is not None]
    [(when, alarm)] = alarms  # one alarm for the hour, not one per request
    # 30 nats at 10 ln 30 - 29 = 5 nats a minute (the baseline's gap between requests): 6 minutes.
    assert timedelta(minutes=5) < when - loop[0] < timedelta(minutes=6)
    assert alarm.subject == "user:ann" and alarm.baseline_per_hour == 60 and "ann" in alarm.reason


def test_a_busy_day_at_three_times_the_rate_never_alarms() -> None:
    watch, baseline = RateWatch(), steady(60)
    busy = arrivals(MONDAY, 180, 8 * 60)
    assert all(watch.observe("user:bob", t, baseline) is None for t in busy)


def test_evidence_does_not_outlast_the_loop() -> None:
    watch, baseline = RateWatch(), steady(60)
    loop = arrivals(MONDAY, 1200, 90)  # a long loop: one alarm in its first hour, one after
    fired = [t for t in loop if watch.observe("user:cy", t, baseline) is not None]
    assert len(fired) == 2
    # Back to normal right after: the capped sum drains, and no alarm comes once the quiet hour ends.
    after = arrivals(loop[-1] + timedelta(minutes=1), 60, 180)
    assert all(watch.observe("user:cy", t, baseline) is None for t in after)


def test_a_baseline_needs_a_week_of_history_and_has_a_floor() -> None:
    hours = [(MONDAY + timedelta(hours=h), 10 if 8 <= h % 24 < 18 else 0) for h in range(3 * 168)]
    now = MONDAY + timedelta(weeks=3)
    learned = Baseline.learn(hours, now)
    assert learned is not None
    assert learned.per_hour[9] == 10  # Monday 09:00: ten an hour
    assert learned.per_hour[3] == 2.5  # Monday 03:00: silent, floored at a quarter of a busy hour
    assert Baseline.learn(hours[:100], MONDAY + timedelta(hours=100)) is None  # four days only
