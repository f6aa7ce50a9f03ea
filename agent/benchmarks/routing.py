"""``aifinops bench routing``: the real router over labelled prompts, scored against the labels.

Each prompt is embedded and routed by the same ``Router`` the agent uses, between two tiers:
``cheap`` (the weak model of the labels) and ``strong``. Labels are read only to score: a prompt
routed cheap counts as right when ``weak_correct``, one routed strong when ``strong_correct``.
A threshold sweep gives, per point, the strong share, the accuracy, the quality retained
(accuracy / all-strong accuracy) and the cost reduction against sending everything to the
strong tier at the configured prices. Rows flagged ``in_routellm_train_contamination_list``
are left out unless asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.pricing.prices import PriceBook
from agent.pricing.tokens import count_text_tokens
from agent.routing.router import Router, RouteSignals
from agent.routing.training import LabelledPrompt

F32 = npt.NDArray[np.float32]
QUALITY_TARGET = 0.95


@dataclass(frozen=True)
class TierPrice:
    model: str
    provider_id: str
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1_000_000


def tier_price(prices: PriceBook, model: str, provider_id: str) -> TierPrice:
    rates = prices.rates(model, provider_id)
    if rates is None:
        raise ValueError(f"no price is known for {model!r}: set [pricing.overrides.{model!r}]")
    return TierPrice(model, provider_id, rates.input_usd_per_mtok, rates.output_usd_per_mtok)


def embed_in_batches(
    embed: Callable[[list[str]], F32], texts: list[str], progress: Callable[[int], None] | None = None
) -> F32:
    """Embeddings in the input order, computed shortest first (less padding per batch)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), 0), dtype=np.float32)
    for start in range(0, len(order), 32):
        batch = order[start : start + 32]
        vectors = embed([texts[i] for i in batch])
        if out.shape[1] == 0:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[batch] = vectors
        if progress is not None:
            progress(len(batch))
    return out


def run_routing_bench(
    rows: list[LabelledPrompt],
    vectors: F32,
    router: Router,
    cheap: TierPrice,
    strong: TierPrice,
    output_tokens: int,
) -> dict[str, Any]:
    """The sweep; ``vectors`` are the prompts' embeddings, in order."""
    weak_ok = np.array([r.weak_correct for r in rows])
    strong_ok = np.array([r.strong_correct for r in rows])
    tokens = [count_text_tokens(r.prompt) for r in rows]
    signals = [
        RouteSignals(prompt=r.prompt, prompt_tokens=t, embedding=v)
        for r, t, v in zip(rows, tokens, vectors, strict=True)
    ]
    # Decision time, the embedding excluded (it is shared with the cache and measured there).
    durations, scored = [], []
    for s in signals:
        started = time.perf_counter()
        router.decide(s)
        durations.append(time.perf_counter() - started)
        scored.append(router.score(s))
    scores = [score for score, _ in scored]
    cost_cheap = [cheap.cost(t, output_tokens) for t in tokens]
    cost_strong = [strong.cost(t, output_tokens) for t in tokens]
    all_strong_cost = sum(cost_strong, Decimal(0))
    all_strong_accuracy = float(strong_ok.mean())
    # Thresholds at the score's quantiles: every share of strong calls from 0 to 100 %.
    thresholds = np.unique(np.concatenate([[0.0, 1.0], np.quantile(np.array(scores), np.linspace(0, 1, 41))]))
    sweep = []
    for threshold in thresholds:
        at = router.with_threshold(float(min(max(threshold, 0.0), 1.0)))
        to_strong = np.array([at.decide(s, sc).tier == "strong" for s, sc in zip(signals, scored, strict=True)])
        accuracy = float(np.where(to_strong, strong_ok, weak_ok).mean())
        cost = sum(
            (cs if up else cc for up, cs, cc in zip(to_strong, cost_strong, cost_cheap, strict=True)), Decimal(0)
        )
        sweep.append(
            {
                "threshold": round(float(threshold), 4),
                "strong_share": round(float(to_strong.mean()), 4),
                "accuracy": round(accuracy, 4),
                "quality_retained": round(accuracy / all_strong_accuracy, 4) if all_strong_accuracy else None,
                "cost_reduction": round(float(1 - cost / all_strong_cost), 4) if all_strong_cost else None,
            }
        )
    sweep.sort(key=lambda p: (p["strong_share"], p["threshold"]))
    reaching = [p for p in sweep if p["quality_retained"] is not None and p["quality_retained"] >= QUALITY_TARGET]
    best = reaching[0] if reaching else None
    ms = np.array(durations) * 1000
    return {
        "rows": len(rows),
        "all_strong_accuracy": round(all_strong_accuracy, 4),
        "all_weak_accuracy": round(float(weak_ok.mean()), 4),
        "strong_share_at_95": best["strong_share"] if best else None,
        "cost_reduction_at_95": best["cost_reduction"] if best else None,
        "threshold_at_95": best["threshold"] if best else None,
        "decision_ms_p50": round(float(np.percentile(ms, 50)), 4),
        "decision_ms_p99": round(float(np.percentile(ms, 99)), 4),
        "scoring": "model" if router.model is not None else "rules",
        "prices": {
            "cheap": _price_json(cheap),
            "strong": _price_json(strong),
            "output_tokens_per_answer": output_tokens,
        },
        "sweep": sweep,
    }


def _price_json(price: TierPrice) -> dict[str, str]:
    return {
        "model": price.model,
        "input_usd_per_mtok": str(price.input_usd_per_mtok),
        "output_usd_per_mtok": str(price.output_usd_per_mtok),
    }
