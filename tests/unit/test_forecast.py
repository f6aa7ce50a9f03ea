"""The budget forecast model on series whose answer is known."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np

from agent.budgets.forecast import forecast_period, naive_run_rate, weekday_factors

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)  # a Thursday, half past


def test_a_flat_spend_projects_the_same_pace_to_the_period_end() -> None:
    daily = [1_000_000] * 30 + [500_000]  # $1 a day; today half spent, half gone
    f = forecast_period(daily, NOW.date(), 0.5, date(2026, 12, 31), None, 10_500_000, NOW)
    # 21 days after today, half of today: 21.5 more dollars.
    assert f.problem == "" and f.forecast_micro_usd is not None
    assert abs(f.forecast_micro_usd - 32_000_000) < 50_000
    assert f.low_micro_usd is not None and f.high_micro_usd is not None
    assert f.low_micro_usd <= f.forecast_micro_usd <= f.high_micro_usd
    assert f.high_micro_usd - f.low_micro_usd < 1_000_000  # no noise, a narrow interval
    assert f.breach_at is None


def test_weekday_seasonality_is_learned_from_full_weeks() -> None:
    first = NOW.date() - timedelta(days=28)
    days = [first + timedelta(days=i) for i in range(28)]
    history = np.array([0.2e6 if d.weekday() >= 5 else 1.0e6 for d in days])
    factors = weekday_factors(history, np.array([d.weekday() for d in days]))
    assert factors[5] < 0.6 < 1 < factors[0] < 1.3  # weekends low, weekdays high
    flat = weekday_factors(history[:6], np.array([d.weekday() for d in days[:6]]))
    assert np.all(flat == 1)  # no full week: no seasonality


def test_a_breach_is_dated_when_the_projection_crosses_the_budget() -> None:
    daily = [2_000_000] * 20 + [1_000_000]
    spent = 9 * 2_000_000 + 1_000_000  # the month so far (9 full days and half of today)
    f = forecast_period(daily, NOW.date(), 0.5, date(2026, 12, 31), 30_000_000, spent, NOW)
    assert f.breach_at is not None
    # 11 dollars left: the rest of today (1), then 5 days at 2 a day: midnight after the 15th.
    assert abs((f.breach_at - datetime(2026, 12, 16, tzinfo=UTC)).total_seconds()) < 3600


def test_bad_history_gives_no_forecast_and_says_why() -> None:
    cases = {
        "full day(s) of history": [100],
        "negative": [100, -5, 100, 100, 100],
    }
    for problem, daily in cases.items():
        f = forecast_period(daily, NOW.date(), 0.5, date(2026, 12, 31), 1000, 0, NOW)
        assert f.forecast_micro_usd is None and problem in f.problem
    assert "within 0..1" in forecast_period([1] * 9, NOW.date(), 1.5, date(2026, 12, 31), 10, 0, NOW).problem


def test_the_naive_run_rate_is_the_pace_so_far() -> None:
    assert naive_run_rate(10_000_000, 10, 31) == 31_000_000
    assert naive_run_rate(5, 0, 31) is None
