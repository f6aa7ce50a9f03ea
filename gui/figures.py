"""The dashboard's figures: from the agent's /api/v1/dashboard, or assembled from /api/v1/spend.

Aggregation is the agent's job (SQL in its ledger); this module only reshapes its answers into
immutable values the widgets show. Money stays integer micro-USD until it is formatted.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from agent.api.schemas import BudgetEntry, BudgetReport, SpendReport

MICRO = 1_000_000


@dataclass(frozen=True)
class Slice:
    """Spend of one key (a model, route, feature or tier)."""

    key: str
    requests: int
    cost_micro_usd: int


@dataclass(frozen=True)
class Day:
    day: str  # YYYY-MM-DD
    requests: int
    cost_micro_usd: int


@dataclass(frozen=True)
class Figures:
    since: str
    policy_version: int | None
    budgets: tuple[BudgetEntry, ...]
    daily: tuple[Day, ...]
    by_model: tuple[Slice, ...]
    by_route: tuple[Slice, ...]
    by_feature: tuple[Slice, ...]
    by_tier: tuple[Slice, ...]
    cache_saved_micro_usd: int
    compression_saved_micro_usd: int
    gpu_busy_micro_usd: int | None  # None: no GPU on this box
    gpu_idle_micro_usd: int | None
    total_requests: int
    total_cost_micro_usd: int
    source: str  # "dashboard", or "spend" (an agent without /api/v1/dashboard: no daily series)
    # What the provider's prompt cache took off the bill (cached input at its own rate), beside ours.
    provider_cache_saved_micro_usd: int = 0


def usd(micro_usd: int) -> str:
    """Money as people read it: 1234567 -> '$1.23', 420106 -> '$0.42', 12 -> '< $0.01', 0 -> '$0.00'.

    Cents, rounded half up, in integers (no float); an amount under a cent says so rather than
    showing $0.00. The exact figure is in the ledger and the API.
    """
    sign = "-" if micro_usd < 0 else ""
    amount = abs(micro_usd)
    if 0 < amount < MICRO // 100:
        return f"{sign}< $0.01"
    cents = (amount + MICRO // 200) // (MICRO // 100)
    whole, frac = divmod(cents, 100)
    return f"{sign}${whole:,}.{frac:02d}"


def micro_usd_of(amount: Any) -> int | None:
    """An API's decimal USD string ("0.420106") in micro-USD (420106), rounded half up; None when
    absent or not a number (an event's body is someone else's JSON)."""
    if amount is None:
        return None
    try:
        micro = Decimal(str(amount)) * MICRO
    except (InvalidOperation, ValueError):
        return None
    if not micro.is_finite():
        return None
    return int(micro.to_integral_value(rounding=ROUND_HALF_UP))


def usd_text(amount: Any) -> str:
    """An API's decimal USD string ("0.420106") as ``usd`` shows it ("$0.42"); "?" when absent or
    not a number."""
    micro = micro_usd_of(amount)
    return "?" if micro is None else usd(micro)


def _slices(rows: Any) -> tuple[Slice, ...]:
    return tuple(
        Slice(str(r["key"]), int(r["requests"]), int(r["cost_micro_usd"])) for r in rows or () if isinstance(r, dict)
    )


def figures_from_dashboard(body: Any) -> Figures:
    savings = body.get("savings") or {}
    gpu = body.get("gpu")
    totals = body.get("totals") or {}
    return Figures(
        since=str(body.get("since", "")),
        policy_version=body.get("policy_version"),
        budgets=tuple(BudgetEntry.model_validate(b) for b in body.get("budgets") or ()),
        daily=tuple(Day(str(d["day"]), int(d["requests"]), int(d["cost_micro_usd"])) for d in body.get("daily") or ()),
        by_model=_slices(body.get("by_model")),
        by_route=_slices(body.get("by_route")),
        by_feature=_slices(body.get("by_feature")),
        by_tier=_slices(body.get("by_tier")),
        cache_saved_micro_usd=int(savings.get("cache_micro_usd", 0)),
        compression_saved_micro_usd=int(savings.get("compression_micro_usd", 0)),
        gpu_busy_micro_usd=int(gpu["busy_micro_usd"]) if isinstance(gpu, dict) else None,
        gpu_idle_micro_usd=int(gpu["idle_micro_usd"]) if isinstance(gpu, dict) else None,
        total_requests=int(totals.get("requests", 0)),
        total_cost_micro_usd=int(totals.get("cost_micro_usd", 0)),
        source="dashboard",
        provider_cache_saved_micro_usd=int(savings.get("provider_cache_micro_usd", 0)),
    )


def _micro(decimal_usd: str) -> int:
    return int(Decimal(decimal_usd) * MICRO)


def figures_from_spend(spend: dict[str, Any], budgets: BudgetReport, since: str) -> Figures:
    """For agents without /api/v1/dashboard: one spend report per dimension, and the budgets."""
    reports = {by: SpendReport.model_validate(body) for by, body in spend.items()}
    by_route = reports["route"]
    cache_saved = sum(_micro(r.cost_saved_usd) for r in by_route.rows if r.key == "cache")
    other_saved = sum(_micro(r.cost_saved_usd) for r in by_route.rows if r.key != "cache")

    def slices(by: str) -> tuple[Slice, ...]:
        return tuple(Slice(r.key, r.requests, r.cost_micro_usd) for r in reports[by].rows)

    return Figures(
        since=since,
        policy_version=budgets.policy_version,
        budgets=tuple(budgets.budgets),
        daily=(),
        by_model=slices("model"),
        by_route=slices("route"),
        by_feature=slices("feature"),
        by_tier=slices("tier"),
        cache_saved_micro_usd=cache_saved,
        compression_saved_micro_usd=other_saved,
        gpu_busy_micro_usd=None,
        gpu_idle_micro_usd=None,
        total_requests=sum(r.requests for r in by_route.rows),
        total_cost_micro_usd=by_route.total_cost_micro_usd,
        source="spend",
    )


def counted_spend(budget: BudgetEntry) -> int:
    """What counts against a budget: the fleet's spend for one the whole fleet shares."""
    fleet = budget.fleet
    if fleet is not None and fleet.fleet_spent_micro_usd is not None:
        return max(budget.spent_micro_usd, fleet.fleet_spent_micro_usd)
    return budget.spent_micro_usd
