"""Waiting before another try: a doubling backoff with jitter, and a server's Retry-After.

One rule for the agent's two retriers: cloud calls (agent.providers.openai_compat) and alert
deliveries (agent.alerts.outbox).
"""

from __future__ import annotations

import email.utils
import math
import random
from datetime import UTC, datetime


def backoff_s(base_s: float, attempts: int, rng: random.Random, *, cap_s: float = math.inf) -> float:
    """The wait after ``attempts`` failed tries: doubling from ``base_s`` (at most ``cap_s``),
    jittered to between half and all of it, so that clients refused together (a provider's 503,
    a receiver's outage) do not retry in step."""
    return float(min(base_s * 2 ** max(attempts - 1, 0), cap_s) * rng.uniform(0.5, 1.0))


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date (one past is 0); None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return max(0.0, seconds) if math.isfinite(seconds) else None
