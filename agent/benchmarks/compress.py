"""`aifinops bench compress`: what the prompt optimiser saves, how fast, and what it keeps.

Each row of a JSON-lines file (``prompt``, or ``turns``: a list of user turns) becomes one
conversation; ``concat`` joins that many consecutive rows into one long message, so that short
prompts (MMLU) also exercise lossy compression. Figures: tokens after / before (overall and for
conversations over ``lossy_min_tokens``), milliseconds per 1,000 input tokens, and whether every
number and name of the original is still somewhere in the optimised conversation.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

from agent.jsonlines import read_records
from agent.optimizer import PromptOptimizer
from agent.optimizer.lossy import protected_terms
from agent.pricing.tokens import count_text_tokens
from agent.providers.base import Message

Conversation = tuple[Message, ...]
_EXAMPLES = 5


def read_conversations(path: Path, limit: int | None, concat: int = 1) -> list[Conversation]:
    """The first `limit` rows of `path`, every `concat` of them joined into one user message."""

    def turns(row: dict[str, Any]) -> list[str]:
        if "prompt" in row:
            return [str(row["prompt"])]
        if not isinstance(row["turns"], list):
            raise TypeError("turns is not a list")
        return [str(t) for t in row["turns"]]

    rows = list(islice(read_records(path, turns, "prompt (a string) or turns (a list of strings)"), limit))
    if concat <= 1:
        return [tuple(Message("user", t) for t in row) for row in rows]
    groups = [rows[i : i + concat] for i in range(0, len(rows), concat)]
    return [(Message("user", "\n\n".join(t for row in group for t in row)),) for group in groups]


def run_compress_bench(
    conversations: list[Conversation],
    optimizer: PromptOptimizer,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Optimise each conversation once (after one warm-up call that loads any model)."""
    settings = optimizer.settings

    def is_long(conversation: Conversation) -> bool:
        return any(count_text_tokens(m.content) >= settings.lossy_min_tokens for m in conversation)

    if conversations:  # warm-up: the model load is not part of the per-token time
        optimizer.optimize(next((c for c in conversations if is_long(c)), conversations[0]))
    before = after = long_before = long_after = 0
    elapsed_s = long_elapsed_s = 0.0
    long_count = terms_checked = 0
    steps: Counter[str] = Counter()
    losses: list[dict[str, Any]] = []
    lost_count = 0
    for number, conversation in enumerate(conversations):
        started = time.perf_counter()
        result = optimizer.optimize(conversation)
        took_s = time.perf_counter() - started
        before += result.tokens_before
        after += result.tokens_after
        elapsed_s += took_s
        steps.update(result.steps)
        if is_long(conversation):
            long_count += 1
            long_before += result.tokens_before
            long_after += result.tokens_after
            long_elapsed_s += took_s
        kept = "\n".join(m.content for m in result.messages)
        terms = [t for m in conversation for t in protected_terms(m.content)]
        terms_checked += len(terms)
        lost = sorted({t for t in terms if t not in kept})
        if lost:
            lost_count += 1
            if len(losses) < _EXAMPLES:
                losses.append({"conversation": number, "lost": lost[:10]})
        if progress:
            progress(1)
    return {
        "conversations": len(conversations),
        "lossy": settings.lossy,
        "lossy_min_tokens": settings.lossy_min_tokens,
        "lossy_keep_ratio": settings.lossy_keep_ratio,
        "tokens_before": before,
        "tokens_after": after,
        "ratio": _ratio(after, before),
        "long_conversations": long_count,
        "long_tokens_before": long_before,
        "long_tokens_after": long_after,
        "long_ratio": _ratio(long_after, long_before),
        "ms_per_1k_tokens": _per_1k(elapsed_s, before),
        "long_ms_per_1k_tokens": _per_1k(long_elapsed_s, long_before),
        "steps": dict(sorted(steps.items())),
        "terms_checked": terms_checked,
        "conversations_losing_terms": lost_count,
        "lost_examples": losses,
    }


def _ratio(after: int, before: int) -> float | None:
    return round(after / before, 4) if before else None


def _per_1k(elapsed_s: float, tokens: int) -> float | None:
    return round(elapsed_s * 1000 / tokens * 1000, 2) if tokens else None
