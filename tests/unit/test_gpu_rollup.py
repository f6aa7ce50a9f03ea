"""Minute rollups of GPU samples: busy, idle and unknown time, exact minute splits, energy."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.gpu.rollup import MinuteRollup, RollupBuilder, roll_up
from native.nvml import GpuSample

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
H200 = "NVIDIA H200"


def sample(
    at_s: float,
    util: float | None,
    *,
    gpu: int = 0,
    power_w: float | None = 100.0,
    mem_used: float | None = 1000.0,
    mem_total: float | None = 143771.0,
    name: str = H200,
) -> GpuSample:
    return GpuSample(T0 + timedelta(seconds=at_s), gpu, name, util, mem_used, mem_total, power_w)


def every(step_s: float, start_s: float, end_s: float, util: float | None, **kw: object) -> list[GpuSample]:
    """Samples at start, start + step, ... before end."""
    out = []
    t = start_s
    while t < end_s:
        out.append(sample(t, util, **kw))  # type: ignore[arg-type]
        t += step_s
    return out


def by_minute(rollups: list[MinuteRollup], gpu: int = 0) -> dict[int, MinuteRollup]:
    return {int((r.minute - T0).total_seconds() // 60): r for r in rollups if r.gpu_index == gpu}


def test_an_all_busy_hour_is_sixty_busy_minutes() -> None:
    rollups = roll_up(every(2, 0, 3600, 80.0, power_w=300.0), idle_threshold_pct=5, max_gap_s=30)
    assert len(rollups) == 60
    assert all((r.busy_s, r.idle_s, r.unknown_s) == (60.0, 0.0, 0.0) for r in rollups)
    assert all(r.samples == 30 and r.util_avg_pct == 80.0 for r in rollups)
    # the last sample counts for the median interval (2 s): the hour ends at 11:00 exactly
    assert rollups[-1].minute == T0 + timedelta(minutes=59)
    assert sum(r.energy_wh for r in rollups) == pytest.approx(300.0)  # 300 W for 1 h
    assert rollups[0].minute.tzinfo is not None and rollups[0].minute.second == 0


def test_utilisation_at_the_threshold_is_busy_below_is_idle_none_is_unknown() -> None:
    samples = [sample(0, 5.0), sample(10, 4.9), sample(20, None), sample(30, 5.0)]
    [r] = roll_up(samples, idle_threshold_pct=5, max_gap_s=30)
    # 0-10 busy, 10-20 idle, 20-30 unknown, the last sample 30-40 (median 10 s) busy
    assert (r.busy_s, r.idle_s, r.unknown_s) == (20.0, 10.0, 10.0)
    assert r.util_avg_pct == pytest.approx((5.0 * 10 + 4.9 * 10 + 5.0 * 10) / 30)  # over time with a reading
    assert r.energy_wh == pytest.approx(100.0 * 40 / 3600)  # unknown utilisation still draws power


def test_intervals_are_split_exactly_at_minute_boundaries() -> None:
    samples = [sample(50, 90.0), sample(70, 0.0), sample(90, 0.0)]
    minutes = by_minute(roll_up(samples, idle_threshold_pct=5, max_gap_s=30))
    assert (minutes[0].busy_s, minutes[0].idle_s) == (10.0, 0.0)  # 10:00:50 - 10:01:00
    assert (minutes[1].busy_s, minutes[1].idle_s) == (10.0, 40.0)  # then 10 s busy, 20 + 20 s idle
    assert (minutes[0].samples, minutes[1].samples) == (1, 2)
    assert minutes[1].energy_wh == pytest.approx(100.0 * 50 / 3600)


def test_microsecond_timestamps_split_without_loss() -> None:
    samples = [sample(59.999999, 50.0), sample(60.000001, 50.0), sample(60.000003, 50.0)]
    minutes = by_minute(roll_up(samples, idle_threshold_pct=5, max_gap_s=30))
    assert minutes[0].busy_s == pytest.approx(1e-6, abs=1e-12)
    assert minutes[1].busy_s == pytest.approx(5e-6, abs=1e-12)  # 1 + 2 us, and the last sample's median 2 us


def test_a_gap_beyond_max_gap_is_unknown_time_in_every_minute_it_spans() -> None:
    samples = every(2, 0, 60, 50.0) + every(2, 300, 360, 50.0)  # silent from 10:00:58 to 10:05:00
    minutes = by_minute(roll_up(samples, idle_threshold_pct=5, max_gap_s=30))
    assert sorted(minutes) == [0, 1, 2, 3, 4, 5]
    assert (minutes[0].busy_s, minutes[0].unknown_s) == (60.0, 0.0)
    # the sample at :58 stands for 30 s (max_gap_s), 2 s of them in minute 0; the rest is unknown
    assert (minutes[1].busy_s, minutes[1].unknown_s) == (28.0, 32.0)
    for m in (2, 3, 4):
        assert (minutes[m].busy_s, minutes[m].idle_s, minutes[m].unknown_s) == (0.0, 0.0, 60.0)
        assert minutes[m].samples == 0 and minutes[m].energy_wh == 0.0 and minutes[m].util_avg_pct is None
        assert minutes[m].peak_mem_used_mib is None and minutes[m].gpu_name == H200
    assert (minutes[5].busy_s, minutes[5].unknown_s) == (60.0, 0.0)


def test_a_gap_no_longer_than_max_gap_is_covered_by_the_sample_before_it() -> None:
    samples = [sample(0, 0.0), sample(30, 0.0), sample(32, 0.0)]
    [r] = roll_up(samples, idle_threshold_pct=5, max_gap_s=30)
    assert (r.idle_s, r.unknown_s) == (32.0 + 16.0, 0.0)  # the last one counts the median of (30, 2)


def test_a_gpu_that_disappears_ends_its_series() -> None:
    gpu0 = every(2, 0, 240, 60.0, gpu=0)
    gpu1 = every(2, 0, 92, 10.0, gpu=1, name="NVIDIA L4")  # last sample at 10:01:30
    rollups = roll_up(gpu1 + gpu0, idle_threshold_pct=5, max_gap_s=30)
    first, second = by_minute(rollups, 0), by_minute(rollups, 1)
    assert sorted(first) == [0, 1, 2, 3]
    assert sorted(second) == [0, 1]  # nothing after it vanished: no unknown time either
    assert (second[1].busy_s, second[1].unknown_s) == (32.0, 0.0)
    assert second[1].gpu_name == "NVIDIA L4"
    assert [r.gpu_index for r in rollups[:2]] == [0, 1]  # ordered by minute, then GPU


def test_a_gpu_seen_once_covers_no_time() -> None:
    [r] = roll_up([sample(5, 90.0)], idle_threshold_pct=5, max_gap_s=30)
    assert (r.busy_s, r.idle_s, r.unknown_s, r.samples) == (0.0, 0.0, 0.0, 1)


def test_power_none_contributes_no_energy_and_memory_peaks_are_kept() -> None:
    samples = [
        sample(0, 50.0, power_w=200.0, mem_used=1000.0),
        sample(10, 50.0, power_w=None, mem_used=5000.0),
        sample(20, 50.0, power_w=200.0, mem_used=None, mem_total=None),
        sample(30, 50.0, power_w=200.0, mem_used=2000.0),
    ]
    [r] = roll_up(samples, idle_threshold_pct=5, max_gap_s=30)
    assert r.busy_s == 40.0
    assert r.energy_wh == pytest.approx(200.0 * 30 / 3600)  # 10 s without a reading count nothing
    assert (r.peak_mem_used_mib, r.mem_total_mib) == (5000.0, 143771.0)


def test_samples_out_of_order_are_sorted_in_batch_and_refused_live() -> None:
    samples = every(2, 0, 120, 50.0)
    assert roll_up(list(reversed(samples)), 5, 30) == roll_up(samples, 5, 30)
    builder = RollupBuilder(5, 30)
    builder.add(samples[5])
    with pytest.raises(ValueError, match="older than the previous"):
        builder.add(samples[4])


def test_naive_timestamps_are_refused() -> None:
    naive = GpuSample(datetime(2026, 1, 5, 10, 0), 0, H200, 1.0, None, None, None)
    with pytest.raises(ValueError, match="timezone-aware"):
        roll_up([naive], 5, 30)


def test_pop_complete_hands_out_a_minute_once_every_gpu_is_past_it() -> None:
    builder = RollupBuilder(5, 30)
    for s in every(2, 0, 62, 50.0):  # up to 10:01:00
        builder.add(s)
    assert builder.pop_complete(T0 + timedelta(seconds=59)) == []  # before the minute's end
    [minute0] = builder.pop_complete(T0 + timedelta(seconds=61))
    assert (minute0.minute, minute0.busy_s) == (T0, 60.0)
    assert builder.pop_complete(T0 + timedelta(seconds=61)) == []  # handed out once
    # the GPU goes silent: its open minute may still become a gap, so it waits for finish()
    assert builder.pop_complete(T0 + timedelta(hours=1)) == []
    [minute1] = builder.finish()
    assert (minute1.busy_s, minute1.unknown_s) == (2.0, 0.0)


def test_a_gpu_that_comes_back_turns_its_silence_into_unknown_time() -> None:
    builder = RollupBuilder(5, 30)
    for s in every(2, 0, 62, 50.0) + every(2, 200, 262, 50.0):
        builder.add(s)
    popped = builder.pop_complete(T0 + timedelta(seconds=262))
    assert [r.minute.minute for r in popped] == [0, 1, 2, 3]
    assert (popped[1].busy_s, popped[1].unknown_s) == (30.0, 30.0)
    assert (popped[2].unknown_s, popped[3].busy_s, popped[3].unknown_s) == (60.0, 40.0, 20.0)


# -- live == batch ------------------------------------------------------------------------------

_gpu_stream = st.lists(
    st.tuples(
        st.sampled_from([0.5, 1.0, 2.0, 2.0, 2.0, 7.3, 29.0, 31.0, 95.0, 400.0]),  # seconds to the next
        st.one_of(st.none(), st.floats(0, 100)),
        st.one_of(st.none(), st.floats(0, 700)),
        st.one_of(st.none(), st.floats(0, 80_000)),
    ),
    min_size=1,
    max_size=60,
)


@st.composite
def sample_streams(draw: st.DrawFn) -> tuple[list[GpuSample], list[float]]:
    samples: list[GpuSample] = []
    for gpu in range(draw(st.integers(1, 3))):
        t = draw(st.floats(0, 90).map(lambda x: round(x, 3)))
        for step, util, power, mem in draw(_gpu_stream):
            samples.append(sample(t, util, gpu=gpu, power_w=power, mem_used=mem, mem_total=80_000.0))
            t = round(t + step, 6)
    samples.sort(key=lambda s: s.timestamp)
    # pop_complete is called after random samples (by their index in the stream)
    pops = draw(st.lists(st.floats(0, 1), max_size=20))
    return samples, pops


@settings(max_examples=200, deadline=None)
@given(sample_streams(), st.sampled_from([0.0, 5.0, 50.0]), st.sampled_from([1.0, 30.0, 120.0]))
def test_the_live_builder_gives_exactly_the_batch_rollups(
    stream: tuple[list[GpuSample], list[float]], threshold: float, max_gap_s: float
) -> None:
    samples, pops = stream
    pop_after = {int(p * len(samples)) for p in pops}
    builder = RollupBuilder(threshold, max_gap_s)
    live: list[MinuteRollup] = []
    for i, s in enumerate(samples):
        builder.add(s)
        if i in pop_after:
            # everything up to this sample's time has been added (samples at the same instant may follow)
            live.extend(builder.pop_complete(s.timestamp))
    live.extend(builder.finish())
    batch = roll_up(samples, threshold, max_gap_s)
    key = lambda r: (r.minute, r.gpu_index)  # noqa: E731
    assert sorted(live, key=key) == batch
    assert len({key(r) for r in live}) == len(live)  # no minute handed out twice


@settings(max_examples=100, deadline=None)
@given(sample_streams())
def test_time_is_conserved_per_gpu(stream: tuple[list[GpuSample], list[float]]) -> None:
    samples, _ = stream
    rollups = roll_up(samples, 5.0, 30.0)
    for gpu in {s.gpu_index for s in samples}:
        mine = [s for s in samples if s.gpu_index == gpu]
        steps = [(b.timestamp - a.timestamp).total_seconds() for a, b in pairwise(mine)]
        covered = [step for step in steps if 0 < step <= 30.0]
        tail = statistics.median(covered) if covered else 0.0  # the last sample's share
        expected = sum(steps) + tail
        got = sum(r.tracked_s for r in rollups if r.gpu_index == gpu)
        assert got == pytest.approx(expected, abs=1e-5)
        assert sum(r.samples for r in rollups if r.gpu_index == gpu) == len(mine)
        assert all(r.tracked_s <= 60.0 + 1e-9 for r in rollups)
