"""What GPU time costs: an hourly price per GPU model (busy, idle or unknown alike) plus energy.

The hourly price covers all of the GPU's tracked time whatever it does: the busy share is busy
cost, the idle share idle cost, and gaps (or unreadable utilisation) unknown cost, which
reports charge to idle but show apart. Energy is priced on top when a USD per kWh price is set.
An unknown GPU without a ``default`` price has an unknown cost (None), never $0.

Amounts are exact Decimals until the end; each is rounded half-up to micro-USD once. Per-minute
costs are rounded cumulatively (busy, busy + idle, busy + idle + unknown), so the parts of a
minute add up to its rounded total and no part is off by more than 1 micro-USD.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Protocol

from agent.gpu.rollup import MinuteRollup
from agent.money import usd_to_micros

DEFAULT_KEY = "default"
_S_PER_HOUR = Decimal(3600)
_WH_PER_KWH = Decimal(1000)


def name_matches(pattern: str, gpu_name: str) -> bool:
    """Case-insensitive substring match at word boundaries: "H200" matches "NVIDIA H200",
    "A100" matches "NVIDIA A100-SXM4-80GB", but "L4" does not match "NVIDIA L40S"."""
    if not pattern.strip():
        return False
    return re.search(rf"(?<![a-z0-9]){re.escape(pattern.strip().lower())}(?![a-z0-9])", gpu_name.lower()) is not None


class GpuPriceSettings(Protocol):
    """The settings GpuPricing is built from (agent.settings.GpuSection)."""

    @property
    def usd_per_hour(self) -> Mapping[str, Decimal]: ...

    @property
    def usd_per_kwh(self) -> Decimal | None: ...


@dataclass(frozen=True)
class ExactCost:
    """Unrounded USD; None where the price is unknown."""

    busy_usd: Decimal | None
    idle_usd: Decimal | None
    unknown_usd: Decimal | None
    energy_usd: Decimal | None

    def __add__(self, other: ExactCost) -> ExactCost:
        return ExactCost(
            _add(self.busy_usd, other.busy_usd),
            _add(self.idle_usd, other.idle_usd),
            _add(self.unknown_usd, other.unknown_usd),
            _add(self.energy_usd, other.energy_usd),
        )

    def rounded(self) -> GpuCost:
        """To micro-USD, cumulatively: busy, busy + idle and the total are each rounded once."""
        if self.busy_usd is None or self.idle_usd is None or self.unknown_usd is None:
            busy = idle = unknown = None
        else:
            busy = usd_to_micros(self.busy_usd)
            busy_idle = usd_to_micros(self.busy_usd + self.idle_usd)
            idle = busy_idle - busy
            unknown = usd_to_micros(self.busy_usd + self.idle_usd + self.unknown_usd) - busy_idle
        energy = None if self.energy_usd is None else usd_to_micros(self.energy_usd)
        return GpuCost(busy, idle, energy, unknown)


def _add(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    return None if a is None or b is None else a + b


@dataclass(frozen=True)
class GpuCost:
    """Cost of GPU time in micro-USD; None where the price is unknown (never a silent 0)."""

    busy_micro_usd: int | None
    idle_micro_usd: int | None
    energy_micro_usd: int | None  # None: no energy price configured
    unknown_micro_usd: int | None  # gaps: charged to idle in reports, shown apart

    @property
    def time_micro_usd(self) -> int | None:
        """Busy + idle + unknown: what the hourly price charged, energy aside."""
        if self.busy_micro_usd is None or self.idle_micro_usd is None or self.unknown_micro_usd is None:
            return None
        return self.busy_micro_usd + self.idle_micro_usd + self.unknown_micro_usd


MinuteCost = GpuCost  # the cost of one MinuteRollup


@dataclass(frozen=True)
class GpuPricing:
    """USD per hour by GPU model name (plus an optional ``default``) and USD per kWh."""

    usd_per_hour: Mapping[str, Decimal] = field(default_factory=dict)
    usd_per_kwh: Decimal | None = None

    def __post_init__(self) -> None:
        for key, price in self.usd_per_hour.items():
            if not key.strip():
                raise ValueError("a GPU price needs a model name")
            if not isinstance(price, Decimal) or not price.is_finite() or price < 0:
                raise ValueError(f"GPU price for {key!r} must be a Decimal >= 0, got {price!r}")
        if self.usd_per_kwh is not None and (not self.usd_per_kwh.is_finite() or self.usd_per_kwh < 0):
            raise ValueError(f"usd_per_kwh must be >= 0, got {self.usd_per_kwh}")
        object.__setattr__(self, "usd_per_hour", MappingProxyType(dict(self.usd_per_hour)))

    @classmethod
    def from_settings(cls, settings: GpuPriceSettings) -> GpuPricing:
        return cls(dict(settings.usd_per_hour), settings.usd_per_kwh)

    def price_key(self, gpu_name: str) -> str | None:
        """The configured key that prices this GPU: the longest model name that matches it,
        else ``default``; None when neither exists."""
        keys = [k for k in self.usd_per_hour if k.lower() != DEFAULT_KEY and name_matches(k, gpu_name)]
        if keys:
            return max(keys, key=lambda k: (len(k.strip()), k))
        return next((k for k in self.usd_per_hour if k.lower() == DEFAULT_KEY), None)

    def hourly_usd(self, gpu_name: str) -> Decimal | None:
        key = self.price_key(gpu_name)
        return None if key is None else self.usd_per_hour[key]

    def exact_cost(self, rollup: MinuteRollup) -> ExactCost:
        hourly = self.hourly_usd(rollup.gpu_name)
        energy = None
        if self.usd_per_kwh is not None:
            energy = self.usd_per_kwh * _decimal(rollup.energy_wh) / _WH_PER_KWH
        if hourly is None:
            return ExactCost(None, None, None, energy)
        return ExactCost(
            hourly * _decimal(rollup.busy_s) / _S_PER_HOUR,
            hourly * _decimal(rollup.idle_s) / _S_PER_HOUR,
            hourly * _decimal(rollup.unknown_s) / _S_PER_HOUR,
            energy,
        )

    def minute_cost(self, rollup: MinuteRollup) -> MinuteCost:
        """One minute's cost, rounded half-up to micro-USD."""
        return self.exact_cost(rollup).rounded()

    def total_cost(self, rollups: Iterable[MinuteRollup]) -> GpuCost:
        """The cost of many minutes, summed exactly and rounded once (an all-idle hour at
        $2.50/h is exactly 2,500,000 micro-USD, not 60 rounded minutes)."""
        total = ExactCost(Decimal(0), Decimal(0), Decimal(0), None if self.usd_per_kwh is None else Decimal(0))
        for rollup in rollups:
            total = total + self.exact_cost(rollup)
        return total.rounded()


def _decimal(value: float) -> Decimal:
    """A measurement as the Decimal of its shortest repr (12.5 s -> Decimal('12.5'))."""
    return Decimal(repr(value))
