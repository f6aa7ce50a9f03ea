"""`aifinops gpu report` as an admin runs it: on a recorded trace (CSV), and on the ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from agent.gpu.rollup import MinuteRollup
from agent.ledger.database import Database
from agent.ledger.gpu import GpuLedger
from agent.settings import load_settings

HEADER = "timestamp,gpu_index,gpu_name,util_pct,mem_used_mib,mem_total_mib,power_w"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def aifinops(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "agent", *args], env=env, capture_output=True, text=True, timeout=120)


def write_trace(path: Path) -> Path:
    """Two hours, a sample every 10 s. GPU 0 (H200): busy at 80% for an hour, then idle at 0%.
    GPU 1 (L4): 20% busy all along, its memory nearly full (23,000 of 23,034 MiB)."""
    lines = [HEADER]
    for i in range(720):
        ts = (T0 + timedelta(seconds=10 * i)).isoformat().replace("+00:00", "Z")
        util0 = 80 if i < 360 else 0
        lines.append(f"{ts},0,NVIDIA H200,{util0},20000,143771,{300 if util0 else 80}")
        lines.append(f"{ts},1,NVIDIA L4,20,23000,23034,40.5")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_report_on_a_recorded_trace_as_json(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "box.csv")
    result = aifinops(
        "gpu", "report", "--trace", str(trace), "--json", "--usd-per-hour", "H200=3.60", "--usd-per-hour", "L4=0.90"
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert Decimal(report["period_days"]) * 24 == 2  # two hours
    h200, l4 = report["gpus"]
    assert (h200["gpu_name"], h200["busy_hours"], h200["idle_hours"], h200["unknown_hours"]) == (
        "NVIDIA H200", 1.0, 1.0, 0.0)  # fmt: skip
    # an hour busy and an hour idle at $3.60/h
    assert (h200["busy_cost_micro_usd"], h200["idle_cost_micro_usd"]) == (3_600_000, 3_600_000)
    assert (h200["util_p50_pct"], h200["util_p90_pct"]) == (0.0, 80.0)
    assert h200["energy_kwh"] == 0.38  # 300 W for an hour, 80 W for another
    assert h200["energy_cost_micro_usd"] is None  # no energy price configured
    # $7.20 in 2 hours, up all the time: x 12 x 30.4375 days = $2,629.80 a month
    assert h200["cost_per_month_micro_usd"] == 2_629_800_000
    assert (l4["busy_cost_micro_usd"], l4["peak_mem_pct"]) == (1_800_000, 99.85)

    recs = {(r["kind"], r["gpu_index"]): r for r in report["recommendations"]}
    assert set(recs) == {("unload_idle", 0), ("quantise", 1)}
    unload = recs["unload_idle", 0]
    # one idle stretch of 60 minutes: unloading after 15 saves 45 minutes x $3.60 = $2.70 per 2 hours
    assert unload["monthly_saving_micro_usd"] == 986_175_000
    assert unload["evidence"]["longest_idle_stretch_min"] == 60
    quantise = recs["quantise", 1]
    # Q4 needs at most half: 11,500 MiB + 20% fits a T4 (16 GiB, $0.53/h): $0.37 x 730.5 h a month
    assert quantise["evidence"]["candidate"] == "T4"
    assert quantise["monthly_saving_micro_usd"] == 270_285_000


def test_report_on_a_recorded_trace_as_tables(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "box.csv")
    result = aifinops("gpu", "report", "--trace", str(trace), "--usd-per-hour", "H200=3.60")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "GPU 0: NVIDIA H200 ($3.60/h)" in out and "GPU 1: NVIDIA L4 (no price configured)" in out
    assert "3.60" in out and "unknown" in out  # the L4's cost is unknown, never $0
    assert "[unload_idle]" in out and "[quantise]" in out


def test_since_counts_back_from_the_end_of_the_trace(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "box.csv")
    result = aifinops("gpu", "report", "--trace", str(trace), "--since", "30m", "--json")
    assert result.returncode == 0, result.stderr
    h200 = json.loads(result.stdout)["gpus"][0]
    # from 10:29:50 (30 min before the last sample) to its end: 1800 s + the last sample's 10 s
    assert (h200["busy_hours"], h200["idle_hours"]) == (0.0, round(1810 / 3600, 6))


def test_a_garbage_line_in_the_trace_is_named(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "box.csv")
    lines = trace.read_text(encoding="utf-8").splitlines()
    lines[42] = lines[42].replace(",20,", ",lots,")  # line 43 of the file: GPU 1's util_pct
    trace.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = aifinops("gpu", "report", "--trace", str(trace))
    assert result.returncode == 1
    assert "line 43" in result.stderr and "util_pct" in result.stderr


def test_a_bad_price_option_is_refused() -> None:
    result = aifinops("gpu", "report", "--usd-per-hour", "H200", "--trace", __file__)
    assert result.returncode == 2 and "MODEL=USD_PER_HOUR" in result.stderr


def test_without_a_trace_the_ledger_says_when_nothing_was_recorded() -> None:
    result = aifinops("gpu", "report")
    assert result.returncode == 1
    assert "no GPU samples recorded yet" in result.stderr


def test_without_a_trace_the_ledger_minutes_are_reported() -> None:
    settings = load_settings()
    settings.paths.ensure()
    db = Database.open(settings.paths.ledger_file)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
    try:
        ledger = GpuLedger(db)
        for i in range(120):  # two idle hours at 0%, 20 GiB of 140 loaded
            rollup = MinuteRollup(0, "NVIDIA H200", start + timedelta(minutes=i), 0.0, 60.0, 0.0, 1.5, 0.0,
                                  20480.0, 143771.0, 30)  # fmt: skip
            ledger.save_minute(rollup, [])
    finally:
        db.close()
    result = aifinops("gpu", "report", "--json", "--usd-per-hour", "default=2.00")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [gpu] = report["gpus"]
    assert (gpu["idle_hours"], gpu["idle_cost_micro_usd"], gpu["minutes"]) == (2.0, 4_000_000, 120)
    assert "unload_idle" in {r["kind"] for r in report["recommendations"]}
