"""The GPU report: per GPU what it did and cost, and right-sizing recommendations with evidence.

Pure computation over minute rollups (from the ledger or a recorded trace), prices and the GPU
class catalogue. Recommendations appear only when the figures support them, and each carries
the numbers that led to it.

* ``smaller_gpu``: p90 utilisation under a bound (60%), and a cheaper catalogue class of the same
  kind (cloud for cloud, workstation for workstation; cloud when the GPU is not in the
  catalogue) holds the peak memory plus 20% headroom and, where bandwidths are known, the load
  (utilisation projected by the memory-bandwidth ratio stays under 80%). Saving: the price
  difference x the hours the GPU is up per month. Never a class with less memory than that.
* ``unload_idle``: idle is at least half of the GPU's known time and there are idle stretches
  longer than N minutes (15). Unloading after N idle minutes lets the box be shared or powered
  down for the rest of each stretch: the saving is the idle cost of the stretches beyond their
  first N minutes (the first N are still paid).
* ``quantise``: peak memory above 90% of capacity. A 4-bit model (Q4 instead of FP16) needs
  about a quarter to a half of the weights' memory; the saving is that of the cheapest smaller
  class the half would fit (with headroom), else none is claimed.

A month is 30.4375 days (365.25 / 12). Monthly figures extrapolate the period given: they assume
it is representative of how the box is used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from agent.gpu.catalogue import GpuClass, current_class
from agent.gpu.cost import GpuPricing
from agent.gpu.rollup import MinuteRollup
from agent.money import micros_to_usd, usd_to_micros

MONTH_DAYS = Decimal("30.4375")
_MINUTE = timedelta(minutes=1)

RecommendationKind = Literal["smaller_gpu", "unload_idle", "quantise"]


@dataclass(frozen=True)
class RightSizingRules:
    """When the report recommends what. Defaults are deliberately conservative."""

    p90_util_below_pct: float = 60.0
    max_projected_util_pct: float = 80.0
    memory_headroom: float = 0.2
    idle_share_at_least: float = 0.5
    unload_after_min: int = 15
    quantise_above_mem_pct: float = 90.0
    quantised_share_low: float = 0.25
    quantised_share_high: float = 0.5
    # smaller_gpu and unload_idle need at least this much known (busy + idle) time.
    min_known_hours: float = 1.0


@dataclass(frozen=True)
class GpuFigures:
    gpu_index: int
    gpu_name: str
    first_minute: datetime
    last_minute: datetime
    minutes: int
    hours_covered: float  # busy + idle: time whose use is known
    busy_hours: float
    idle_hours: float
    unknown_hours: float  # gaps and unreadable utilisation; its cost is charged to idle
    util_p50_pct: float | None  # percentiles over minutes' average utilisation
    util_p90_pct: float | None
    util_p99_pct: float | None
    energy_kwh: float  # over the time with a power reading
    usd_per_hour: Decimal | None  # None: no configured price for this GPU
    price_key: str | None  # the [gpu] usd_per_hour key that priced it
    busy_cost_micro_usd: int | None
    idle_cost_micro_usd: int | None
    unknown_cost_micro_usd: int | None
    energy_cost_micro_usd: int | None  # None: no energy price
    total_cost_micro_usd: int | None  # busy + idle + unknown (+ energy when priced)
    cost_per_month_micro_usd: int | None
    peak_mem_used_mib: float | None
    mem_total_mib: float | None
    peak_mem_pct: float | None


@dataclass(frozen=True)
class Recommendation:
    kind: RecommendationKind
    gpu_index: int
    title: str
    monthly_saving_micro_usd: int | None  # None: no saving figure is claimed
    evidence: dict[str, Any]  # the numbers that led to it (JSON values; Decimals as strings)


@dataclass(frozen=True)
class GpuReport:
    period_days: Decimal
    gpus: tuple[GpuFigures, ...]
    recommendations: tuple[Recommendation, ...]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values: Decimals as strings, datetimes as ISO-8601, money in micro-USD."""
        return {str(k): _jsonable(v) for k, v in dataclasses.asdict(self).items()}


def _jsonable(value: object) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def gpu_report(
    rollups: Iterable[MinuteRollup],
    pricing: GpuPricing,
    catalogue: Sequence[GpuClass],
    *,
    period_days: Decimal,
    rules: RightSizingRules = RightSizingRules(),
) -> GpuReport:
    """Figures per GPU and the recommendations they support, over ``period_days`` of data."""
    if period_days <= 0:
        raise ValueError("period_days must be positive")
    by_gpu: dict[int, list[MinuteRollup]] = {}
    for rollup in rollups:
        by_gpu.setdefault(rollup.gpu_index, []).append(rollup)
    figures: list[GpuFigures] = []
    recommendations: list[Recommendation] = []
    for gpu_index in sorted(by_gpu):
        minutes = sorted(by_gpu[gpu_index], key=lambda r: r.minute)
        fig = _figures(gpu_index, minutes, pricing, period_days)
        figures.append(fig)
        advisor = _Advisor(fig, minutes, pricing, catalogue, period_days, rules)
        recommendations.extend(r for r in (advisor.smaller_gpu(), advisor.unload_idle(), advisor.quantise()) if r)
    return GpuReport(period_days, tuple(figures), tuple(recommendations))


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (a value that occurred); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _figures(gpu_index: int, minutes: list[MinuteRollup], pricing: GpuPricing, period_days: Decimal) -> GpuFigures:
    name = next((r.gpu_name for r in reversed(minutes) if r.gpu_name), "")
    busy_s = sum(r.busy_s for r in minutes)
    idle_s = sum(r.idle_s for r in minutes)
    unknown_s = sum(r.unknown_s for r in minutes)
    utils = [r.util_avg_pct for r in minutes if r.util_avg_pct is not None]
    peaks = [r.peak_mem_used_mib for r in minutes if r.peak_mem_used_mib is not None]
    totals = [r.mem_total_mib for r in minutes if r.mem_total_mib is not None]
    peak, capacity = (max(peaks) if peaks else None), (max(totals) if totals else None)
    cost = pricing.total_cost(minutes)
    total = cost.time_micro_usd
    if total is not None and cost.energy_micro_usd is not None:
        total += cost.energy_micro_usd
    per_month = None if total is None else usd_to_micros(micros_to_usd(total) * MONTH_DAYS / period_days)
    return GpuFigures(
        gpu_index=gpu_index,
        gpu_name=name,
        first_minute=minutes[0].minute,
        last_minute=minutes[-1].minute,
        minutes=len(minutes),
        hours_covered=_hours(busy_s + idle_s),
        busy_hours=_hours(busy_s),
        idle_hours=_hours(idle_s),
        unknown_hours=_hours(unknown_s),
        util_p50_pct=_round(percentile(utils, 50), 2),
        util_p90_pct=_round(percentile(utils, 90), 2),
        util_p99_pct=_round(percentile(utils, 99), 2),
        energy_kwh=round(sum(r.energy_wh for r in minutes) / 1000, 6),
        usd_per_hour=pricing.hourly_usd(name),
        price_key=pricing.price_key(name),
        busy_cost_micro_usd=cost.busy_micro_usd,
        idle_cost_micro_usd=cost.idle_micro_usd,
        unknown_cost_micro_usd=cost.unknown_micro_usd,
        energy_cost_micro_usd=cost.energy_micro_usd,
        total_cost_micro_usd=total,
        cost_per_month_micro_usd=per_month,
        peak_mem_used_mib=peak,
        mem_total_mib=capacity,
        peak_mem_pct=_round(None if peak is None or not capacity else 100 * peak / capacity, 2),
    )


def _hours(seconds: float) -> float:
    return round(seconds / 3600, 6)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _usd(micros: int | None) -> str:
    if micros is None:
        return "an unknown amount"
    return f"${micros_to_usd(micros).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


class _Advisor:
    """The recommendations one GPU's figures support."""

    def __init__(
        self,
        fig: GpuFigures,
        minutes: list[MinuteRollup],
        pricing: GpuPricing,
        catalogue: Sequence[GpuClass],
        period_days: Decimal,
        rules: RightSizingRules,
    ) -> None:
        self.fig, self.minutes, self.catalogue, self.rules = fig, minutes, catalogue, rules
        self.period_days = period_days
        self.current = current_class(catalogue, fig.gpu_name, fig.mem_total_mib)
        # What one hour of this GPU costs: the configured price, else the catalogue's list price.
        self.price: Decimal | None
        if fig.usd_per_hour is not None:
            self.price, self.price_source = fig.usd_per_hour, f"configured [gpu] usd_per_hour {fig.price_key!r}"
        elif self.current is not None:
            self.price, self.price_source = self.current.usd_per_hour, f"catalogue class {self.current.name!r}"
        else:
            self.price, self.price_source = None, "unknown"
        tracked_hours = fig.hours_covered + fig.unknown_hours
        self.hours_up_per_month = Decimal(repr(tracked_hours)) * MONTH_DAYS / period_days

    def _base_evidence(self) -> dict[str, Any]:
        return {
            "gpu_name": self.fig.gpu_name,
            "period_days": str(self.period_days),
            "usd_per_hour": None if self.price is None else str(self.price),
            "price_source": self.price_source,
            "current_class": None if self.current is None else self.current.name,
        }

    def _cheaper_classes_holding(self, price: Decimal, needed_mib: float) -> list[GpuClass]:
        """Classes cheaper than ``price`` with at least ``needed_mib`` of memory, cheapest first."""
        kind = self.current.kind if self.current is not None else "cloud"  # like for like: rent or buy
        fits = [
            c
            for c in self.catalogue
            if c is not self.current and c.kind == kind and c.memory_mib >= needed_mib and c.usd_per_hour < price
        ]
        return sorted(fits, key=lambda c: (c.usd_per_hour, -c.memory_gib, c.name))

    def _monthly_saving(self, price: Decimal, candidate: GpuClass) -> int:
        return usd_to_micros((price - candidate.usd_per_hour) * self.hours_up_per_month)

    def _projected_util(self, candidate: GpuClass, util_pct: float) -> float | None:
        """Utilisation on ``candidate`` scaled by memory bandwidth; None when not known."""
        mine = self.current.memory_bandwidth_gbps if self.current else None
        theirs = candidate.memory_bandwidth_gbps
        return None if mine is None or theirs is None else util_pct * mine / theirs

    def smaller_gpu(self) -> Recommendation | None:
        fig, rules = self.fig, self.rules
        p90, peak = fig.util_p90_pct, fig.peak_mem_used_mib
        if p90 is None or peak is None or fig.hours_covered < rules.min_known_hours:
            return None
        if p90 >= rules.p90_util_below_pct:
            return None
        needed_mib = peak * (1 + rules.memory_headroom)
        if self.price is None:
            return None
        for candidate in self._cheaper_classes_holding(self.price, needed_mib):
            projected = self._projected_util(candidate, p90)  # None: bandwidths unknown, not projected
            if projected is not None and projected > rules.max_projected_util_pct:
                continue
            saving = self._monthly_saving(self.price, candidate)
            evidence = {
                **self._base_evidence(),
                "util_p90_pct": p90,
                "util_p90_bound_pct": rules.p90_util_below_pct,
                "projected_util_p90_pct": None if projected is None else round(projected, 2),
                "max_projected_util_pct": rules.max_projected_util_pct,
                "peak_mem_used_mib": peak,
                "memory_headroom": rules.memory_headroom,
                "memory_needed_mib": round(needed_mib, 1),
                "candidate": candidate.name,
                "candidate_memory_mib": candidate.memory_mib,
                "candidate_usd_per_hour": str(candidate.usd_per_hour),
                "hours_up_per_month": str(round(self.hours_up_per_month, 2)),
            }
            title = (
                f"GPU {fig.gpu_index} ({fig.gpu_name or 'unnamed'}): a {candidate.name} "
                f"({candidate.memory_gib} GiB, ${candidate.usd_per_hour}/h) holds its peak memory "
                f"({peak / 1024:.1f} GiB + {rules.memory_headroom:.0%}) and its load (p90 {p90:.0f}%): "
                f"{_usd(saving)} a month less"
            )
            return Recommendation("smaller_gpu", fig.gpu_index, title, saving, evidence)
        return None

    def idle_stretches_min(self) -> list[tuple[datetime, int, float]]:
        """Runs of consecutive minutes with idle time and no busy time: (start, minutes,
        idle seconds after the first N minutes of the run)."""
        n = self.rules.unload_after_min
        runs: list[tuple[datetime, int, float]] = []
        run: list[MinuteRollup] = []
        for rollup in [*self.minutes, None]:
            idle = rollup is not None and rollup.busy_s == 0 and rollup.idle_s > 0
            if idle and rollup is not None and run and rollup.minute == run[-1].minute + _MINUTE:
                run.append(rollup)
                continue
            if run:
                runs.append((run[0].minute, len(run), sum(r.idle_s for r in run[n:])))
            run = [rollup] if idle and rollup is not None else []
        return runs

    def unload_idle(self) -> Recommendation | None:
        fig, rules = self.fig, self.rules
        if fig.hours_covered < rules.min_known_hours or fig.hours_covered <= 0:
            return None
        idle_share = fig.idle_hours / fig.hours_covered
        if idle_share < rules.idle_share_at_least:
            return None
        stretches = self.idle_stretches_min()
        long = [s for s in stretches if s[1] > rules.unload_after_min]
        avoidable_s = sum(s[2] for s in long)
        if not long or avoidable_s <= 0:
            return None
        saving = None
        if self.price is not None:
            avoidable_hours = Decimal(repr(avoidable_s)) / 3600
            saving = usd_to_micros(self.price * avoidable_hours * MONTH_DAYS / self.period_days)
        evidence = {
            **self._base_evidence(),
            "idle_hours": fig.idle_hours,
            "busy_hours": fig.busy_hours,
            "idle_share_pct": round(100 * idle_share, 2),
            "idle_share_bound_pct": round(100 * rules.idle_share_at_least, 2),
            "unload_after_min": rules.unload_after_min,
            "idle_stretches_over_n": len(long),
            "longest_idle_stretch_min": max(s[1] for s in long),
            "idle_hours_after_n_min": round(avoidable_s / 3600, 4),
        }
        title = (
            f"GPU {fig.gpu_index} ({fig.gpu_name or 'unnamed'}) is idle {idle_share:.0%} of the time, in "
            f"{len(long)} stretch(es) over {rules.unload_after_min} min: unloading models after "
            f"{rules.unload_after_min} idle minutes frees it to be shared or powered down, "
            f"{_usd(saving)} a month"
        )
        return Recommendation("unload_idle", fig.gpu_index, title, saving, evidence)

    def quantise(self) -> Recommendation | None:
        fig, rules = self.fig, self.rules
        peak, capacity = fig.peak_mem_used_mib, fig.mem_total_mib
        if peak is None or not capacity or 100 * peak / capacity <= rules.quantise_above_mem_pct:
            return None
        low, high = peak * rules.quantised_share_low, peak * rules.quantised_share_high
        needed_mib = high * (1 + rules.memory_headroom)
        smaller = []
        if self.price is not None:
            smaller = [c for c in self._cheaper_classes_holding(self.price, needed_mib) if c.memory_mib < capacity]
        candidate = smaller[0] if smaller else None
        saving = None if candidate is None or self.price is None else self._monthly_saving(self.price, candidate)
        evidence = {
            **self._base_evidence(),
            "peak_mem_used_mib": peak,
            "mem_total_mib": capacity,
            "peak_mem_pct": round(100 * peak / capacity, 2),
            "quantise_above_mem_pct": rules.quantise_above_mem_pct,
            "quantised_mem_mib_range": [round(low, 1), round(high, 1)],
            "memory_needed_mib": round(needed_mib, 1),
            "candidate": None if candidate is None else candidate.name,
            "candidate_usd_per_hour": None if candidate is None else str(candidate.usd_per_hour),
            "assumes": "memory is mostly model weights (the KV cache does not shrink with them)",
        }
        title = (
            f"GPU {fig.gpu_index} ({fig.gpu_name or 'unnamed'}): memory is the constraint (peak "
            f"{peak / 1024:.1f} of {capacity / 1024:.1f} GiB, {100 * peak / capacity:.0f}%): a quantised model "
            f"(Q4 instead of FP16) needs about a quarter to a half of it"
        )
        if candidate is not None:
            title += f", and would fit a {candidate.name} ({candidate.memory_gib} GiB): {_usd(saving)} a month less"
        return Recommendation("quantise", fig.gpu_index, title, saving, evidence)
