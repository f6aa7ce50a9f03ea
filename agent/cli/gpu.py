"""The `gpu` group: record NVML traces, report GPU cost."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from agent.cli.common import _Context, _fail, _Group, main, pass_ctx

# -- gpu --------------------------------------------------------------------------------------
# The `gpu` group is defined here, once. Its commands: `record` (just below, over native/nvml.py);
# `report` belongs to the GPU cost work (agent/gpu/) and is added after this block.


@main.group(cls=_Group)
def gpu() -> None:
    """GPU busy and idle time: record traces, report costs."""


# -- end of the `gpu` group definition ----------------------------------------------------------


@gpu.command("record")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Trace file (CSV); appended to if one.")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between samples.")  # fmt: skip
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds (default: run until Ctrl-C or SIGTERM).")  # fmt: skip
def gpu_record(out: str, interval_s: float, duration_s: float | None) -> None:
    """Record what every NVIDIA GPU does into a trace (docs/GPU_TRACE.md) that replays anywhere."""
    import math
    import signal
    import threading

    from native.nvml import GpuSample, NvmlSource, TraceError, probe, record

    status = probe()
    if not status.available or not status.gpus:
        _fail(f"no NVIDIA GPU: {status.error or 'NVML sees no GPU'}")
    gpus = ", ".join(f"#{g.index} {g.name}" for g in status.gpus)
    until = f"for {duration_s:g} s" if duration_s is not None else "until Ctrl-C"
    click.echo(f"recording {gpus} every {interval_s:g} s {until} to {out}", err=True)
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    ticks = math.ceil(duration_s / interval_s) if duration_s is not None else None
    try:
        with click.progressbar(length=ticks or 1, label="samples", file=sys.stderr, hidden=ticks is None) as bar:
            done = 0

            def progress(samples: list[GpuSample]) -> None:
                nonlocal done
                done += 1
                if ticks is not None:
                    bar.update(1)
                elif done % 60 == 0:
                    click.echo(f"{done} samples so far", err=True)

            rows = record(NvmlSource(), out, interval_s, duration_s, stop, on_sample=progress)
    except (TraceError, OSError) as e:
        _fail(str(e))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    click.echo(f"wrote {rows} rows to {out}")


# -- gpu report (GPU cost work, agent/gpu/) -----------------------------------------------------

if TYPE_CHECKING:
    from decimal import Decimal

    from agent.gpu.report import GpuReport


def _gpu_prices(values: tuple[str, ...]) -> dict[str, Decimal]:
    from decimal import Decimal, InvalidOperation

    prices: dict[str, Decimal] = {}
    for value in values:
        model, sep, price = value.rpartition("=")
        try:
            usd = Decimal(price.strip())
        except InvalidOperation:
            usd = Decimal(-1)
        if not sep or not model.strip() or not usd.is_finite() or usd < 0:
            raise click.BadParameter(f"expected MODEL=USD_PER_HOUR, e.g. H200=3.50, got {value!r}")
        prices[model.strip()] = usd
    return prices


@gpu.command("report")
@click.option("--trace", type=click.Path(exists=True, dir_okay=False),
              help="A recorded trace (CSV, docs/GPU_TRACE.md) instead of this agent's ledger.")  # fmt: skip
@click.option("--since", default="30d", show_default=True,
              help="e.g. 7d, 24h or an ISO date; with --trace, counted back from the trace's last sample.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--idle-threshold", "idle_threshold_pct", type=click.FloatRange(0, 100), default=None,
              help="Utilisation (%) under which a GPU is idle (default: gpu.idle_threshold_pct).")  # fmt: skip
@click.option("--usd-per-hour", "usd_per_hour", multiple=True, metavar="MODEL=PRICE",
              help="USD per GPU hour, e.g. H200=3.50 or default=1.00 (repeatable; over gpu.usd_per_hour).")  # fmt: skip
@pass_ctx
def gpu_report_command(
    obj: _Context,
    trace: str | None,
    since: str,
    as_json: bool,
    idle_threshold_pct: float | None,
    usd_per_hour: tuple[str, ...],
) -> None:
    """Per GPU: utilisation percentiles, busy and idle hours and cost, peak memory; right-sizing advice."""
    from datetime import UTC, datetime
    from decimal import Decimal
    from pathlib import Path

    from agent.gpu.catalogue import load_catalogue
    from agent.gpu.cost import GpuPricing
    from agent.gpu.report import gpu_report
    from agent.gpu.rollup import MinuteRollup, roll_up
    from agent.timespans import parse_since

    settings = obj.settings()
    section = settings.gpu
    pricing = GpuPricing({**section.usd_per_hour, **_gpu_prices(usd_per_hour)}, section.usd_per_kwh)
    catalogue = load_catalogue(Path(section.catalogue).expanduser() if section.catalogue else None)
    threshold = section.idle_threshold_pct if idle_threshold_pct is None else idle_threshold_pct
    rollups: list[MinuteRollup]
    if trace is not None:
        from native.nvml import TraceError, read_trace

        try:
            samples = read_trace(trace)
        except TraceError as e:
            _fail(f"{trace}: {e}")
        if not samples:
            _fail(f"{trace}: the trace has no samples")
        end = max(s.timestamp for s in samples)
        start = parse_since(since, now=end)
        rollups = roll_up([s for s in samples if s.timestamp >= start], threshold, section.max_gap_s)
        # The period is the longest time any GPU was tracked: the trace's own span.
        tracked: dict[int, float] = {}
        for r in rollups:
            tracked[r.gpu_index] = tracked.get(r.gpu_index, 0.0) + r.tracked_s
        period_s = max(tracked.values(), default=0.0)
    else:
        if idle_threshold_pct is not None:
            _fail("--idle-threshold applies to --trace only: the ledger's minutes were counted when sampled")
        from agent.gpu.ledger_minutes import load_rollups
        from agent.ledger.database import Database

        settings.paths.ensure()
        now = datetime.now(UTC)
        start = parse_since(since, now=now)
        db = Database.open(settings.paths.ledger_file)
        try:
            rollups = load_rollups(db, start)
        finally:
            db.close()
        if not rollups:
            _fail("no GPU samples recorded yet (is the agent running on a machine with an NVIDIA GPU? "
                  "see `aifinops doctor`); `aifinops gpu report --trace FILE` reports a recorded trace")  # fmt: skip
        period_s = (now - max(start, rollups[0].minute)).total_seconds()
    if not rollups or period_s <= 0:
        _fail("no GPU time in the period: nothing to report")
    report = gpu_report(rollups, pricing, catalogue, period_days=Decimal(repr(period_s)) / 86400)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    _print_gpu_report(report)


def _print_gpu_report(report: GpuReport) -> None:
    from rich.console import Console
    from rich.table import Table

    from agent.money import format_usd

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}%"

    def usd(micros: int | None) -> str:
        return "unknown" if micros is None else format_usd(micros)[:-4]  # cents and 2 more digits

    console = Console()
    for g in report.gpus:
        price = "no price configured" if g.usd_per_hour is None else f"${g.usd_per_hour}/h"
        table = Table("", "hours", "cost USD", title=f"GPU {g.gpu_index}: {g.gpu_name or 'unnamed'} ({price})")
        table.add_row("busy", f"{g.busy_hours:.2f}", usd(g.busy_cost_micro_usd))
        table.add_row("idle", f"{g.idle_hours:.2f}", usd(g.idle_cost_micro_usd))
        table.add_row("unknown (no data)", f"{g.unknown_hours:.2f}", usd(g.unknown_cost_micro_usd))
        energy = "not priced" if g.energy_cost_micro_usd is None else usd(g.energy_cost_micro_usd)
        table.add_row(f"energy ({g.energy_kwh:.3f} kWh)", "", energy)
        table.add_section()
        table.add_row("total", f"{g.busy_hours + g.idle_hours + g.unknown_hours:.2f}", usd(g.total_cost_micro_usd))
        table.add_row("per month (extrapolated)", "", usd(g.cost_per_month_micro_usd))
        console.print(table)
        memory = "-"
        if g.peak_mem_used_mib is not None:
            memory = f"{g.peak_mem_used_mib / 1024:.1f} GiB"
            if g.mem_total_mib:
                memory += f" of {g.mem_total_mib / 1024:.1f} GiB ({pct(g.peak_mem_pct)})"
        console.print(f"utilisation p50 {pct(g.util_p50_pct)}, p90 {pct(g.util_p90_pct)}, "
                      f"p99 {pct(g.util_p99_pct)}; peak memory {memory}", highlight=False)  # fmt: skip
    days = report.period_days
    period = f"{days * 24:.1f} hours" if days < 2 else f"{days:.1f} days"
    click.echo(f"\nperiod: {period}, extrapolated to a month of 30.4375 days. Recommendations:")
    if not report.recommendations:
        click.echo("  none: the figures do not support a change.")
    for r in report.recommendations:
        click.echo(f"  [{r.kind}] {r.title}")
