"""Money is integer micro-USD (1 USD = 1_000_000) or Decimal; never float."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_USD = 1_000_000


def usd_to_micros(usd: Decimal) -> int:
    """Round to the nearest micro-USD, halves away from zero."""
    return int((usd * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def micros_to_usd(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_USD


def format_usd(micros: int | None) -> str:
    """'0.000123' for wire headers and JSON; 'unknown' when the price is unknown."""
    if micros is None:
        return "unknown"
    return f"{micros_to_usd(micros):.6f}"
