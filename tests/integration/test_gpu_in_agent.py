"""GPU cost in the running agent: a recorded trace replayed through the sampler as if live, a real
local request charged its share of busy time, and the report with its recommendations."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from native.nvml import GpuSample, write_trace
from tests.conftest import RunningAgent


def busy_trace(path: Path, start: datetime, seconds: int, util: float, every_s: int = 2) -> Path:
    samples = [
        GpuSample(start + timedelta(seconds=s), 0, "NVIDIA H200", util, 30_000.0, 143_771.0, 450.0)
        for s in range(0, seconds + 1, every_s)
    ]
    return write_trace(samples, path)


def test_a_local_request_is_charged_its_share_of_gpu_busy_time(
    start_agent: Callable[..., RunningAgent], tmp_path: Path
) -> None:
    # Replayed at one sample per 0.5 s tick, 2 s apart: the trace runs 4x faster than the clock
    # and reaches the end of the request's minute within about 16 s.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=6)
    trace = busy_trace(tmp_path / "trace.csv", start, 150, 100.0)
    agent = start_agent(
        gpu={"trace": str(trace), "sample_interval_s": 0.5, "usd_per_hour": {"H200": "3.60"}, "box_department": "lab"},
        cache={"enabled": False},
    )
    agent.client().chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8
    )
    [row] = agent.rows()
    db = agent.thread.services.db
    deadline = time.monotonic() + 90
    while True:
        users = db.query("SELECT subject, sum(seconds) AS s, sum(cost_micro_usd) AS c FROM gpu_charges"
                         " WHERE kind = 'user' GROUP BY subject")  # fmt: skip
        minutes = db.query("SELECT count(*) AS n FROM gpu_minutes")[0]["n"]
        if users and minutes >= 1:
            break
        assert time.monotonic() < deadline, "the replayed trace never produced a charged minute"
        time.sleep(0.5)
    [charged] = users
    assert charged["subject"] == row.user_name
    compute_s = row.latency_ms / 1000
    assert 0 < charged["s"] <= compute_s + 0.5  # its computation, not the whole busy minute
    assert charged["c"] == round(charged["s"] * 1000) or abs(charged["c"] - charged["s"] * 1000) <= 2
    with agent.http() as http:
        spend = http.get("/api/v1/spend", params={"by": "user"}).json()
        gpu = http.get("/api/v1/gpu").json()
    mine = next(r for r in spend["rows"] if r["key"] == row.user_name)
    assert mine["gpu_cost_micro_usd"] == charged["c"] and spend["total_gpu_cost_micro_usd"] >= charged["c"]
    assert gpu["sampling"] is True
    [h200] = gpu["gpus"]
    assert "H200" in h200["gpu_name"]


def test_without_a_gpu_the_agent_runs_without_gpu_tracking(agent: RunningAgent) -> None:
    assert agent.thread.services.gpu_sampler is None
    with agent.http() as http:
        report = http.get("/api/v1/gpu").json()
    assert report == {"sampling": False, "gpus": [], "recommendations": [], "period_days": "0"}


def test_an_unreadable_trace_turns_gpu_tracking_off_not_the_agent(
    start_agent: Callable[..., RunningAgent], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,gpu_index\nnot a trace\n")
    agent = start_agent(gpu={"trace": str(bad)})
    assert agent.thread.services.gpu_sampler is None
    agent.client().chat.completions.create(model="local", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert len(agent.rows()) == 1
