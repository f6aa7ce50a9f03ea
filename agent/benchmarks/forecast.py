"""`aifinops bench forecast`: how well month-end spend is forecast, against the naive run-rate.

Input: request rows ``{"ts", "user", "department", "feature", "model", "cost_micro_usd"}`` (JSON
lines, any order). They are rolled up per UTC day for every user and department. For each
subject and each calendar month fully inside the history with at least ``MIN_HISTORY_DAYS``
days before it, the forecast is made at the end of day 5, 10 and 20 of the month from what was
known then (the history up to that day), and compared with what the month really spent. MAPE is
the mean of |forecast - actual| / actual over those subject-months (months that spent nothing
are left out: a percentage of zero means nothing).
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from agent.budgets.forecast import forecast_period, naive_run_rate
from agent.errors import InvalidRequest
from agent.jsonlines import read_records

FORECAST_DAYS = (5, 10, 20)
MIN_HISTORY_DAYS = 14


def read_history(path: Path) -> list[tuple[datetime, str, str, int]]:
    """(time, user, department, cost) per request row; a row that does not parse is refused."""

    def row(r: dict[str, Any]) -> tuple[datetime, str, str, int]:
        ts = datetime.fromisoformat(str(r["ts"]))
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        cost = r["cost_micro_usd"]
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
            raise ValueError(f"cost_micro_usd must be a whole number >= 0, not {cost!r}")
        return ts, str(r["user"]), str(r["department"]), cost

    return list(read_records(path, row, "ts, user, department, cost_micro_usd"))


def daily_rollup(rows: Iterable[tuple[datetime, str, str, int]]) -> tuple[date, dict[str, np.ndarray]]:
    """(first day, {subject: spend per day from the first day}) for users and departments."""
    rows = list(rows)
    if not rows:
        raise InvalidRequest("the history has no rows")
    first = min(r[0] for r in rows).date()
    last = max(r[0] for r in rows).date()
    days = (last - first).days + 1
    series: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(days, dtype=np.int64))
    for ts, user, department, cost in rows:
        i = (ts.date() - first).days
        series[f"user:{user}"][i] += cost
        series[f"department:{department}"][i] += cost
    return first, dict(series)


def evaluate_forecasts(first: date, series: dict[str, np.ndarray]) -> dict[str, Any]:
    """MAPE of the model and of the naive run-rate, per forecast day, over subject-months."""
    errors: dict[int, list[float]] = {d: [] for d in FORECAST_DAYS}
    naive: dict[int, list[float]] = {d: [] for d in FORECAST_DAYS}
    months = 0
    for daily in series.values():
        last = first + timedelta(days=len(daily) - 1)
        month = date(first.year, first.month, 1)
        while month <= last:
            days_in_month = calendar.monthrange(month.year, month.month)[1]
            month_end = month + timedelta(days=days_in_month - 1)
            start_i = (month - first).days
            if start_i >= MIN_HISTORY_DAYS and month_end <= last:
                actual = int(daily[start_i : start_i + days_in_month].sum())
                if actual > 0:
                    months += 1
                    for d in FORECAST_DAYS:
                        today_i = start_i + d - 1
                        spent = int(daily[start_i : today_i + 1].sum())
                        today = month + timedelta(days=d - 1)
                        now = datetime.combine(today + timedelta(days=1), time(0), UTC)
                        f = forecast_period([int(v) for v in daily[: today_i + 1]], today, 1.0, month_end, None,
                                            spent, now)  # fmt: skip
                        if f.forecast_micro_usd is not None:
                            errors[d].append(abs(f.forecast_micro_usd - actual) / actual)
                        rate = naive_run_rate(spent, d, days_in_month)
                        if rate is not None:
                            naive[d].append(abs(rate - actual) / actual)
            month = (month_end + timedelta(days=1)).replace(day=1)
    return {
        "mape": {str(d): round(float(np.mean(v)), 4) if v else None for d, v in errors.items()},
        "naive_mape": {str(d): round(float(np.mean(v)), 4) if v else None for d, v in naive.items()},
        "subject_months": months,
        "subjects": len(series),
    }
