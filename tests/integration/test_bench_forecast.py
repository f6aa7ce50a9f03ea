"""`aifinops bench forecast` on a generated history: the figures come out, bad files are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.spend_history import generate


def bench_forecast(history: Path, home: Path, *more: str) -> subprocess.CompletedProcess[str]:
    command = ["bench", "forecast", "--history", str(history), "--json", *more]
    return subprocess.run(
        [sys.executable, "-m", "agent", "--home", str(home), *command],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_month_end_forecasts_are_scored_against_the_naive_run_rate(tmp_path: Path) -> None:
    rows, labels = generate(seed=5, users=4, days=75, start=datetime(2026, 1, 1, tzinfo=UTC))
    assert labels and all(label["kind"] == "runaway" for label in labels)
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    incidents = tmp_path / "labels.jsonl"
    incidents.write_text("".join(json.dumps(r) + "\n" for r in labels))
    run = bench_forecast(history, tmp_path / "home", "--labels", str(incidents))
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    forecast, anomaly = result["forecast"], result["anomaly"]
    # The detector was scored against the incidents that start once it has a baseline.
    assert anomaly["incidents"] <= len(labels) and anomaly["alarms"] >= anomaly["false_alarms"] >= 0
    assert anomaly["false_alarms_per_subject_month"] >= 0
    # What an oracle could flag at all, and in the first 5 minutes, is among the 10x incidents.
    assert 0 <= anomaly["detectable_10x"] <= anomaly["incidents_10x"] <= anomaly["incidents"]
    assert 0 <= anomaly["detectable_10x_in_5_min"] <= anomaly["incidents_10x"]
    # 4 users in 4 departments; February (from 31 days of history) is the one whole month.
    assert forecast["subjects"] == 8 and forecast["subject_months"] == 8
    for day in ("5", "10", "20"):
        assert 0 <= forecast["mape"][day] < 1 and 0 <= forecast["naive_mape"][day] < 1
    assert forecast["mape"]["20"] < forecast["mape"]["5"]  # knowing more of the month helps


def test_a_history_that_cannot_be_read_is_one_clear_error(tmp_path: Path) -> None:
    row = {"ts": "2026-01-01T10:00:00", "user": "a", "department": "d"}
    cases = {
        "empty.jsonl": "",
        "negative.jsonl": json.dumps(row | {"cost_micro_usd": -5}) + "\n",
        "float.jsonl": json.dumps(row | {"cost_micro_usd": 0.5}) + "\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        run = bench_forecast(tmp_path / name, tmp_path / "home")
        assert run.returncode != 0 and "Traceback" not in run.stderr, (name, run.stderr)
        assert run.stderr.strip(), name
