"""How good a month-end forecast can be on `bench/spend_history.py`'s histories: an oracle that
knows each generated user's true level, growth and weekday shape, and adds the expected busy days
and holidays (not the runaways: nobody can know those), scored as `aifinops bench forecast`
scores the model (MAPE of user and department month-ends at day 5, 10 and 20, against the naive
run-rate). It bounds what any forecast could reach on these histories.

    .venv/bin/python bench/forecast_oracle.py [--seeds 11,12,13] [--users 30] [--days 150]
"""

from __future__ import annotations

import argparse
import calendar
import math
import sys
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.benchmarks.forecast import FORECAST_DAYS, MIN_HISTORY_DAYS, daily_rollup  # noqa: E402
from bench.spend_history import (  # noqa: E402
    BUSY_DAY_SHARE,
    DAY_NOISE_SIGMA,
    HOLIDAY_EVERY_DAYS,
    WEEKDAY_PROFILE,
    User,
    draw_users,
    generate,
)

START = datetime(2026, 1, 1, tzinfo=UTC)


def expected_day(user: User, day: int, days: int) -> float:
    """A user's expected spend on day ``day`` of the history, runaways aside."""
    when = START + timedelta(days=day)
    noise = math.exp(DAY_NOISE_SIGMA**2 / 2)
    busy = 1 + BUSY_DAY_SHARE * (2.25 - 1)  # busy days at 1.5x-3x, uniform
    holidays = 1 - max(1, days // HOLIDAY_EVERY_DAYS) / days * 0.95
    growth = (1 + user.growth_per_month) ** (day / 30)
    return user.daily_micro_usd * float(WEEKDAY_PROFILE[when.weekday()]) * growth * noise * busy * holidays


def score(seed: int, users: int, days: int) -> dict[str, dict[int, tuple[float, float]]]:
    rows, _ = generate(seed, users, days, START)
    first, series = daily_rollup(
        (datetime.fromisoformat(str(r["ts"])), str(r["user"]), str(r["department"]), int(str(r["cost_micro_usd"])))
        for r in rows
    )
    people = draw_users(np.random.default_rng(seed), users)  # the generator draws them first
    groups = {"user": {f"user:{u.name}": [u] for u in people}, "department": defaultdict(list)}
    for u in people:
        groups["department"][f"department:{u.department}"].append(u)
    offset = (first - START.date()).days
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for kind, members in groups.items():
        errors: dict[int, list[float]] = {d: [] for d in FORECAST_DAYS}
        naive: dict[int, list[float]] = {d: [] for d in FORECAST_DAYS}
        for subject, group in members.items():
            daily = series[subject]
            last = first + timedelta(days=len(daily) - 1)
            month = date(first.year, first.month, 1)
            while month <= last:
                length = calendar.monthrange(month.year, month.month)[1]
                start = (month - first).days
                if start >= MIN_HISTORY_DAYS and month + timedelta(days=length - 1) <= last:
                    actual = int(daily[start : start + length].sum())
                    for d in FORECAST_DAYS:
                        spent = int(daily[start : start + d].sum())
                        rest = sum(expected_day(u, offset + start + i, days) for u in group for i in range(d, length))
                        errors[d].append(abs(spent + rest - actual) / actual)
                        naive[d].append(abs(spent / d * length - actual) / actual)
                month = (month + timedelta(days=length)).replace(day=1)
        out[kind] = {d: (float(np.mean(errors[d])), float(np.mean(naive[d]))) for d in FORECAST_DAYS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="11,12,13")
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--days", type=int, default=150)
    args = parser.parse_args()
    print("| seed | subjects | oracle MAPE day 5 | naive | day 10 | naive | day 20 | naive |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        for kind, by_day in score(seed, args.users, args.days).items():
            cells = " | ".join(f"{m:.4f} | {n:.4f}" for m, n in by_day.values())
            print(f"| {seed} | {kind}s | {cells} |", flush=True)


if __name__ == "__main__":
    main()
