"""Runs `aifinops bench forecast` on generated spend histories (seeds the tests never use) and
writes the figures: month-end forecast MAPE at days 5, 10 and 20, against the naive run-rate, and
the runaway detector's recall, delay and false alarms against the generated incidents.

    .venv/bin/python bench/forecast.py [--seeds 101,102,103] [--users 30] [--days 150]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402
from bench.spend_history import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="101,102,103")
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--days", type=int, default=150)
    args = parser.parse_args()
    lines = [
        "| seed | users | days | subject-months | MAPE day 5 | naive | MAPE day 10 | naive | MAPE day 20 | naive |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    anomaly_lines = [
        "| seed | runaways >= 10x | recall | median delay (s) | within 5 min | false alarms | per subject-month "
        "| detectable at all | recall of those | their median delay (s) | detectable in 5 min | caught in 5 min of those |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "AIFINOPS_HOME": tmp}
        for seed in (int(s) for s in args.seeds.split(",")):
            rows, labels = generate(seed, args.users, args.days, datetime(2026, 1, 1, tzinfo=UTC))
            history, incidents = Path(tmp) / f"history-{seed}.jsonl", Path(tmp) / f"labels-{seed}.jsonl"
            history.write_text("".join(json.dumps(r) + "\n" for r in rows))
            incidents.write_text("".join(json.dumps(r) + "\n" for r in labels))
            cmd = [sys.executable, "-m", "agent", "bench", "forecast", "--history", str(history),
                   "--labels", str(incidents), "--json"]  # fmt: skip
            result = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
            f, a = result["forecast"], result["anomaly"]
            m, n = f["mape"], f["naive_mape"]
            lines.append(f"| {seed} | {args.users} | {args.days} | {f['subject_months']} | {m['5']} | {n['5']} "
                         f"| {m['10']} | {n['10']} | {m['20']} | {n['20']} |")  # fmt: skip
            print(lines[-1], flush=True)
            anomaly_lines.append(f"| {seed} | {a['incidents_10x']} | {a['recall_10x']} | {a['median_delay_s']} "
                                 f"| {a['recall_10x_within_5_min']} | {a['false_alarms']} "
                                 f"| {a['false_alarms_per_subject_month']} | {a['detectable_10x']} "
                                 f"| {a['recall_10x_detectable']} | {a['median_delay_detectable_s']} "
                                 f"| {a['detectable_10x_in_5_min']} "
                                 f"| {a['recall_10x_within_5_min_detectable']} |")  # fmt: skip
            print(anomaly_lines[-1], flush=True)
    body = "\n".join(lines) + (
        "\n\nHistories from `bench/spend_history.py` (users in 5 departments; weekday and hour seasonality, monthly "
        "growth, holidays, noise, busy days up to 3x, about one runaway of 3x-50x per user a quarter); subjects are "
        "users and departments; months with at least 14 days of history before them. Goals (issue 19): MAPE at "
        "day 10 <= 0.10: met; and <= 0.7x the naive run-rate's: met on seed 103 only (0.89x, 0.87x and 0.66x on seeds 101-103). "
        "That goal sits at the limit of what anything can do on these histories: an oracle that knows each "
        "generated user's true level, growth and weekday shape and adds the expected busy days and holidays "
        "(`bench/forecast_oracle.py --seeds 101,102,103`) scores 0.062, 0.058 and 0.055 at day 10 over the same "
        "subject-months, 0.70x, 0.71x and 0.48x naive: the busy days, runaways and day-to-day noise still to "
        "come are beyond any forecast. The model's remaining gap to the oracle is the level's lag behind growth "
        "(month-ends 2-4% low; a trend fitted per subject is too noisy to close it).\n\n"
        "Runaway detection (agent/budgets/anomaly.py: a CUSUM on each user's request arrivals against their "
        "hour-of-week baseline, relearned every Monday from the 4 weeks before, raised up to 3x on a day running "
        "busy; replayed from the third week; tuned on seeds 11-13, never these):\n\n"
        + "\n".join(anomaly_lines)
        + "\n\nAn alarm counts as a detection from the incident's start to 5 minutes after its end; any other "
        "alarm is false (busy days included). Goals (issue 19): recall >= 0.95 for 10x and more with a median "
        "delay <= 5 min, <= 0.1 false alarms per subject-month. The false alarms are met by far; recall is "
        "not, nor the median delay on two seeds of three, and they cannot be on these histories, by any detector. The generator makes a loop 10x the "
        "user's rate *for that hour*, at any hour: at night that is a few requests an hour (a median user makes "
        "about 0.5 an hour at 03:00), so many loops make under 10 requests in all and none in their first 5 "
        "minutes. *Detectable* is an oracle's test, generous to any detector: it knows the incident's window "
        "and the baseline, and flags the window when its request count is improbable for a legitimate day at 3x "
        "the baseline (Poisson tail <= 0.1 false alarms a subject-month spread over every window of that length "
        "in a month). The detector catches almost every incident that oracle can flag over its whole length; "
        "in the first 5 minutes the oracle itself can flag only the loops of the busiest hours (it needs about "
        "50 requests an hour of baseline to flag 95% of 10x loops, see agent/benchmarks/forecast.py), "
        "and the detector, which does not know when a loop starts, catches most of those."
    )
    command = ".venv/bin/python bench/forecast.py   # aifinops bench forecast --history FILE --json, per seed"
    update_section("forecast", "Budget forecasts: month-end MAPE against the naive run-rate", command, body)


if __name__ == "__main__":
    main()
