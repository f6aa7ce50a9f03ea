"""The agent's GPU sampler: an APScheduler job that samples every GPU, rolls the samples up into
minutes, prices each finished minute and charges it (attribution.py), and writes both to the
ledger. The source is the real NVML or, for demos and tests, a recorded trace replayed through
the same interface. A tick never raises: a failing GPU or ledger write is logged and retried.
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.gpu.attribution import ActivityLog, attribute
from agent.gpu.cost import GpuPricing
from agent.gpu.rollup import MinuteRollup, RollupBuilder
from agent.ledger.gpu import GpuLedger
from native.nvml import GpuSample, GpuSource

log = logging.getLogger(__name__)


class GpuSampler:
    def __init__(
        self,
        source: GpuSource,
        ledger: GpuLedger,
        pricing: GpuPricing,
        activity: ActivityLog,
        *,
        idle_threshold_pct: float,
        max_gap_s: float,
        box_department: str,
        own_pid: int | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_minute: Callable[[int, float, float, int, int], None] | None = None,
    ) -> None:
        self._source = source
        self._ledger = ledger
        self._pricing = pricing
        self._activity = activity
        self._builder = RollupBuilder(idle_threshold_pct, max_gap_s)
        self._box_department = box_department
        self._own_pid = os.getpid() if own_pid is None else own_pid
        self._clock = clock
        # (gpu, busy s, idle s, busy micro-USD, idle micro-USD) of each minute written: the metrics
        self._on_minute = on_minute
        self._others: dict[tuple[int, datetime], set[str]] = {}  # (gpu, minute) -> other processes' owners
        self._latest: datetime | None = None
        self._lock = threading.Lock()
        self.minutes_written = 0

    def tick(self) -> int:
        """One sample of every GPU; writes the minutes that are complete. Returns how many."""
        try:
            with self._lock:
                samples = self._source.sample()
                for sample in samples:
                    self._builder.add(sample)
                    self._note_owners(sample)
                    if self._latest is None or sample.timestamp > self._latest:
                        self._latest = sample.timestamp
                # A replayed trace runs on its own clock; a live one is close to the wall clock.
                now = self._latest if samples and self._latest is not None else self._clock()
                return self._write(self._builder.pop_complete(now))
        except Exception:  # the sampler must never take the agent down; logged with traceback
            log.exception("GPU sampling failed; retrying at the next tick")
            return 0

    def flush(self) -> int:
        """Write every minute still open (at shutdown, or at the end of a replayed trace)."""
        with self._lock:
            return self._write(self._builder.finish())

    def _note_owners(self, sample: GpuSample) -> None:
        minute = sample.timestamp.replace(second=0, microsecond=0)
        owners = {_owner(p.pid) for p in sample.processes if p.pid != self._own_pid}
        owners.discard(None)
        if owners:
            self._others.setdefault((sample.gpu_index, minute), set()).update(o for o in owners if o)

    def _write(self, rollups: list[MinuteRollup]) -> int:
        for rollup in rollups:
            cost = self._pricing.minute_cost(rollup)
            busy, idle = _busy_and_idle_cost(rollup, cost.busy_micro_usd, cost.idle_micro_usd,
                                             cost.unknown_micro_usd, cost.energy_micro_usd)  # fmt: skip
            start = rollup.minute.timestamp()
            charges = attribute(
                rollup.minute,
                rollup.busy_s,
                rollup.idle_s,
                rollup.unknown_s,
                busy,
                idle,
                self._activity.during(start, start + 60),
                sorted(self._others.pop((rollup.gpu_index, rollup.minute), set())),
                self._box_department,
            )
            self._ledger.save_minute(rollup, charges)
            self.minutes_written += 1
            if self._on_minute is not None:
                self._on_minute(rollup.gpu_index, rollup.busy_s, rollup.idle_s, busy or 0, idle or 0)
        # Owners noted for minutes long gone (a GPU that vanished) are dropped.
        if self._latest is not None:
            horizon = self._latest - timedelta(minutes=10)
            for key in [k for k in self._others if k[1] < horizon]:
                del self._others[key]
        return len(rollups)


def _busy_and_idle_cost(
    rollup: MinuteRollup, busy: int | None, idle: int | None, unknown: int | None, energy: int | None
) -> tuple[int | None, int | None]:
    """Time cost by what the GPU did; energy (when priced) split by busy vs other seconds."""
    if busy is None or idle is None or unknown is None:
        return None, None
    idle_total = idle + unknown
    if energy:
        tracked = rollup.busy_s + rollup.idle_s + rollup.unknown_s
        busy_energy = round(energy * rollup.busy_s / tracked) if tracked > 0 else 0
        busy += busy_energy
        idle_total += energy - busy_energy
    return busy, idle_total


def _owner(pid: int) -> str | None:
    """The OS user a process runs as (Linux /proc); None when it cannot be known."""
    try:
        uid = Path(f"/proc/{pid}").stat().st_uid
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return None
