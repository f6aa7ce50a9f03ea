"""The alert outbox's rules for a receiver's answers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from agent.alerts.outbox import RETRY_FIRST_S, RETRY_MAX_S, idempotency_key
from agent.alerts.transport import Answer, permanent
from agent.retry import backoff_s
from agent.retry import retry_after_s as retry_after


def test_the_backoff_doubles_with_jitter_up_to_a_cap() -> None:
    rng = random.Random(7)
    for attempts in range(1, 20):
        wait = backoff_s(RETRY_FIRST_S, attempts, rng, cap_s=RETRY_MAX_S)
        base = min(RETRY_FIRST_S * 2 ** (attempts - 1), RETRY_MAX_S)
        assert base / 2 <= wait <= base
    waits = {round(backoff_s(RETRY_FIRST_S, 3, rng, cap_s=RETRY_MAX_S), 6) for _ in range(20)}
    assert len(waits) > 1  # jittered: a fleet of agents does not retry in step


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert retry_after("120") == 120.0
    assert retry_after("Mon, 07 Dec 2026 12:00:30 GMT", now) == 30.0
    assert retry_after((now - timedelta(minutes=1)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now) == 0.0
    assert retry_after(None) is None and retry_after("soon") is None


def test_only_a_refusal_that_retrying_cannot_change_is_final() -> None:
    assert permanent(400) and permanent(401) and permanent(404) and permanent(410)
    assert not permanent(408) and not permanent(429) and not permanent(500) and not permanent(503)


def test_a_status_maps_to_what_the_outbox_does_next() -> None:
    assert Answer.from_status(204).outcome == "delivered"
    assert Answer.from_status(404, "HTTP 404 Not Found") == Answer("refused", "HTTP 404 Not Found")
    assert Answer.from_status(429, "HTTP 429", 30.0) == Answer("retry", "HTTP 429", 30.0)
    assert Answer.from_status(503).outcome == "retry"


def test_the_idempotency_key_is_per_host_and_event_or_per_fleet_alert() -> None:
    assert idempotency_key("a" * 32, 7, None) != idempotency_key("b" * 32, 7, None)  # two hosts' event 7
    assert idempotency_key("a" * 32, 7, None) == f"aifinops-{'a' * 32}-event-7"
    fleet = "budget_alert:eng:department:eng:2026-12:80"
    assert idempotency_key("a" * 32, 7, fleet) == idempotency_key("b" * 32, 9, fleet)  # one alert for the fleet
