"""The runaway detector on arrivals whose answer is known."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from agent.benchmarks.forecast import oracle_detectable, poisson_sf
from agent.budgets.anomaly import MIN_PER_HOUR, Baseline, RateWatch

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
    # 20 nats at 10 ln 30 - 29 = 5 nats a minute (the baseline's gap between requests): 4 minutes.
    assert timedelta(minutes=3) < when - loop[0] <= timedelta(minutes=5)
    assert alarm.subject == "user:ann" and alarm.baseline_per_hour == 60 and "ann" in alarm.reason
    assert alarm.busy_factor == 1.0


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


def test_a_loop_on_a_busy_day_is_judged_against_the_days_pace() -> None:
    watch, baseline = RateWatch(), steady(60)
    morning = arrivals(MONDAY, 120, 10 * 60)  # twice the usual since midnight: no alarm
    assert all(watch.observe("user:dee", t, baseline) is None for t in morning)
    loop = arrivals(MONDAY + timedelta(hours=10), 1800, 30)  # then thirty a minute
    [alarm] = [a for t in loop if (a := watch.observe("user:dee", t, baseline)) is not None]
    # The day ran 2x up to 09:00 (the hour before this one): the usual for now is 120 an hour.
    assert alarm.busy_factor == 2.0 and alarm.baseline_per_hour == 120 and "2.0x busy" in alarm.reason


def test_a_baseline_is_each_weekdays_usual_day_in_the_usual_shape() -> None:
    workday = [0] * 8 + [10] * 10 + [0] * 6  # ten an hour from 08:00 to 18:00
    hours = [(MONDAY + timedelta(hours=h), workday[h % 24]) for h in range(3 * 168)]
    now = MONDAY + timedelta(weeks=3)
    learned = Baseline.learn(hours, now)
    assert learned is not None
    assert learned.per_hour[9] == 10  # Monday 09:00: ten an hour
    assert learned.per_hour[3] == MIN_PER_HOUR  # Monday 03:00: silent, floored
    assert learned.expected_before(0, 12) == 40 + 8 * MIN_PER_HOUR  # Monday before noon: 08:00-12:00, and the night
    # A day off (a holiday) is not the usual Monday: left out, not averaged in.
    holiday = [(t, 0 if t.date() == (MONDAY + timedelta(weeks=1)).date() else n) for t, n in hours]
    assert (learned_off := Baseline.learn(holiday, now)) is not None and learned_off.per_hour[9] == 10
    # A subject first seen on a Wednesday: the Monday and Tuesday before are no history, not silence.
    late = [(t, n) for t, n in hours if t >= MONDAY + timedelta(days=2)]
    assert (learned_late := Baseline.learn(late, now)) is not None and learned_late.per_hour[9] == 10
    assert Baseline.learn(hours[:100], MONDAY + timedelta(hours=100)) is None  # four days only


def test_the_benchmarks_oracle_flags_only_what_chance_cannot_explain() -> None:
    assert poisson_sf(0, 3.0) == 1.0
    assert abs(poisson_sf(3, 2.0) - (1 - np.exp(-2) * (1 + 2 + 2))) < 1e-12
    assert poisson_sf(500, 1.0) == 0.0  # far in the tail: underflows to 0, and returns
    # Five minutes at a request a minute: a busy day (3x) makes 15; a 10x loop 50.
    start = MONDAY + timedelta(hours=10)
    assert oracle_detectable(50, steady(60), start, start + timedelta(minutes=5))
    assert not oracle_detectable(16, steady(60), start, start + timedelta(minutes=5))
    # At night, a loop of a few requests is chance for anyone.
    assert not oracle_detectable(3, steady(0.5), start, start + timedelta(minutes=5))
