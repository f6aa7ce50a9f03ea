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
        "| seed | runaways >= 10x | recall | within 5 min | median delay (s) | false alarms | per subject-month |",
        "|---|---|---|---|---|---|---|",
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
            anomaly_lines.append(f"| {seed} | {a['incidents_10x']} | {a['recall_10x']} | {a['recall_10x_within_5_min']} "
                                 f"| {a['median_delay_s']} | {a['false_alarms']} | {a['false_alarms_per_subject_month']} |")  # fmt: skip
            print(anomaly_lines[-1], flush=True)
    body = "\n".join(lines) + (
        "\n\nHistories from `bench/spend_history.py` (users in 5 departments; weekday and hour seasonality, monthly "
        "growth, holidays, noise, busy days up to 3x, about one runaway of 3x-50x per user a quarter); subjects are "
        "users and departments; months with at least 14 days of history before them. Goals (issue 19): MAPE at "
        "day 10 <= 0.10 and <= 0.7x the naive run-rate's: not met yet.\n\n"
        "Runaway detection (agent/budgets/anomaly.py: a CUSUM on each user's request arrivals against their "
        "hour-of-week baseline, relearned every Monday from the 4 weeks before; replayed from the third week):\n\n"
        + "\n".join(anomaly_lines)
        + "\n\nAn alarm counts as a detection from the incident's start to 5 minutes after its end. Goals (issue "
        "19): recall >= 0.95 for 10x and more within 5 minutes, <= 0.1 false alarms per subject-month. Not met "
        "yet: loops at night are missed (the baseline's floor, a quarter of a busy hour, is far above the real "
        "night rate), and at a request a minute the test needs about 6 minutes."
    )
    command = ".venv/bin/python bench/forecast.py   # aifinops bench forecast --history FILE --json, per seed"
    update_section("forecast", "Budget forecasts: month-end MAPE against the naive run-rate", command, body)


if __name__ == "__main__":
    main()
