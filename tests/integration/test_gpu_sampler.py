"""The GPU sampler against a replayed trace and a real ledger: minutes, costs and who pays them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from agent.gpu.attribution import Activity, ActivityLog
from agent.gpu.cost import GpuPricing
from agent.gpu.sampler import GpuSampler
from agent.ledger.database import Database
from agent.ledger.gpu import GpuLedger
from native.nvml import GpuSample, TraceReplay

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
# $3.60 per hour = 1,000 micro-USD per second: every second below is a round figure.
PRICING = GpuPricing({"H200": Decimal("3.60")})


def trace(utils: list[float], gpu_name: str = "NVIDIA H200", every_s: int = 2) -> list[GpuSample]:
    """One sample every ``every_s`` seconds; ``utils[i]`` is the utilisation of minute i."""
    samples = []
    for minute, util in enumerate(utils):
        for second in range(0, 60, every_s):
            ts = START + timedelta(minutes=minute, seconds=second)
            samples.append(GpuSample(ts, 0, gpu_name, util, 40_000.0, 143_771.0, 300.0))
    # One more sample closes the last minute exactly.
    samples.append(GpuSample(START + timedelta(minutes=len(utils)), 0, gpu_name, 0.0, 40_000.0, 143_771.0, 300.0))
    return samples


def run(samples: list[GpuSample], activity: ActivityLog, db: Database) -> GpuSampler:
    """Replays the trace one timestamp per tick, as the scheduler would (one GPU: one sample each)."""
    sampler = GpuSampler(TraceReplay(samples), GpuLedger(db), PRICING, activity, idle_threshold_pct=5,
                         max_gap_s=30, box_department="lab", clock=lambda: START + timedelta(days=1))  # fmt: skip
    for _ in samples:
        sampler.tick()
    return sampler


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database.open(tmp_path / "ledger.db")


def charges(db: Database) -> list[tuple[str, str, str, float, int | None]]:
    rows = db.query(
        "SELECT minute, kind, subject, seconds, cost_micro_usd FROM gpu_charges ORDER BY minute, kind, subject"
    )
    return [(r["minute"][11:16], r["kind"], r["subject"], r["seconds"], r["cost_micro_usd"]) for r in rows]


def test_busy_minutes_are_charged_to_the_user_whose_request_ran_and_idle_to_the_box(db: Database) -> None:
    activity = ActivityLog()
    t0 = START.timestamp()
    activity.add(Activity("alice", "sales", t0 + 10, t0 + 30))  # 20 s of local inference in minute 0
    sampler = run(trace([100, 0, 80]), activity, db)
    assert sampler.minutes_written == 3
    assert charges(db) == [
        ("09:00", "other", "other", 40.0, 40_000),
        ("09:00", "user", "alice", 20.0, 20_000),
        ("09:01", "idle", "idle", 60.0, 60_000),
        ("09:02", "other", "other", 60.0, 60_000),
    ]
    ledger = GpuLedger(db)
    [alice] = ledger.spend("user", START, "alice")
    assert (alice.key, alice.cost_micro_usd) == ("alice", 20_000)
    by_department = {s.key: s.cost_micro_usd for s in ledger.spend("department", START)}
    assert by_department == {"sales": 20_000, "idle:lab": 60_000, "lab": 100_000}


def test_an_all_idle_hour_costs_its_hourly_price_to_idle(db: Database) -> None:
    run(trace([0] * 60), ActivityLog(), db)
    [(key, seconds, cost)] = [(s.key, s.seconds, s.cost_micro_usd) for s in GpuLedger(db).spend("user", START)]
    assert (key, seconds, cost) == ("idle", 3600.0, 3_600_000)  # $3.60


def test_an_unknown_gpu_price_stays_unknown(db: Database) -> None:
    run(trace([100, 0], gpu_name="Some Other GPU"), ActivityLog(), db)
    rows = db.query("SELECT count(*) AS n, sum(cost_micro_usd IS NULL) AS unpriced FROM gpu_charges")[0]
    assert rows["n"] == rows["unpriced"] == 2
    assert [s.unpriced_minutes for s in GpuLedger(db).spend("user", START)] == [1, 1]


def test_a_gap_in_the_trace_is_unknown_time_charged_to_idle(db: Database) -> None:
    gap = (START + timedelta(seconds=70), START + timedelta(seconds=170))
    samples = [s for s in trace([100, 100, 100]) if not gap[0] <= s.timestamp < gap[1]]
    run(samples, ActivityLog(), db)
    minutes = db.query("SELECT minute, busy_s, idle_s, unknown_s FROM gpu_minutes ORDER BY minute")
    assert sum(m["unknown_s"] for m in minutes) > 60  # the 100 s gap, less what max_gap_s covers
    idle = [c for c in charges(db) if c[1] == "idle"]
    assert idle and all(c[4] is not None and c[4] > 0 for c in idle)
