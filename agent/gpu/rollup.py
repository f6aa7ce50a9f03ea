"""GPU samples -> per-minute rollups: busy, idle and unknown seconds, energy, peak memory.

How time is counted, per GPU (samples of different GPUs never mix):

* Each sample stands for the time until the next sample of the same GPU, capped at
  ``max_gap_s``. Beyond the cap is a gap: *unknown* time, neither busy nor idle, until the next
  sample.
* The covered time is busy when the sample's utilisation is at least ``idle_threshold_pct``,
  idle below it, and unknown when the utilisation could not be read (None).
* The last sample of a GPU (the GPU disappeared, or the trace ends) counts for at most the
  median interval between its samples (the last 255 intervals that were not gaps), and never
  more than ``max_gap_s``; nothing follows it. A GPU seen only once covers no time.
* Intervals are split exactly at minute boundaries (timestamps are kept as integer
  microseconds, so the parts of an interval add up to the whole).
* Energy is power x covered time (W x s / 3600 = Wh). Time whose power could not be read
  (None) contributes no energy: ``energy_wh`` is then a lower bound, never an estimate.

``RollupBuilder`` does the work incrementally for the live sampler; ``roll_up`` feeds it a whole
trace. Both give identical rollups for the same samples, whenever ``pop_complete`` is called.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from native.nvml import GpuSample

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
US_PER_S = 1_000_000
MINUTE_US = 60 * US_PER_S
_MEDIAN_WINDOW = 255


@dataclass(frozen=True)
class MinuteRollup:
    """What one GPU did during one UTC minute. Seconds, Wh and % are measurements (floats)."""

    gpu_index: int
    gpu_name: str
    minute: datetime  # aware UTC, at :00
    busy_s: float
    idle_s: float
    unknown_s: float  # gaps between samples, and sampled time whose utilisation was unreadable
    energy_wh: float  # over the time with a power reading only
    util_avg_pct: float | None  # time-weighted, over the time with a utilisation reading
    peak_mem_used_mib: float | None
    mem_total_mib: float | None
    samples: int  # samples taken during this minute

    @property
    def tracked_s(self) -> float:
        """All time of this minute that belongs to the GPU's series (busy + idle + unknown)."""
        return self.busy_s + self.idle_s + self.unknown_s


def to_us(timestamp: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    if timestamp.tzinfo is None:
        raise ValueError(f"GPU sample timestamps must be timezone-aware (UTC), got {timestamp.isoformat()}")
    return (timestamp - _EPOCH) // _US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


@dataclass
class _Minute:
    """Running totals of one GPU-minute (integer microseconds, so splits add up exactly)."""

    gpu_name: str
    busy_us: int = 0
    idle_us: int = 0
    unknown_us: int = 0
    energy_w_us: float = 0.0
    util_x_us: float = 0.0
    util_us: int = 0
    peak_mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    samples: int = 0

    def freeze(self, gpu_index: int, minute_us: int) -> MinuteRollup:
        return MinuteRollup(
            gpu_index=gpu_index,
            gpu_name=self.gpu_name,
            minute=from_us(minute_us),
            busy_s=self.busy_us / US_PER_S,
            idle_s=self.idle_us / US_PER_S,
            unknown_s=self.unknown_us / US_PER_S,
            energy_wh=self.energy_w_us / (3600 * US_PER_S),
            util_avg_pct=self.util_x_us / self.util_us if self.util_us else None,
            peak_mem_used_mib=self.peak_mem_used_mib,
            mem_total_mib=self.mem_total_mib,
            samples=self.samples,
        )


@dataclass
class _Series:
    """One GPU's state: its open minutes, the sample still waiting for its successor."""

    gpu_name: str
    last: GpuSample | None = None
    last_us: int = 0
    intervals_us: deque[int] = field(default_factory=lambda: deque(maxlen=_MEDIAN_WINDOW))
    minutes: dict[int, _Minute] = field(default_factory=dict)  # minute start (us) -> totals
    popped_until_us: int | None = None  # every minute before this was handed out

    def minute(self, minute_us: int) -> _Minute:
        totals = self.minutes.get(minute_us)
        if totals is None:
            if self.popped_until_us is not None and minute_us < self.popped_until_us:
                raise ValueError("a GPU sample arrived for a minute that was already handed out")
            totals = self.minutes[minute_us] = _Minute(self.gpu_name)
        return totals

    def cover(self, sample: GpuSample | None, start_us: int, end_us: int, idle_threshold_pct: float) -> None:
        """Charge [start, end) to ``sample`` (None: a gap), split at minute boundaries."""
        while start_us < end_us:
            minute_us = start_us - start_us % MINUTE_US
            part_end = min(end_us, minute_us + MINUTE_US)
            part_us = part_end - start_us
            totals = self.minute(minute_us)
            if sample is None or sample.util_pct is None:
                totals.unknown_us += part_us
            elif sample.util_pct >= idle_threshold_pct:
                totals.busy_us += part_us
            else:
                totals.idle_us += part_us
            if sample is not None:
                if sample.util_pct is not None:
                    totals.util_x_us += sample.util_pct * part_us
                    totals.util_us += part_us
                if sample.power_w is not None:
                    totals.energy_w_us += sample.power_w * part_us
                if sample.mem_used_mib is not None:
                    peak = totals.peak_mem_used_mib
                    totals.peak_mem_used_mib = sample.mem_used_mib if peak is None else max(peak, sample.mem_used_mib)
                if sample.mem_total_mib is not None:
                    totals.mem_total_mib = sample.mem_total_mib
            start_us = part_end

    def median_interval_us(self) -> int:
        return int(statistics.median(self.intervals_us)) if self.intervals_us else 0


class RollupBuilder:
    """Minute rollups built sample by sample, for the live sampler.

    ``add`` every sample as it is taken (per GPU in time order), call ``pop_complete(now)`` to
    collect the minutes that can no longer change, and ``finish()`` when sampling stops (it ends
    every GPU's series: each last sample counts for the median interval). The rollups are the
    same as ``roll_up`` gives for the same samples, however often ``pop_complete`` is called.
    """

    def __init__(self, idle_threshold_pct: float, max_gap_s: float) -> None:
        if max_gap_s <= 0:
            raise ValueError("max_gap_s must be positive")
        self.idle_threshold_pct = idle_threshold_pct
        self.max_gap_us = round(max_gap_s * US_PER_S)
        self._series: dict[int, _Series] = {}

    def add(self, sample: GpuSample) -> None:
        ts_us = to_us(sample.timestamp)
        series = self._series.get(sample.gpu_index)
        if series is None:
            series = self._series[sample.gpu_index] = _Series(sample.gpu_name)
        if series.last is not None:
            interval_us = ts_us - series.last_us
            if interval_us < 0:
                raise ValueError(
                    f"GPU {sample.gpu_index}: sample at {sample.timestamp.isoformat()} is older than the previous one"
                )
            covered_us = min(interval_us, self.max_gap_us)
            series.cover(series.last, series.last_us, series.last_us + covered_us, self.idle_threshold_pct)
            series.cover(None, series.last_us + covered_us, ts_us, self.idle_threshold_pct)
            if 0 < interval_us <= self.max_gap_us:
                series.intervals_us.append(interval_us)
        if sample.gpu_name:
            series.gpu_name = sample.gpu_name
        totals = series.minute(ts_us - ts_us % MINUTE_US)
        totals.samples += 1
        if sample.gpu_name:
            totals.gpu_name = sample.gpu_name
        series.last, series.last_us = sample, ts_us

    def pop_complete(self, now: datetime) -> list[MinuteRollup]:
        """Minutes that ended by ``now`` and that no later sample can change, oldest first.

        ``now`` is the time up to which samples have been added. A GPU's minute is complete
        once the GPU has a sample at or after its end; the minute of a GPU that stopped
        reporting stays open (the GPU may come back, turning its silence into a gap) until
        ``finish``.
        """
        now_us = to_us(now)
        out: list[tuple[int, int, MinuteRollup]] = []
        for gpu_index, series in self._series.items():
            frontier_us = min(now_us, series.last_us) if series.last is not None else now_us
            for minute_us in sorted(m for m in series.minutes if m + MINUTE_US <= frontier_us):
                out.append((minute_us, gpu_index, series.minutes.pop(minute_us).freeze(gpu_index, minute_us)))
            popped_until_us = frontier_us - frontier_us % MINUTE_US
            if series.popped_until_us is None or popped_until_us > series.popped_until_us:
                series.popped_until_us = popped_until_us
        return [rollup for _, _, rollup in sorted(out, key=lambda item: item[:2])]

    def finish(self) -> list[MinuteRollup]:
        """Sampling stopped: end every series and hand out every open minute, oldest first."""
        out: list[tuple[int, int, MinuteRollup]] = []
        for gpu_index, series in self._series.items():
            if series.last is not None:
                tail_us = min(series.median_interval_us(), self.max_gap_us)
                series.cover(series.last, series.last_us, series.last_us + tail_us, self.idle_threshold_pct)
            for minute_us in sorted(series.minutes):
                out.append((minute_us, gpu_index, series.minutes[minute_us].freeze(gpu_index, minute_us)))
        self._series.clear()
        return [rollup for _, _, rollup in sorted(out, key=lambda item: item[:2])]


def roll_up(samples: Iterable[GpuSample], idle_threshold_pct: float, max_gap_s: float) -> list[MinuteRollup]:
    """Minute rollups of a whole recorded trace, ordered by minute then GPU index.

    See the module docstring for how time is counted; in particular the last sample of each
    GPU counts for at most the median interval between that GPU's samples.
    """
    builder = RollupBuilder(idle_threshold_pct, max_gap_s)
    for sample in sorted(samples, key=lambda s: to_us(s.timestamp)):
        builder.add(sample)
    return builder.finish()
