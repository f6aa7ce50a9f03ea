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

import bisect
import calendar
import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from agent.budgets.anomaly import BUSY_DAY_CAP, Baseline, RateWatch, learn_baselines, week_start
from agent.budgets.forecast import forecast_period, naive_run_rate
from agent.errors import InvalidRequest
from agent.jsonlines import read_records

FORECAST_DAYS = (5, 10, 20)
MIN_HISTORY_DAYS = 14
FALSE_ALARM_GOAL = 0.1  # alarms per subject-month (issue 19)


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


def read_labels(path: Path) -> list[tuple[str, datetime, datetime, float]]:
    """(subject, start, end, factor) per incident row ``{"subject", "start", "end", "kind"[, "factor"]}``."""

    def label(r: dict[str, Any]) -> tuple[str, datetime, datetime, float]:
        start, end = (datetime.fromisoformat(str(r[k])) for k in ("start", "end"))
        start, end = (t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC) for t in (start, end))
        if end < start:
            raise ValueError("end is before start")
        return str(r["subject"]), start, end, float(r.get("factor", 0.0))

    return list(read_records(path, label, "subject, start, end, kind"))


def evaluate_anomalies(
    rows: list[tuple[datetime, str, str, int]], labels: list[tuple[str, datetime, datetime, float]]
) -> dict[str, Any]:
    """Replay the requests through the runaway detector, relearning baselines every Monday 00:00
    UTC from the weeks before; score its alarms against the labelled incidents.

    An alarm on a labelled subject between the incident's start and 5 minutes after its end is a
    detection (delay: alarm - start); any other alarm is a false alarm. Scored from the second
    week on (the first has no baseline); incidents that start before that are left out.
    """
    rows = sorted(rows)
    if not rows:
        raise InvalidRequest("the history has no rows")
    scored_from = week_start(rows[0][0]) + timedelta(weeks=2)
    hourly: dict[tuple[str, str, datetime], int] = defaultdict(int)
    for ts, user, department, _ in rows:
        hourly[(user, department, ts.replace(minute=0, second=0, microsecond=0))] += 1
    counts = [(user, department, hour, n) for (user, department, hour), n in hourly.items()]
    watch = RateWatch()
    baselines: dict[str, Baseline] = {}
    week_of_baselines: datetime | None = None
    alarms = []
    for ts, user, department, _ in rows:
        if ts < scored_from:
            continue
        if (week := week_start(ts)) != week_of_baselines:  # relearned every Monday, as the agent's scheduler does
            baselines, week_of_baselines = learn_baselines(counts, week), week
        subject = f"user:{user}"
        baseline = baselines.get(subject) or baselines.get(f"member:{department}")
        if baseline is not None and (alarm := watch.observe(subject, ts, baseline)) is not None:
            alarms.append(alarm)
    incidents = [lab for lab in labels if lab[1] >= scored_from]
    detected: dict[int, float] = {}
    false_alarms = 0
    for alarm in alarms:
        match = [i for i, (subject, start, end, _) in enumerate(incidents)
                 if subject == alarm.subject and start <= alarm.at <= end + timedelta(minutes=5)]  # fmt: skip
        if match:
            detected.setdefault(match[0], (alarm.at - incidents[match[0]][1]).total_seconds())
        else:
            false_alarms += 1
    big = [i for i, lab in enumerate(incidents) if lab[3] >= 10]
    delays = [detected[i] for i in big if i in detected]
    within = [d for d in delays if d <= 300]
    users = len({r[1] for r in rows})
    months = (rows[-1][0] - scored_from).total_seconds() / (30.44 * 86400)
    # What any detector could see: the oracle test below, on the whole incident and on its first 5 minutes.
    times: dict[str, list[datetime]] = defaultdict(list)
    for ts, user, _, _ in rows:
        times[f"user:{user}"].append(ts)
    departments = {f"user:{user}": department for _, user, department, _ in rows}
    learned: dict[datetime, dict[str, Baseline]] = {}

    def seeable(i: int, minutes: float | None) -> bool:
        subject, start, end, _ = incidents[i]
        end = end if minutes is None else min(end, start + timedelta(minutes=minutes))
        week = week_start(start)
        baselines = learned.setdefault(week, learn_baselines(counts, week))
        baseline = baselines.get(subject) or baselines.get(f"member:{departments.get(subject, '')}")
        if baseline is None:
            return False
        stamps = times[subject]
        seen = bisect.bisect_right(stamps, end) - bisect.bisect_left(stamps, start)
        return oracle_detectable(seen, baseline, start, end)

    whole = [i for i in big if seeable(i, None)]
    first_5 = [i for i in big if seeable(i, 5)]
    caught = [detected[i] for i in whole if i in detected]
    return {
        "recall_10x": round(len(delays) / len(big), 4) if big else None,
        "median_delay_s": round(float(np.median(delays)), 1) if delays else None,
        "false_alarms_per_subject_month": round(false_alarms / max(users * months, 1e-9), 4),
        "recall_10x_within_5_min": round(len(within) / len(big), 4) if big else None,
        "detectable_10x": len(whole),
        "recall_10x_detectable": round(sum(1 for i in whole if i in detected) / len(whole), 4) if whole else None,
        "median_delay_detectable_s": round(float(np.median(caught)), 1) if caught else None,
        "detectable_10x_in_5_min": len(first_5),
        "recall_10x_within_5_min_detectable": (
            round(sum(1 for i in first_5 if detected.get(i, math.inf) <= 300) / len(first_5), 4) if first_5 else None
        ),
        "incidents": len(incidents),
        "incidents_10x": len(big),
        "alarms": len(alarms),
        "false_alarms": false_alarms,
    }


def oracle_detectable(seen: int, baseline: Baseline, start: datetime, end: datetime) -> bool:
    """Could any detector flag ``seen`` requests between ``start`` and ``end`` at the false-alarm goal?

    The oracle knows the incident's window and the subject's baseline. It may alarm when the count
    is improbable for a legitimate day at ``BUSY_DAY_CAP`` times the baseline: P(Poisson(usual
    count) >= seen) at most ``FALSE_ALARM_GOAL`` per subject-month spread over every window of
    that length in a month. An incident this test cannot flag is beyond every detector (it knew
    less than the oracle), so the recall goal is also reported over the incidents it can flag.
    """
    usual, t = 0.0, start
    while t < end:  # the baseline's hours the window covers, in parts of an hour
        step = min(end, t.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)) - t
        usual += baseline.per_second(t) * step.total_seconds()
        t += step
    usual *= BUSY_DAY_CAP
    seconds = max((end - start).total_seconds(), 60.0)
    alpha = FALSE_ALARM_GOAL * seconds / (30.44 * 86400)
    return poisson_sf(seen, usual) <= alpha


def poisson_sf(k: int, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    if k <= mean:
        return 1.0 - sum(math.exp(j * math.log(mean) - mean - math.lgamma(j + 1)) for j in range(k))
    total, j = 0.0, k
    while True:  # the terms fall at least geometrically past the mean
        term = math.exp(j * math.log(mean) - mean - math.lgamma(j + 1))
        total += term
        if term <= total * 1e-12:  # also when the terms underflow to 0
            return min(total, 1.0)
        j += 1
