"""The GPU report and its right-sizing: recommendations exactly when the evidence supports them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.gpu.catalogue import GpuClass, current_class, load_catalogue
from agent.gpu.cost import GpuPricing
from agent.gpu.report import GpuReport, RightSizingRules, gpu_report, percentile
from agent.gpu.rollup import MinuteRollup

T0 = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
GIB = 1024.0
BIG = "NVIDIA BIG"

# A catalogue with round numbers, so the expected dollars can be worked out by hand.
CATALOGUE = [
    GpuClass(name="BIG", memory_gib=Decimal(80), usd_per_hour=Decimal("4.00"), memory_bandwidth_gbps=2000),
    GpuClass(name="LARGE", memory_gib=Decimal(48), usd_per_hour=Decimal("2.00"), memory_bandwidth_gbps=1000),
    GpuClass(name="MID", memory_gib=Decimal(24), usd_per_hour=Decimal("1.00"), memory_bandwidth_gbps=1000),
    GpuClass(name="SMALL", memory_gib=Decimal(8), usd_per_hour=Decimal("0.25"), memory_bandwidth_gbps=250),
    GpuClass(name="DESK", memory_gib=Decimal(24), usd_per_hour=Decimal("0.05"), kind="workstation"),
]
PRICING = GpuPricing({"BIG": Decimal("4.00")})


def minute(
    i: int,
    *,
    busy_s: float = 0.0,
    idle_s: float = 0.0,
    unknown_s: float = 0.0,
    util: float | None = None,
    peak_gib: float | None = 10.0,
    gpu: int = 0,
    name: str = BIG,
    total_gib: float = 80.0,
) -> MinuteRollup:
    if util is None and busy_s + idle_s:
        util = 50.0 if busy_s else 1.0
    return MinuteRollup(
        gpu, name, T0 + timedelta(minutes=i), busy_s, idle_s, unknown_s, 5.0, util,
        None if peak_gib is None else peak_gib * GIB, total_gib * GIB, 30,
    )  # fmt: skip


def day(util_pct: float, peak_gib: float, *, hours: int = 24) -> list[MinuteRollup]:
    """A GPU busy every minute at ``util_pct``."""
    return [minute(i, busy_s=60.0, util=util_pct, peak_gib=peak_gib) for i in range(hours * 60)]


def report(rollups: list[MinuteRollup], period_days: Decimal = Decimal(1), **kw: object) -> GpuReport:
    return gpu_report(rollups, PRICING, CATALOGUE, period_days=period_days, **kw)  # type: ignore[arg-type]


def kinds(r: GpuReport) -> list[str]:
    return [rec.kind for rec in r.recommendations]


# -- figures ----------------------------------------------------------------------------------


def test_figures_of_a_known_day() -> None:
    # 6 h busy at 70%, 18 h idle at 1%, at $4.00/h: $24 busy, $72 idle
    rollups = [minute(i, busy_s=60.0, util=70.0) for i in range(360)]
    rollups += [minute(i, idle_s=60.0, util=1.0) for i in range(360, 1440)]
    [g] = report(rollups).gpus
    assert (g.gpu_index, g.gpu_name, g.minutes) == (0, BIG, 1440)
    assert (g.busy_hours, g.idle_hours, g.unknown_hours, g.hours_covered) == (6.0, 18.0, 0.0, 24.0)
    assert (g.busy_cost_micro_usd, g.idle_cost_micro_usd, g.unknown_cost_micro_usd) == (24_000_000, 72_000_000, 0)
    assert g.energy_cost_micro_usd is None and g.total_cost_micro_usd == 96_000_000
    assert g.cost_per_month_micro_usd == 96_000_000 * 30.4375  # a day, extrapolated to 30.4375 days
    assert (g.util_p50_pct, g.util_p90_pct, g.util_p99_pct) == (1.0, 70.0, 70.0)
    assert g.energy_kwh == pytest.approx(1440 * 5.0 / 1000)
    assert (g.peak_mem_used_mib, g.mem_total_mib, g.peak_mem_pct) == (10 * GIB, 80 * GIB, 12.5)
    assert (g.usd_per_hour, g.price_key) == (Decimal("4.00"), "BIG")


def test_energy_is_priced_when_a_kwh_price_is_set() -> None:
    rollups = day(70.0, 10.0, hours=1)  # 60 minutes x 5 Wh = 0.3 kWh, $0.09 at $0.30
    pricing = GpuPricing({"BIG": Decimal("4.00")}, usd_per_kwh=Decimal("0.30"))
    [g] = gpu_report(rollups, pricing, CATALOGUE, period_days=Decimal(1) / 24).gpus
    assert (g.energy_cost_micro_usd, g.total_cost_micro_usd) == (90_000, 4_090_000)


def test_an_unknown_gpu_price_stays_unknown_in_the_report() -> None:
    rollups = [minute(i, busy_s=60.0, util=70.0, name="Mystery GPU") for i in range(120)]
    [g] = report(rollups).gpus
    assert g.usd_per_hour is None and g.price_key is None
    assert (g.busy_cost_micro_usd, g.total_cost_micro_usd, g.cost_per_month_micro_usd) == (None, None, None)


def test_percentiles_are_nearest_rank_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (50.0, 90.0, 99.0)
    assert percentile([3.0], 99) == 3.0 and percentile([], 50) is None
    [g] = report([minute(0, unknown_s=60.0, peak_gib=None)]).gpus
    assert (g.util_p50_pct, g.peak_mem_used_mib, g.peak_mem_pct) == (None, None, None)


def test_the_report_is_json() -> None:
    rollups = day(20.0, 10.0) + [minute(i, gpu=1, name="NVIDIA H200", idle_s=60.0) for i in range(60)]
    data = json.loads(json.dumps(report(rollups).to_json()))
    assert data["period_days"] == "1"
    assert [g["gpu_index"] for g in data["gpus"]] == [0, 1]
    assert data["gpus"][0]["usd_per_hour"] == "4.00" and data["gpus"][0]["first_minute"] == T0.isoformat()
    assert data["recommendations"][0]["kind"] == "smaller_gpu"
    assert data["recommendations"][0]["evidence"]["candidate"] == "MID"


# -- smaller_gpu --------------------------------------------------------------------------------


def test_a_cheaper_class_that_holds_memory_and_load_is_recommended_with_its_saving() -> None:
    # p90 20%, peak 10 GiB (+20% = 12 GiB): MID (24 GiB, $1.00, half the bandwidth: p90 -> 40%) fits;
    # SMALL (8 GiB) does not; DESK is a workstation card, not a cloud replacement.
    [rec] = [r for r in report(day(20.0, 10.0)).recommendations if r.kind == "smaller_gpu"]
    # up 24 h a day: ($4.00 - $1.00) x 24 h x 30.4375 days = $2,191.50 a month
    assert rec.monthly_saving_micro_usd == 2_191_500_000
    assert rec.evidence["candidate"] == "MID"
    assert rec.evidence["util_p90_pct"] == 20.0 and rec.evidence["projected_util_p90_pct"] == 40.0
    assert rec.evidence["memory_needed_mib"] == 12 * GIB
    assert rec.evidence["price_source"] == "configured [gpu] usd_per_hour 'BIG'"
    assert "MID" in rec.title and "$2,191.50" in rec.title


def test_the_saving_counts_only_the_hours_the_gpu_is_up() -> None:
    # 12 h of data over a period of 2 days: up 6 h a day -> ($3.00) x 6 x 30.4375 = $547.875
    [rec] = [r for r in report(day(20.0, 10.0, hours=12), Decimal(2)).recommendations if r.kind == "smaller_gpu"]
    assert rec.monthly_saving_micro_usd == 547_875_000


def test_no_smaller_gpu_when_p90_utilisation_is_at_the_bound() -> None:
    assert "smaller_gpu" not in kinds(report(day(60.0, 10.0)))
    assert "smaller_gpu" in kinds(
        report(day(60.0, 10.0), rules=RightSizingRules(p90_util_below_pct=61, max_projected_util_pct=120))
    )


def test_no_smaller_gpu_when_the_smaller_card_could_not_keep_up() -> None:
    # p90 45% -> 90% on half the bandwidth: over the 80% bound; LARGE has the same bandwidth
    assert "smaller_gpu" not in kinds(report(day(45.0, 10.0)))


def test_never_a_class_with_less_memory_than_peak_plus_headroom() -> None:
    # peak 20.1 GiB + 20% = 24.12 GiB > MID's 24: LARGE (48 GiB, $2.00) instead
    [rec] = [r for r in report(day(20.0, 20.1)).recommendations if r.kind == "smaller_gpu"]
    assert rec.evidence["candidate"] == "LARGE"
    # peak 45 GiB + 20% = 54 GiB: nothing cheaper holds it
    assert "smaller_gpu" not in kinds(report(day(20.0, 45.0)))


@settings(max_examples=200, deadline=None)
@given(util=st.floats(0, 100), peak_gib=st.floats(0.1, 80), headroom=st.floats(0, 1))
def test_any_recommended_class_holds_peak_memory_plus_headroom(util: float, peak_gib: float, headroom: float) -> None:
    rules = RightSizingRules(memory_headroom=headroom)
    rollups = [minute(i, busy_s=60.0, util=util, peak_gib=peak_gib) for i in range(90)]
    for rec in report(rollups, Decimal(1) / 16, rules=rules).recommendations:
        if rec.kind == "smaller_gpu":
            [cls] = [c for c in CATALOGUE if c.name == rec.evidence["candidate"]]
            assert cls.memory_mib >= peak_gib * GIB * (1 + headroom)
            assert util < rules.p90_util_below_pct
            assert rec.monthly_saving_micro_usd is not None and rec.monthly_saving_micro_usd > 0


def test_too_little_data_supports_no_change() -> None:
    assert report(day(5.0, 10.0, hours=1)[:59]).recommendations == ()


def test_without_a_configured_price_the_catalogue_price_is_used_and_said() -> None:
    r = gpu_report(day(20.0, 10.0), GpuPricing({}), CATALOGUE, period_days=Decimal(1))
    [rec] = [x for x in r.recommendations if x.kind == "smaller_gpu"]
    assert rec.evidence["price_source"] == "catalogue class 'BIG'"
    assert rec.monthly_saving_micro_usd == 2_191_500_000
    assert r.gpus[0].total_cost_micro_usd is None  # the cost itself stays unknown


def test_a_gpu_neither_priced_nor_in_the_catalogue_gets_no_smaller_gpu() -> None:
    rollups = [minute(i, busy_s=60.0, util=10.0, name="Mystery") for i in range(1440)]
    assert "smaller_gpu" not in kinds(gpu_report(rollups, GpuPricing({}), CATALOGUE, period_days=Decimal(1)))


# -- unload_idle --------------------------------------------------------------------------------


def idle_box(stretch_min: int, stretches: int, busy_min: int) -> list[MinuteRollup]:
    """busy_min busy minutes, then ``stretches`` x (stretch_min idle minutes + 1 busy minute)."""
    out = [minute(i, busy_s=60.0, util=90.0) for i in range(busy_min)]
    i = busy_min
    for _ in range(stretches):
        out += [minute(j, idle_s=60.0) for j in range(i, i + stretch_min)]
        out.append(minute(i + stretch_min, busy_s=60.0, util=90.0))
        i += stretch_min + 1
    return out


def test_idle_stretches_longer_than_n_minutes_recommend_unloading_with_their_idle_cost() -> None:
    rollups = idle_box(30, 6, 54)  # 4 h: 1 h busy, 3 h idle in six 30-minute stretches
    [rec] = [r for r in report(rollups, Decimal(4) / 24).recommendations if r.kind == "unload_idle"]
    # beyond the first 15 minutes of each stretch: 6 x 15 min = 1.5 h x $4.00 = $6.00 in 4 hours,
    # x 30.4375 days / (4/24 day) = $1,095.75 a month
    assert rec.monthly_saving_micro_usd == 1_095_750_000
    assert rec.evidence["idle_stretches_over_n"] == 6
    assert rec.evidence["longest_idle_stretch_min"] == 30
    assert rec.evidence["idle_hours_after_n_min"] == 1.5
    assert rec.evidence["idle_share_pct"] == 75.0


def test_no_unloading_when_idle_stretches_are_short() -> None:
    rollups = idle_box(15, 12, 48)  # 75% idle, but never more than 15 minutes at a time
    assert "unload_idle" not in kinds(report(rollups, Decimal(4) / 24))


def test_no_unloading_when_idle_is_a_small_share() -> None:
    rollups = idle_box(30, 2, 180)  # 1 h idle of 4 h
    assert "unload_idle" not in kinds(report(rollups, Decimal(4) / 24))


def test_gaps_and_missing_minutes_break_idle_stretches() -> None:
    rollups = idle_box(31, 6, 54)  # stretches of 31 idle minutes, starting at minute 54 + 32 k
    assert "unload_idle" in kinds(report(rollups, Decimal(4) / 24))
    middles = {54 + 32 * k + 15 for k in range(6)}  # a minute in the middle leaves 15 + 15 minutes

    def index(r: MinuteRollup) -> int:
        return int((r.minute - T0).total_seconds() // 60)

    gapped = [minute(index(r), unknown_s=60.0) if index(r) in middles else r for r in rollups]
    assert "unload_idle" not in kinds(report(gapped, Decimal(4) / 24))
    missing = [r for r in rollups if index(r) not in middles]
    assert "unload_idle" not in kinds(report(missing, Decimal(4) / 24))


# -- quantise -----------------------------------------------------------------------------------


def test_memory_above_90_percent_recommends_a_quantised_model() -> None:
    # peak 76 GiB of 80 (95%): Q4 needs 19-38 GiB; 38 GiB + 20% = 45.6 GiB fits LARGE (48 GiB, $2.00)
    [rec] = [r for r in report(day(95.0, 76.0)).recommendations if r.kind == "quantise"]
    assert rec.evidence["peak_mem_pct"] == 95.0
    assert rec.evidence["quantised_mem_mib_range"] == [19 * GIB, 38 * GIB]
    assert rec.evidence["candidate"] == "LARGE"
    assert rec.monthly_saving_micro_usd == 1_461_000_000  # $2.00 x 24 h x 30.4375
    assert "smaller_gpu" not in kinds(report(day(95.0, 76.0)))  # busy: the load needs the big card


def test_quantise_without_a_smaller_class_claims_no_saving() -> None:
    catalogue = [c for c in CATALOGUE if c.name in ("BIG", "MID")]
    r = gpu_report(day(95.0, 76.0), PRICING, catalogue, period_days=Decimal(1))
    [rec] = [x for x in r.recommendations if x.kind == "quantise"]
    assert rec.monthly_saving_micro_usd is None and rec.evidence["candidate"] is None


def test_no_quantise_at_or_below_90_percent() -> None:
    assert "quantise" not in kinds(report(day(95.0, 72.0)))  # exactly 90%


def test_a_busy_gpu_with_room_to_spare_gets_no_recommendation() -> None:
    assert report(day(85.0, 40.0)).recommendations == ()


# -- the catalogue ------------------------------------------------------------------------------


def test_the_bundled_catalogue_loads_and_names_each_class_once() -> None:
    classes = load_catalogue()
    names = {c.name for c in classes}
    assert {"T4", "L4", "A10G", "L40S", "A100 40GB", "A100 80GB", "H100 80GB", "H200", "RTX 4090"} <= names
    assert all(c.usd_per_hour > 0 and c.memory_gib > 0 for c in classes)
    assert current_class(classes, "NVIDIA H200", 143771.0).name == "H200"  # type: ignore[union-attr]
    assert current_class(classes, "NVIDIA A100-SXM4-80GB", 81920.0).name == "A100 80GB"  # type: ignore[union-attr]
    assert current_class(classes, "NVIDIA A100-PCIE-40GB", 40960.0).name == "A100 40GB"  # type: ignore[union-attr]
    assert current_class(classes, "NVIDIA L40S", 46068.0).name == "L40S"  # type: ignore[union-attr]
    assert current_class(classes, "NVIDIA GeForce RTX 4090", 24564.0).kind == "workstation"  # type: ignore[union-attr]
    assert current_class(classes, "Matrox G200", 16.0) is None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "classes.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = '[[gpu]]\nname = "X1"\nmemory_gib = 16\nusd_per_hour = "0.50"\n'


def test_a_custom_catalogue_loads_and_match_defaults_to_the_name(tmp_path: Path) -> None:
    [cls] = load_catalogue(write(tmp_path, GOOD))
    assert (cls.name, cls.match, cls.memory_gib, cls.usd_per_hour) == ("X1", "X1", 16, Decimal("0.50"))
    assert cls.kind == "cloud" and cls.memory_bandwidth_gbps is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + '[[gpu]]\nname = "X2"\nmemory_gib = 16\nusd_per_hour = "-1"\n', "entry 2 ('X2'): usd_per_hour"),
        (GOOD + '[[gpu]]\nname = "X3"\nmemory_gib = 0\nusd_per_hour = "1"\n', "entry 2 ('X3'): memory_gib"),
        (GOOD + '[[gpu]]\nname = "X4"\nmemory_gib = 8\nusd_per_hour = "1"\nvram = 8\n', "entry 2 ('X4'): vram"),
        (GOOD + '[[gpu]]\nmemory_gib = 8\nusd_per_hour = "1"\n', "entry 2: name"),
        (GOOD + '[[gpu]]\nname = "X5"\nmemory_gib = 8\nusd_per_hour = "1"\nkind = "rental"\n', "entry 2 ('X5'): kind"),
        (GOOD + GOOD.replace("0.50", "0.60"), "names must be unique, repeated: X1"),
        ("[[gpu]]\nname = \n", "not valid TOML"),
        ("", "gpu: Field required"),
        ("[[classes]]\n", "classes"),
    ],
)
def test_catalogue_errors_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_catalogue(write(tmp_path, text))
    assert message in err.value.message
    assert str(tmp_path / "classes.toml") in err.value.message


def test_a_missing_catalogue_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_catalogue(tmp_path / "nope.toml")
