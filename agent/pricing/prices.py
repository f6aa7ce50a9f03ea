"""What a request cost, in integer micro-USD, and where that price came from.

Cloud models: per-model overrides from the config first, then the bundled genai-prices table.
Local models: compute seconds x the box's configured USD per hour. An unknown price is
``cost_micro_usd=None`` with source ``unknown``, never a silent zero.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from agent.money import usd_to_micros
from agent.providers.base import Usage

MILLION = Decimal(1_000_000)


class TokenRates(Protocol):
    """Rates a config or a policy gives; the cache rates are optional (absent: the input rate)."""

    @property
    def input_usd_per_mtok(self) -> Decimal: ...

    @property
    def output_usd_per_mtok(self) -> Decimal: ...


@dataclass(frozen=True)
class Rates:
    """USD per million tokens at a model's base tier; a cache rate of None is the input rate."""

    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    source: str
    cache_read_usd_per_mtok: Decimal | None = None
    cache_write_usd_per_mtok: Decimal | None = None
    # The table's prices are linear in the tokens up to here (a tier starts above it; None: no
    # tier); past it, or with per-request fees, genai-prices prices the usage itself.
    linear_up_to: int | None = None

    def usd(self, usage: Usage) -> Decimal:
        read, written = usage.cache_read_tokens, usage.cache_write_tokens
        plain = max(usage.input_tokens - read - written, 0)
        read_rate = self.input_usd_per_mtok if self.cache_read_usd_per_mtok is None else self.cache_read_usd_per_mtok
        write_rate = self.input_usd_per_mtok if self.cache_write_usd_per_mtok is None else self.cache_write_usd_per_mtok
        total = (plain * self.input_usd_per_mtok + read * read_rate + written * write_rate
                 + usage.output_tokens * self.output_usd_per_mtok)  # fmt: skip
        return total / MILLION


@dataclass(frozen=True)
class Price:
    cost_micro_usd: int | None
    source: str
    # What the provider's prompt cache took off the bill: the same usage at the full input rate,
    # less its cost (negative when cache writes, dearer than input, outweigh the reads).
    provider_cache_saved_micro_usd: int = 0


UNKNOWN = Price(None, "unknown")


class PriceBook:
    def __init__(self, overrides: Mapping[str, TokenRates], local_usd_per_hour: Decimal) -> None:
        self._overrides = dict(overrides)
        self._local_usd_per_hour = local_usd_per_hour
        self._cache: dict[tuple[str, str], Rates | None] = {}
        self._lock = threading.Lock()

    def rates(self, model: str, provider_id: str = "") -> Rates | None:
        """USD per million tokens for a cloud model at its base tier (what holds and estimates use),
        or None when nobody knows the price."""
        override = self._overrides.get(model)
        if override is not None:
            return _agreed(override, "override")
        key = (model, provider_id)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = _table_rates(model, provider_id)
            return self._cache[key]

    def for_usage(self, model: str, provider_id: str, usage: Usage, *, negotiated: TokenRates | None = None) -> Price:
        """What ``usage`` costs: ``negotiated`` (a department's rates under the policy in force)
        first, then the config's override, then genai-prices (tiers and cache rates included)."""
        rates = _agreed(negotiated, "policy") if negotiated is not None else self.rates(model, provider_id)
        if rates is None:
            return UNKNOWN
        cost = self._usd(rates, model, provider_id, usage)
        if cost is None:
            return UNKNOWN
        saved = 0
        if usage.cache_read_tokens or usage.cache_write_tokens:
            full = self._usd(rates, model, provider_id, Usage(usage.input_tokens, usage.output_tokens))
            saved = 0 if full is None else usd_to_micros(full) - usd_to_micros(cost)
        return Price(usd_to_micros(cost), rates.source, saved)

    def for_tokens(
        self,
        model: str,
        provider_id: str,
        input_tokens: int,
        output_tokens: int,
        *,
        negotiated: TokenRates | None = None,
    ) -> Price:
        """Plain input and output tokens (no provider cache): estimates, embeddings."""
        return self.for_usage(model, provider_id, Usage(input_tokens, output_tokens), negotiated=negotiated)

    def for_compute(self, compute_s: float, usd_per_hour: Decimal | None = None) -> Price:
        """Local inference: seconds of the box (or of an engine's slot) at its hourly rate."""
        seconds = Decimal(str(round(max(compute_s, 0.0), 6)))
        hourly = self._local_usd_per_hour if usd_per_hour is None else usd_per_hour
        return Price(usd_to_micros(seconds * hourly / 3600), "local-compute")

    @staticmethod
    def _usd(rates: Rates, model: str, provider_id: str, usage: Usage) -> Decimal | None:
        if rates.source != "genai-prices" or rates.linear_up_to is None or usage.input_tokens <= rates.linear_up_to:
            return rates.usd(usage)
        return _table_price(model, provider_id, usage)


def _agreed(rates: TokenRates, source: str) -> Rates:
    return Rates(
        rates.input_usd_per_mtok,
        rates.output_usd_per_mtok,
        source,
        getattr(rates, "cache_read_usd_per_mtok", None),
        getattr(rates, "cache_write_usd_per_mtok", None),
    )


def _table_rates(model: str, provider_id: str) -> Rates | None:
    """The table's base-tier rates for a model, and up to where they are linear."""
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price  # imported on first use: 0.2 s

    try:
        prices = calc_price(TableUsage(input_tokens=1), model_ref=model, provider_id=provider_id or None).model_price
    except LookupError:
        return None
    fields: dict[str, Any] = {k: v for k, v in vars(prices).items() if v is not None}
    if "input_mtok" not in fields:
        return None

    def base(name: str) -> Decimal | None:
        value = fields.get(name)
        return None if value is None else Decimal(getattr(value, "base", value))

    starts = [int(t.start) for v in fields.values() for t in getattr(v, "tiers", ())]
    linear_up_to = min(starts) if starts else None
    if "requests_kcount" in fields:
        linear_up_to = -1  # a fee per request: the table prices each call (audio, image and search
        # prices apply only to usage this agent never reports)
    # An embedding model has no output price: what genai-prices charges for output it has none of.
    input_rate, output_rate = base("input_mtok"), base("output_mtok") or Decimal(0)
    assert input_rate is not None  # noqa: S101 - checked above
    cache_read, cache_write = base("cache_read_mtok"), base("cache_write_mtok")
    return Rates(input_rate, output_rate, "genai-prices", cache_read, cache_write, linear_up_to)


def _table_price(model: str, provider_id: str, usage: Usage) -> Decimal | None:
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    try:
        counted = TableUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens or None,
            cache_write_tokens=usage.cache_write_tokens or None,
        )
        result = calc_price(counted, model_ref=model, provider_id=provider_id or None)
    except LookupError:
        return None
    return Decimal(result.total_price)
