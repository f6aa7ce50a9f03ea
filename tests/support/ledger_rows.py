"""Request rows of every kind (cache hits, cascades, failures, unpriced) for ledger tests."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from agent.ledger.requests import RequestRecord


def random_rows(rng: random.Random, user_ids: list[int], count: int) -> list[RequestRecord]:
    rows = []
    for i in range(count):
        user_id = rng.choice(user_ids)
        cache_hit = rng.random() < 0.2
        rows.append(
            RequestRecord(
                id=f"r{i}",
                ts=f"2026-11-{rng.randint(10, 20):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00.000000+00:00",
                user_id=user_id,
                user_name=f"user{user_id}",
                department=rng.choice(["sales", "eng"]),
                feature=rng.choice(["", "support", "code"]),
                requested_model="auto",
                model=rng.choice(["smollm2", "gpt-4o-mini", "gpt-4o"]),
                provider=rng.choice(["local", "openai"]),
                route=rng.choice(["local", "cloud", "cache"]),
                reason="",
                input_tokens=rng.randint(0, 900),
                output_tokens=rng.randint(0, 400),
                tokens_estimated=False,
                cost_micro_usd=None if rng.random() < 0.1 else rng.randint(0, 9_000),
                price_source="test",
                cost_saved_micro_usd=rng.randint(0, 3_000) if rng.random() < 0.4 else 0,
                cache_hit=cache_hit,
                latency_ms=rng.randint(1, 900),
                status=rng.choice(["ok", "ok", "ok", "error", "aborted"]),
                error_type="",
                stream=False,
                attempts=1,
                tier=rng.choice(["", "local", "cheap", "strong"]),
                parent_id=f"r{i - 1}" if i and rng.random() < 0.1 else "",  # a cascade's first call
            )
        )
    return rows


def request_row(
    request_id: str, user_id: int, user_name: str, department: str, ts: datetime, cost_micro_usd: int
) -> RequestRecord:
    """One answered cloud request of ``cost_micro_usd``."""
    return RequestRecord(
        id=request_id,
        ts=ts.astimezone(UTC).isoformat(timespec="microseconds"),
        user_id=user_id,
        user_name=user_name,
        department=department,
        feature="",
        requested_model="scripted-model",
        model="scripted-model",
        provider="scripted",
        route="cloud",
        reason="",
        input_tokens=11,
        output_tokens=7,
        tokens_estimated=False,
        cost_micro_usd=cost_micro_usd,
        price_source="test",
        cost_saved_micro_usd=0,
        cache_hit=False,
        latency_ms=5,
        status="ok",
        error_type="",
        stream=False,
        attempts=1,
        tier="",
        parent_id="",
    )
