"""Writes a synthetic spend history for `aifinops bench forecast`: request rows and incident labels.

Each user belongs to a department and spends through a few features. Per user: a base daily
spend (log-normal across users), weekday and hour-of-day seasonality (working hours, quiet
weekends), a monthly growth rate, noise per day, and the company's holidays (near silence).
On top of that:

- runaways: a user's feature calling at 3x to 50x its usual hourly rate for 10 to 180 minutes
  (a loop); each is a label ``{"subject": "user:NAME", "start", "end", "kind": "runaway", "factor"}``;
- busy days: a user at up to 3x their usual day, spread over working hours, not labelled: an
  alarm on one is a false alarm.

    .venv/bin/python bench/spend_history.py --seed 11 --users 40 --days 120 --out .cache/bench/spend
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

DEPARTMENTS = ("engineering", "support", "sales", "finance", "research")
FEATURES = ("chat", "summarise", "code-review", "search", "translate")
MODELS = ("gpt-4o-mini", "gpt-4o", "local")
HOUR_PROFILE = np.array([0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.3, 0.8, 1.5, 2.0, 2.0, 1.8,
                         1.2, 1.8, 2.0, 1.9, 1.6, 1.0, 0.6, 0.4, 0.3, 0.25, 0.2, 0.15])  # fmt: skip
WEEKDAY_PROFILE = np.array([1.1, 1.15, 1.1, 1.05, 0.9, 0.2, 0.15])
MEAN_REQUEST_MICRO_USD = 2_000  # a small cloud model's call


@dataclass(frozen=True)
class User:
    name: str
    department: str
    daily_micro_usd: float
    growth_per_month: float
    features: tuple[str, ...]


BUSY_DAY_SHARE = 1 / 20  # of a user's days, at 1.5x-3x
DAY_NOISE_SIGMA = 0.25  # log-normal, per user and day
HOLIDAY_EVERY_DAYS = 45  # company holidays (5% of a day's spend)


def draw_users(rng: np.random.Generator, users: int) -> list[User]:
    """The users, drawn first from the seed's generator (``bench/forecast_oracle.py`` redraws them)."""
    return [
        User(
            name=f"user{i:03d}",
            department=DEPARTMENTS[i % len(DEPARTMENTS)],
            daily_micro_usd=float(rng.lognormal(math.log(400_000), 0.8)),
            growth_per_month=float(rng.normal(0.03, 0.05)),
            features=tuple(rng.choice(FEATURES, size=int(rng.integers(1, 4)), replace=False)),
        )
        for i in range(users)
    ]


def generate(
    seed: int, users: int, days: int, start: datetime, mean_request_micro_usd: int = MEAN_REQUEST_MICRO_USD
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """(request rows sorted by time, incident labels) for ``days`` days from ``start`` (UTC midnight)."""
    rng = np.random.default_rng(seed)
    people = draw_users(rng, users)
    holidays = {int(d) for d in rng.choice(days, size=max(1, days // HOLIDAY_EVERY_DAYS), replace=False)}
    rows: list[dict[str, object]] = []
    labels: list[dict[str, object]] = []
    hour_share = HOUR_PROFILE / HOUR_PROFILE.sum()
    for user in people:
        busy_days = {int(d) for d in rng.choice(days, size=max(1, int(days * BUSY_DAY_SHARE)), replace=False)}
        for day in range(days):
            when = start + timedelta(days=day)
            spend = user.daily_micro_usd * WEEKDAY_PROFILE[when.weekday()]
            spend *= (1 + user.growth_per_month) ** (day / 30) * rng.lognormal(0, DAY_NOISE_SIGMA)
            if day in holidays:
                spend *= 0.05
            if day in busy_days:
                spend *= rng.uniform(1.5, 3.0)
            for hour in range(24):
                _requests(rng, rows, user, when + timedelta(hours=hour), 3600, spend * hour_share[hour],
                          mean_request_micro_usd)  # fmt: skip
        for _ in range(max(1, days // 90)):  # about one loop per user a quarter
            labels.append(_runaway(rng, rows, user, start, days, hour_share, mean_request_micro_usd))
    rows.sort(key=lambda r: str(r["ts"]))
    labels.sort(key=lambda r: str(r["start"]))
    return rows, labels


def _requests(
    rng: np.random.Generator, rows: list[dict[str, object]], user: User, at: datetime, seconds: int, micro_usd: float,
    mean_request_micro_usd: int,
) -> None:  # fmt: skip
    """Requests worth about ``micro_usd`` spread over ``seconds`` from ``at``."""
    count = int(rng.poisson(max(micro_usd, 0) / mean_request_micro_usd))
    if count == 0:
        return
    costs = rng.gamma(2.0, micro_usd / count / 2.0, size=count)
    offsets = np.sort(rng.uniform(0, seconds, size=count))
    for offset, cost in zip(offsets, costs, strict=True):
        rows.append({
            "ts": (at + timedelta(seconds=float(offset))).isoformat(timespec="milliseconds"),
            "user": user.name,
            "department": user.department,
            "feature": str(rng.choice(user.features)),
            "model": str(rng.choice(MODELS, p=(0.7, 0.2, 0.1))),
            "cost_micro_usd": max(int(cost), 1),
        })  # fmt: skip


def _runaway(
    rng: np.random.Generator, rows: list[dict[str, object]], user: User, start: datetime, days: int,
    hour_share: np.ndarray, mean_request_micro_usd: int,
) -> dict[str, object]:  # fmt: skip
    """A loop at 3x-50x the user's usual rate for that hour, 10-180 minutes, at a random time."""
    factor = float(np.exp(rng.uniform(math.log(3), math.log(50))))
    minutes = int(rng.integers(10, 181))
    day = int(rng.integers(14, days))  # after two weeks of history
    at = start + timedelta(days=day, hours=int(rng.integers(0, 24)), minutes=int(rng.integers(0, 60)))
    usual_per_second = user.daily_micro_usd * WEEKDAY_PROFILE[at.weekday()] * hour_share[at.hour] / 3600
    extra = usual_per_second * (factor - 1) * minutes * 60
    loop = User(user.name, user.department, user.daily_micro_usd, 0, (user.features[0],))
    _requests(rng, rows, loop, at, minutes * 60, extra, mean_request_micro_usd)
    end = at + timedelta(minutes=minutes)
    return {"subject": f"user:{user.name}", "start": at.isoformat(), "end": end.isoformat(), "kind": "runaway",
            "factor": round(factor, 2), "feature": user.features[0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--start", default="2026-01-01")
    parser.add_argument("--out", type=Path, default=Path(".cache/bench/spend"))
    args = parser.parse_args()
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    rows, labels = generate(args.seed, args.users, args.days, start)
    args.out.mkdir(parents=True, exist_ok=True)
    history, incidents = args.out / f"history-{args.seed}.jsonl", args.out / f"labels-{args.seed}.jsonl"
    history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    incidents.write_text("".join(json.dumps(r) + "\n" for r in labels))
    print(f"{len(rows)} requests by {args.users} users over {args.days} days: {history}; {len(labels)} runaways: {incidents}")


if __name__ == "__main__":
    main()
