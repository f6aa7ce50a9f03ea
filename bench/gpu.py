"""GPU accounting costs: the sampler's CPU at 1 Hz, the report over 30 days of minute rollups, and
what a request waits when the local model was unloaded for idleness.

    .venv/bin/python bench/gpu.py

This machine has no GPU: the sampler runs on a replayed trace (the same code path after NVML
returns its samples); one NVML read of utilisation, memory, power and processes per GPU comes on
top on a real box (the NVML calls themselves are a few microseconds each).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.gpu.attribution import ActivityLog  # noqa: E402
from agent.gpu.catalogue import load_catalogue  # noqa: E402
from agent.gpu.cost import GpuPricing  # noqa: E402
from agent.gpu.ledger_minutes import load_rollups  # noqa: E402
from agent.gpu.report import gpu_report  # noqa: E402
from agent.gpu.rollup import roll_up  # noqa: E402
from agent.gpu.sampler import GpuSampler  # noqa: E402
from agent.ledger.database import Database  # noqa: E402
from agent.ledger.gpu import GpuLedger  # noqa: E402
from agent.models.catalog import find_asset  # noqa: E402
from agent.models.store import ModelStore  # noqa: E402
from agent.providers.base import CallProgress, ChatParams, Message  # noqa: E402
from agent.providers.local_llama import LocalLlamaProvider  # noqa: E402
from agent.settings import LocalModelConfig  # noqa: E402
from bench.report import update_section  # noqa: E402
from native.nvml import GpuSample, TraceReplay  # noqa: E402

START = datetime(2026, 11, 1, tzinfo=UTC)
PRICING = GpuPricing({"H200": Decimal("3.60")})


def samples(gpus: int, seconds: int, every_s: int) -> list[GpuSample]:
    out = []
    for s in range(0, seconds, every_s):
        for g in range(gpus):
            util = 90.0 if (s // 600 + g) % 3 == 0 else 2.0  # busy one 10-minute block in three
            out.append(GpuSample(START + timedelta(seconds=s), g, "NVIDIA H200", util, 40_000.0, 143_771.0, 400.0))
    return out


def sampler_cpu(gpus: int, ticks: int, db: Database) -> float:
    """CPU seconds per tick of the sampler (rollup, pricing, attribution, ledger writes)."""
    trace = samples(gpus, ticks, 1)
    sampler = GpuSampler(TraceReplay(trace), GpuLedger(db), PRICING, ActivityLog(), idle_threshold_pct=5,
                         max_gap_s=30, box_department="lab")  # fmt: skip
    started = time.process_time()
    for _ in range(ticks):
        sampler.tick()
    return (time.process_time() - started) / ticks


def report_time(gpus: int, days: int, db: Database) -> tuple[int, float, float]:
    ledger = GpuLedger(db)
    minutes = roll_up(samples(gpus, days * 86400, 30), 5, 60)
    for rollup in minutes:
        ledger.save_minute(rollup, [])
    catalogue = load_catalogue(None)
    durations, loads = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        loaded = load_rollups(db, START)
        t1 = time.perf_counter()
        gpu_report(loaded, PRICING, catalogue, period_days=Decimal(days))
        durations.append(time.perf_counter() - t0)
        loads.append(t1 - t0)
    return len(minutes), min(loads), min(durations)


async def reload_latency(repeats: int) -> list[float]:
    store = ModelStore(REPO / ".cache" / "models")
    asset = find_asset("smollm2-135m-instruct")
    assert asset is not None
    store.pull(asset)
    provider = LocalLlamaProvider(LocalModelConfig(), store)
    out = []
    try:
        for _ in range(repeats):
            provider.unload_if_idle(0)
            progress = CallProgress()
            await provider.complete("local", (Message("user", "Hi"),), ChatParams(max_tokens=1), progress)
            out.append(progress.load_s)
    finally:
        await provider.close()
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database.open(Path(tmp) / "ledger.db")
        cpu = {gpus: sampler_cpu(gpus, 1800, db) for gpus in (1, 8)}
        db2 = Database.open(Path(tmp) / "report.db")
        minutes, load_s, report_s = report_time(1, 30, db2)
        db3 = Database.open(Path(tmp) / "report8.db")
        minutes8, load8_s, report8_s = report_time(8, 30, db3)
    reloads = asyncio.run(reload_latency(5))
    for k, v in cpu.items():
        print(f"sampler, {k} GPU(s): {v * 1e3:.3f} ms CPU per tick = {v * 100:.3f}% of a core at 1 Hz")
    print(f"report over {minutes} minutes: load {load_s:.3f} s, total {report_s:.3f} s")
    print(f"report over {minutes8} minutes (8 GPUs): load {load8_s:.3f} s, total {report8_s:.3f} s")
    print(f"reload: {[round(r, 3) for r in reloads]}")
    body = "\n".join(
        [
            "| what | figure | goal |",
            "|---|---|---|",
            *(
                f"| sampler CPU at 1 Hz, {k} GPU(s) (1,800 ticks: rollup, pricing, attribution, ledger) | "
                f"{v * 1e3:.3f} ms per tick = **{v * 100:.3f}%** of one core | < 0.5% |"
                for k, v in cpu.items()
            ),
            f"| `gpu report` over 30 days of minute rollups, 1 GPU ({minutes:,} minutes) | load {load_s:.2f} s, "
            f"report {report_s:.2f} s in all | |",
            f"| the same, 8 GPUs ({minutes8:,} minutes) | load {load8_s:.2f} s, report {report8_s:.2f} s in all | |",
            f"| local model reload after an idle unload (SmolLM2-135M Q4_1, CPU) | median "
            f"{statistics.median(reloads) * 1000:.0f} ms (of {len(reloads)}: "
            f"{', '.join(f'{r * 1000:.0f}' for r in reloads)} ms) | |",
        ]
    ) + (
        "\n\nNo GPU here: the sampler replays a trace through the same interface, so NVML's own reads "
        "(a few microseconds per metric per GPU) are not in the figure. The reload latency is what the "
        "first request after an unload waits; the ledger records it per request (`model_load_ms`)."
    )
    update_section("gpu", "GPU accounting: sampler overhead, report time, model reload", "make setup-test && "
                   ".venv/bin/python bench/gpu.py", body)  # fmt: skip


if __name__ == "__main__":
    main()
