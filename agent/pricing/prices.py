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
from typing import Protocol

from agent.money import usd_to_micros

MILLION = Decimal(1_000_000)
# Above this many input tokens some models switch to long-context rates: ask the table directly.
_LONG_CONTEXT_TOKENS = 100_000


class TokenRates(Protocol):
    @property
    def input_usd_per_mtok(self) -> Decimal: ...

    @property
    def output_usd_per_mtok(self) -> Decimal: ...


@dataclass(frozen=True)
class Rates:
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    source: str


@dataclass(frozen=True)
class Price:
    cost_micro_usd: int | None
    source: str


UNKNOWN = Price(None, "unknown")


class PriceBook:
    def __init__(self, overrides: Mapping[str, TokenRates], local_usd_per_hour: Decimal) -> None:
        self._overrides = dict(overrides)
        self._local_usd_per_hour = local_usd_per_hour
        self._cache: dict[tuple[str, str], Rates | None] = {}
        self._lock = threading.Lock()

    def rates(self, model: str, provider_id: str = "") -> Rates | None:
        """USD per million tokens for a cloud model, or None when nobody knows the price."""
        override = self._overrides.get(model)
        if override is not None:
            return Rates(override.input_usd_per_mtok, override.output_usd_per_mtok, "override")
        key = (model, provider_id)
        with self._lock:
            if key not in self._cache:
                input_usd = _table_price(model, provider_id, 1_000_000, 0)
                output_usd = _table_price(model, provider_id, 0, 1_000_000)
                self._cache[key] = (
                    None if input_usd is None or output_usd is None else Rates(input_usd, output_usd, "genai-prices")
                )
            return self._cache[key]

    def for_tokens(
        self,
        model: str,
        provider_id: str,
        input_tokens: int,
        output_tokens: int,
        *,
        negotiated: TokenRates | None = None,
    ) -> Price:
        """``negotiated``: a department's rates under the policy in force, which take precedence."""
        if negotiated is not None:
            agreed = input_tokens * negotiated.input_usd_per_mtok + output_tokens * negotiated.output_usd_per_mtok
            return Price(usd_to_micros(agreed / MILLION), "policy")
        rates = self.rates(model, provider_id)
        if rates is None:
            return UNKNOWN
        if rates.source == "genai-prices" and input_tokens > _LONG_CONTEXT_TOKENS:
            usd = _table_price(model, provider_id, input_tokens, output_tokens)
            return UNKNOWN if usd is None else Price(usd_to_micros(usd), rates.source)
        usd = (input_tokens * rates.input_usd_per_mtok + output_tokens * rates.output_usd_per_mtok) / MILLION
        return Price(usd_to_micros(usd), rates.source)

    def for_compute(self, compute_s: float, usd_per_hour: Decimal | None = None) -> Price:
        """Local inference: seconds of the box (or of an engine's slot) at its hourly rate."""
        seconds = Decimal(str(round(max(compute_s, 0.0), 6)))
        hourly = self._local_usd_per_hour if usd_per_hour is None else usd_per_hour
        return Price(usd_to_micros(seconds * hourly / 3600), "local-compute")


def _table_price(model: str, provider_id: str, input_tokens: int, output_tokens: int) -> Decimal | None:
    from genai_prices import Usage, calc_price  # imported on first use: 0.2 s

    try:
        result = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model_ref=model,
            provider_id=provider_id or None,
        )
    except LookupError:
        return None
    return Decimal(result.total_price)
