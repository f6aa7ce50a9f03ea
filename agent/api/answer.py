"""What every chat-shaped endpoint (chat completions, legacy completions, Responses) says about
an answer beside its text: the ``x_aifinops`` object, the cost headers, token usage, and the
walk over a stream's events."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from agent.api import schemas
from agent.gateway import Flight, StreamSummary
from agent.money import format_usd
from agent.pricing.prices import Price
from agent.providers.base import Delta, Usage

Event = Delta | StreamSummary


def aifinops_info(flight: Flight, price: Price, estimated: bool) -> schemas.AIFinOpsInfo:
    hit = flight.cache.hit
    return schemas.AIFinOpsInfo(
        request_id=flight.request_id,
        route=flight.served_by,
        model=hit.entry.model if hit else flight.route.model,
        cost_usd=format_usd(price.cost_micro_usd),
        cost_micro_usd=price.cost_micro_usd,
        price_source=price.source,
        tokens_estimated=estimated,
        cache=flight.cache.status,
        cache_similarity=round(hit.similarity, 4) if hit else None,
        cache_verifier_score=round(hit.verifier_score, 4) if hit and hit.verifier_score is not None else None,
        cache_entry_id=hit.entry.id if hit else None,
        tier="" if hit else flight.route.tier,
        reason="cache hit" if hit else flight.route.reason,
        route_score=None if hit else flight.route.score,
        prompt_tokens_before=flight.optimized.tokens_before if flight.optimized and not hit else None,
        prompt_tokens_after=flight.optimized.tokens_after if flight.optimized and not hit else None,
    )


def answer_model(flight: Flight) -> str:
    """The model named in the answer: the cached answer's model on a hit, else the route's."""
    return flight.cache.hit.entry.model if flight.cache.hit else flight.route.model


def cost_headers(flight: Flight, cost_usd: str) -> dict[str, str]:
    headers = {
        "X-AIFinOps-Route": flight.served_by,
        "X-AIFinOps-Cost-USD": cost_usd,
        "X-AIFinOps-Request-Id": flight.request_id,
        "X-AIFinOps-Cache": flight.cache.status,
    }
    if flight.route.tier and flight.cache.hit is None:
        headers["X-AIFinOps-Tier"] = flight.route.tier
    if (hit := flight.cache.hit) is not None:
        headers["X-AIFinOps-Cache-Similarity"] = f"{hit.similarity:.4f}"
        if hit.verifier_score is not None:
            headers["X-AIFinOps-Cache-Verifier"] = f"{hit.verifier_score:.4f}"
        headers["X-AIFinOps-Cache-Entry"] = str(hit.entry.id)
    return headers


def stream_headers(flight: Flight) -> dict[str, str]:
    """A stream's headers go out before the cost is known: it comes in the last event."""
    return cost_headers(flight, "pending") | {"Cache-Control": "no-cache"}


def wire_usage(usage: Usage) -> schemas.Usage:
    return schemas.Usage(
        prompt_tokens=usage.input_tokens,
        completion_tokens=usage.output_tokens,
        total_tokens=usage.input_tokens + usage.output_tokens,
        prompt_tokens_details=schemas.PromptTokensDetails(cached_tokens=usage.cache_read_tokens),
        completion_tokens_details=schemas.CompletionTokensDetails(reasoning_tokens=usage.reasoning_tokens),
    )


async def walk(first: Event | None, events: AsyncGenerator[Event, None]) -> AsyncIterator[Event]:
    """The stream's events from the first (already taken, to choose between an HTTP error and a
    200) to the summary. The caller closes ``events`` (which records an aborted row if the client
    left mid-stream)."""
    event = first
    while event is not None:
        yield event
        if isinstance(event, StreamSummary):
            return
        event = await anext(events, None)


def error_event(error: schemas.ErrorDetail) -> str:
    return schemas.ErrorBody(error=error).model_dump_json()


def dump_json(body: dict[str, Any]) -> str:
    """A hand-built answer body as compact JSON (the endpoints whose shapes are plain dicts)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
