"""Where a budget period will end: projected spend, an 80% interval, and when it would break.

A small, documented model over a subject's daily spend (integer micro-USD, one value per local
day, oldest first, today last and partial):

1. **Weekday seasonality.** Each weekday's factor is its median spend over the full weeks of
   history (8 at most), the seven scaled to average 1. Medians: one runaway Tuesday does not make
   every Tuesday dear. No full week: every factor is 1. (Shrinking the factors towards 1, as an
   earlier version did, biased month-ends low by 5%: weekends came out dearer than they are.)
2. **Level and trend.** The deseasonalised days (spend / factor) of the last 56 at most, each
   capped at the median plus 3 robust standard deviations (a loop's day is not the new normal),
   are fitted with a weighted straight line, weights halving every ``HALF_LIFE_DAYS`` days
   back; then level and slope are scaled by what the caps took off (weighted): the spikes do not
   set the level, but they recur about as often as history shows, and their spend is real.
   The slope is shrunk by how far it stands out from its own standard error, and damped (each
   further day adds ``DAMPING`` times the previous day's growth) so that a few rising days do
   not extrapolate to the moon.
3. **Projection.** Each remaining day of the period is its level times its weekday's factor;
   today's remaining part is today's projection times the share of today still to come.
4. **Interval.** The fit's residuals give a day's spread; the spread of the remaining total is
   that spread times the square root of the days left (days independent), widened by the
   trend's own uncertainty. 80%: +-1.2816 sigma, never below what was already spent.

Pure functions, no I/O; money stays integer (the model's arithmetic is in floats and its
results are rounded to whole micro-USD, as a forecast is an estimate, not a charge).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

HISTORY_DAYS = 57  # days of ledger read for a forecast: the window and the day it ends on
HALF_LIFE_DAYS = 28.0
DAMPING = 0.9
WINDOW_DAYS = 56
MIN_DAYS = 3  # full days of history before a forecast is made
Z80 = 1.2816


@dataclass(frozen=True)
class Forecast:
    """The projected period total, its 80% interval and breach time; or why there is none."""

    forecast_micro_usd: int | None
    low_micro_usd: int | None
    high_micro_usd: int | None
    breach_at: datetime | None
    problem: str = ""  # why no forecast was made ("" when there is one)

    @classmethod
    def none(cls, problem: str) -> Forecast:
        return cls(None, None, None, None, problem)


def forecast_period(
    daily: list[int],
    today: date,
    today_elapsed: float,
    period_end: date,
    budget_micro_usd: int | None,
    spent_micro_usd: int,
    now: datetime,
) -> Forecast:
    """Project the period from ``daily`` (one value per day up to and including ``today``).

    ``today_elapsed`` is the share of today already past (0..1); ``period_end`` is the period's
    last day; ``spent_micro_usd`` what the period has spent so far (today included).
    """
    if not 0.0 <= today_elapsed <= 1.0 or not math.isfinite(today_elapsed):
        return Forecast.none(f"the share of today past is {today_elapsed}, not within 0..1")
    if any(v < 0 for v in daily):
        return Forecast.none("the history has a negative day")
    full_days = len(daily) - 1
    if full_days < MIN_DAYS:
        return Forecast.none(f"{full_days} full day(s) of history; a forecast needs {MIN_DAYS}")
    if period_end < today:
        return Forecast.none("the period has ended")
    history = np.asarray(daily[:-1][-8 * 7 :], dtype=np.float64)
    first_day = today - timedelta(days=len(history))
    weekdays = np.array([(first_day + timedelta(days=i)).weekday() for i in range(len(history))])
    factors = weekday_factors(history, weekdays)
    level, slope, sigma, slope_sigma = _fit(history, weekdays, factors)
    remaining = 1.0 - today_elapsed
    days = [today + timedelta(days=i) for i in range((period_end - today).days + 1)]
    expected, step, growth = [], 0.0, slope
    for i, day in enumerate(days):
        step += growth if i else 0.0
        growth *= DAMPING
        expected.append(max(level + slope + step, 0.0) * factors[day.weekday()])
    expected_left = np.array(expected)
    expected_left[0] *= remaining
    mean_left = float(expected_left.sum())
    n_left = len(days) - 1 + remaining
    spread = math.sqrt(sigma**2 * n_left + (slope_sigma * n_left * (n_left + 1) / 2) ** 2)
    forecast = spent_micro_usd + mean_left
    low = max(float(spent_micro_usd), forecast - Z80 * spread)
    high = forecast + Z80 * spread
    breach = None
    if budget_micro_usd is not None and forecast >= budget_micro_usd:
        breach = _breach_time(spent_micro_usd, expected_left, budget_micro_usd, now, remaining)
    return Forecast(round(forecast), round(low), round(high), breach)


def weekday_factors(history: np.ndarray, weekdays: np.ndarray) -> np.ndarray:
    """Seven multiplicative factors (Monday first), from the full weeks of history, shrunk to 1."""
    weeks = len(history) // 7
    factors = np.ones(7)
    if weeks == 0 or history.mean() <= 0:
        return factors
    recent, recent_days = history[-weeks * 7 :], weekdays[-weeks * 7 :]
    for d in range(7):
        factors[d] = np.median(recent[recent_days == d])
    if factors.mean() <= 0:
        return np.ones(7)
    factors /= factors.mean()
    floored: np.ndarray = np.maximum(factors, 0.05)
    return floored


def _fit(history: np.ndarray, weekdays: np.ndarray, factors: np.ndarray) -> tuple[float, float, float, float]:
    """Level at the last full day, slope per day, the day's residual sigma, the slope's sigma."""
    raw = history[-WINDOW_DAYS:] / factors[weekdays[-WINDOW_DAYS:]]
    median = float(np.median(raw))
    y = np.minimum(raw, median + 3 * 1.4826 * float(np.median(np.abs(raw - median))))
    x = np.arange(len(y), dtype=np.float64) - (len(y) - 1)  # 0 at the last full day
    w = 0.5 ** (-x / HALF_LIFE_DAYS)
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    sxx = float(np.sum(w * (x - xm) ** 2))
    slope = float(np.sum(w * (x - xm) * (y - ym)) / sxx) if sxx > 0 else 0.0
    level = float(ym - slope * xm)
    residuals = y - (level + slope * x)
    dof = max(len(y) - 2, 1)
    sigma = math.sqrt(float(np.sum(w * residuals**2) / np.sum(w)) * len(y) / dof)
    slope_sigma = sigma / math.sqrt(sxx / np.sum(w) * len(y)) if sxx > 0 else 0.0
    # The trend counts as far as it stands out from the noise: a share t^2 / (t^2 + 9) of it, t the
    # slope over its standard error (t = 3: half; a slope lost in the noise: the weighted level alone).
    t2 = (slope / slope_sigma) ** 2 if slope_sigma > 0 else 0.0
    keep = t2 / (t2 + 9.0)
    mean = float(np.average(y, weights=w))
    level, slope = mean + keep * (level - mean), keep * slope
    capped = float(np.average(y, weights=w))
    spikes = float(np.average(raw, weights=w)) / capped if capped > 0 else 1.0
    return level * spikes, slope * spikes, sigma, slope_sigma


def _breach_time(
    spent: int, expected_left: np.ndarray, budget: int, now: datetime, remaining_today: float
) -> datetime | None:
    """When the cumulative projection first reaches the budget (linear within a day)."""
    if spent >= budget:
        return now
    total = float(spent)
    for i, amount in enumerate(expected_left):
        if total + amount >= budget:
            fraction = (budget - total) / amount if amount > 0 else 0.0
            if i == 0:
                return now + timedelta(days=remaining_today * fraction)
            day_start = now + timedelta(days=remaining_today + (i - 1))
            return day_start + timedelta(days=fraction)
        total += amount
    return None


def naive_run_rate(spent_micro_usd: int, elapsed_days: float, period_days: float) -> int | None:
    """The baseline a forecast is measured against: what was spent so far, at the same pace."""
    if elapsed_days <= 0:
        return None
    return round(spent_micro_usd / elapsed_days * period_days)


def daily_from_hours(hours: Iterable[tuple[str, int]], zone: ZoneInfo, first: date, last: date) -> list[int]:
    """Spend per local day from ``first`` to ``last`` (inclusive), from UTC hourly sums.

    ``hours`` are ("YYYY-MM-DDTHH", micro-USD) as the ledger's timestamps start. An hour counts
    for the local day of its middle (zones half an hour off UTC split no hour more finely).
    """
    days = [0] * ((last - first).days + 1)
    for hour, spent in hours:
        middle = datetime.fromisoformat(hour + ":30").replace(tzinfo=UTC).astimezone(zone).date()
        i = (middle - first).days
        if 0 <= i < len(days):
            days[i] += spent
    return days
