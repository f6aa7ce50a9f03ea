"""GPU cost: the hourly price covers busy, idle and unknown time alike; energy on top; exact cents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.gpu.cost import GpuPricing, name_matches
from agent.gpu.rollup import MinuteRollup, roll_up
from agent.settings import GpuSection
from native.nvml import GpuSample

T0 = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
H200 = "NVIDIA H200"


def trace(
    segments: list[tuple[float, float | None]], *, step_s: float = 10.0, power_w: float = 300.0
) -> list[GpuSample]:
    """Consecutive segments of (hours, utilisation), sampled every step_s seconds."""
    out, t = [], 0.0
    for hours, util in segments:
        end = t + hours * 3600
        while t < end:
            out.append(GpuSample(T0 + timedelta(seconds=t), 0, H200, util, 1000.0, 143771.0, power_w))
            t += step_s
    return out


def rollups(segments: list[tuple[float, float | None]], **kw: float) -> list[MinuteRollup]:
    return roll_up(trace(segments, **kw), idle_threshold_pct=5, max_gap_s=30)


def test_an_all_idle_hour_at_2_50_is_2_500_000_micro_usd_of_idle() -> None:
    cost = GpuPricing({"H200": Decimal("2.50")}).total_cost(rollups([(1, 0.0)]))
    assert (cost.busy_micro_usd, cost.idle_micro_usd, cost.unknown_micro_usd) == (0, 2_500_000, 0)
    assert cost.energy_micro_usd is None  # no energy price configured
    assert cost.time_micro_usd == 2_500_000


def test_an_all_busy_hour_at_2_50_is_2_500_000_micro_usd_of_busy() -> None:
    cost = GpuPricing({"H200": Decimal("2.50")}).total_cost(rollups([(1, 97.0)]))
    assert (cost.busy_micro_usd, cost.idle_micro_usd, cost.unknown_micro_usd) == (2_500_000, 0, 0)


def test_a_day_of_6_hours_busy_and_18_idle_at_1_20() -> None:
    day = rollups([(6, 70.0), (18, 1.0)])
    cost = GpuPricing({"h200": Decimal("1.20")}).total_cost(day)
    # 6 h x $1.20 = $7.20 busy; 18 h x $1.20 = $21.60 idle; $28.80 for the day
    assert (cost.busy_micro_usd, cost.idle_micro_usd) == (7_200_000, 21_600_000)
    assert cost.time_micro_usd == 28_800_000
    # each minute is $0.02: the per-minute costs add up exactly here
    per_minute = [GpuPricing({"h200": Decimal("1.20")}).minute_cost(r) for r in day]
    assert {c.time_micro_usd for c in per_minute} == {20_000}
    assert sum(c.busy_micro_usd or 0 for c in per_minute) == 7_200_000


def test_energy_at_a_known_kwh_price_is_added_on_top() -> None:
    # 300 W for one hour = 0.3 kWh; at $0.30/kWh that is $0.09
    cost = GpuPricing({"H200": Decimal("2.50")}, usd_per_kwh=Decimal("0.30")).total_cost(rollups([(1, 50.0)]))
    assert cost.energy_micro_usd == 90_000
    assert cost.time_micro_usd == 2_500_000


def test_gaps_cost_the_hourly_price_as_unknown() -> None:
    samples = trace([(0.5, 80.0)]) + [
        GpuSample(T0 + timedelta(hours=1, seconds=s), 0, H200, 80.0, None, None, None) for s in range(0, 1800, 10)
    ]
    span = roll_up(samples, idle_threshold_pct=5, max_gap_s=30)
    cost = GpuPricing({"H200": Decimal("3.60")}).total_cost(span)
    # busy: 1790 s, the last pre-gap sample's 30 s (max_gap_s), then 1800 s after the gap = 3620 s
    # ($3.62); unknown: from 00:30:20 to 01:00:00 = 1780 s ($1.78)
    assert cost.busy_micro_usd == 3_620_000
    assert cost.unknown_micro_usd == 1_780_000
    assert cost.idle_micro_usd == 0


def test_an_unknown_gpu_has_an_unknown_cost_never_zero() -> None:
    hour = rollups([(1, 50.0)])
    cost = GpuPricing({"A100": Decimal("3.00")}, usd_per_kwh=Decimal("0.30")).total_cost(hour)
    assert (cost.busy_micro_usd, cost.idle_micro_usd, cost.unknown_micro_usd, cost.time_micro_usd) == (
        None,
        None,
        None,
        None,
    )
    assert cost.energy_micro_usd == 90_000  # energy is measured, and priced on its own
    assert GpuPricing({}).minute_cost(hour[0]).busy_micro_usd is None
    with_default = GpuPricing({"A100": Decimal("3.00"), "default": Decimal("1.00")})
    assert with_default.total_cost(hour).busy_micro_usd == 1_000_000
    assert with_default.price_key(H200) == "default"


@pytest.mark.parametrize(
    ("key", "gpu_name", "matches"),
    [
        ("H200", "NVIDIA H200", True),
        ("h200", "NVIDIA H200 NVL", True),
        ("A100", "NVIDIA A100-SXM4-80GB", True),
        ("RTX 4090", "NVIDIA GeForce RTX 4090", True),
        ("L4", "NVIDIA L4", True),
        ("L4", "NVIDIA L40S", False),  # word boundaries: not a mere substring
        ("A10", "NVIDIA A100-PCIE-40GB", False),
        ("H200", "", False),
        ("", "NVIDIA H200", False),
    ],
)
def test_gpu_names_match_case_insensitively_at_word_boundaries(key: str, gpu_name: str, matches: bool) -> None:
    assert name_matches(key, gpu_name) is matches


def test_the_longest_matching_key_prices_the_gpu() -> None:
    pricing = GpuPricing({"A100": Decimal("3.00"), "A100-SXM4-80GB": Decimal("4.00"), "default": Decimal("1")})
    assert pricing.hourly_usd("NVIDIA A100-SXM4-80GB") == Decimal("4.00")
    assert pricing.hourly_usd("NVIDIA A100-PCIE-40GB") == Decimal("3.00")
    assert pricing.hourly_usd("Tesla T4") == Decimal("1")


def test_prices_must_be_non_negative_decimals() -> None:
    with pytest.raises(ValueError, match="H200"):
        GpuPricing({"H200": Decimal("-1")})
    with pytest.raises(ValueError, match="usd_per_kwh"):
        GpuPricing({}, usd_per_kwh=Decimal("-0.1"))


def test_pricing_from_the_gpu_settings() -> None:
    section = GpuSection(usd_per_hour={"H200": Decimal("3.50")}, usd_per_kwh=Decimal("0.25"))
    pricing = GpuPricing.from_settings(section)
    assert pricing.hourly_usd(H200) == Decimal("3.50")
    assert pricing.usd_per_kwh == Decimal("0.25")


_seconds = st.integers(0, 60_000_000).map(lambda us: us / 1_000_000)


@st.composite
def minutes(draw: st.DrawFn) -> MinuteRollup:
    busy = draw(_seconds)
    idle = draw(st.integers(0, round((60 - busy) * 1e6)).map(lambda us: us / 1e6))
    unknown = draw(st.integers(0, round((60 - busy - idle) * 1e6)).map(lambda us: us / 1e6))
    return MinuteRollup(0, H200, T0, busy, idle, unknown, draw(st.floats(0, 20)), None, None, None, 30)


def _tracked(r: MinuteRollup) -> Decimal:
    return Decimal(repr(r.busy_s)) + Decimal(repr(r.idle_s)) + Decimal(repr(r.unknown_s))


_prices = st.decimals(min_value=0, max_value=100, places=4)


@settings(max_examples=300)
@given(minutes(), _prices)
def test_the_parts_of_a_minute_add_up_to_its_rounded_total(rollup: MinuteRollup, price: Decimal) -> None:
    pricing = GpuPricing({"H200": price})
    cost, exact = pricing.minute_cost(rollup), pricing.exact_cost(rollup)
    assert cost.busy_micro_usd is not None and cost.idle_micro_usd is not None and cost.unknown_micro_usd is not None
    exact_total = price * _tracked(rollup) / 3600 * 1_000_000
    assert abs(cost.time_micro_usd - exact_total) <= Decimal("0.5")  # type: ignore[operator]
    assert exact.busy_usd is not None and exact.idle_usd is not None and exact.unknown_usd is not None
    for part, exact_usd in (
        (cost.busy_micro_usd, exact.busy_usd),
        (cost.idle_micro_usd, exact.idle_usd),
        (cost.unknown_micro_usd, exact.unknown_usd),
    ):
        assert part >= 0
        assert abs(part - exact_usd * 1_000_000) <= 1


@settings(max_examples=100)
@given(st.lists(minutes(), min_size=1, max_size=200), _prices, st.one_of(st.none(), _prices))
def test_per_minute_costs_sum_to_the_cost_of_the_total_time_within_a_micro_usd_a_minute(
    rollups: list[MinuteRollup], price: Decimal, kwh: Decimal | None
) -> None:
    pricing = GpuPricing({"H200": price}, usd_per_kwh=kwh)
    per_minute = [pricing.minute_cost(r) for r in rollups]
    total = pricing.total_cost(rollups)
    n = len(rollups)
    for field in ("busy_micro_usd", "idle_micro_usd", "unknown_micro_usd", "time_micro_usd", "energy_micro_usd"):
        summed = [getattr(c, field) for c in per_minute]
        whole = getattr(total, field)
        if field == "energy_micro_usd" and kwh is None:
            assert whole is None and set(summed) == {None}
            continue
        assert abs(sum(summed) - whole) <= n, field
    # and the total is the exact cost of the total time, rounded once
    seconds = sum(_tracked(r) for r in rollups)
    assert abs(Decimal(total.time_micro_usd or 0) - price * seconds / 3600 * 1_000_000) <= Decimal("0.5")
