"""The request pipeline, top to bottom: route -> provider call -> price -> ledger.

Later stages (policy gate, prompt optimiser, semantic cache, router, budget reservation) slot
in here in the order ARCHITECTURE.md gives. Every request, whatever happens to it, leaves
exactly one ledger row: ok, error or aborted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from agent.errors import AIFinOpsError, InvalidRequest
from agent.identity import Caller
from agent.ledger.database import utc_now_iso
from agent.ledger.requests import RequestLog, RequestRecord, Status
from agent.pricing.prices import Price, PriceBook
from agent.pricing.tokens import count_message_tokens, count_text_tokens
from agent.providers.base import (
    CallProgress,
    ChatParams,
    Completion,
    Delta,
    Message,
    Provider,
    StreamEnd,
    Usage,
)
from agent.providers.registry import ProviderRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatCall:
    requested_model: str
    messages: tuple[Message, ...]
    params: ChatParams
    feature: str = ""
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: send a final usage chunk


@dataclass(frozen=True)
class Route:
    provider: Provider
    model: str
    route: str  # the tier that answers: "local" or "cloud"
    reason: str


@dataclass(frozen=True)
class ChatResult:
    request_id: str
    route: Route
    completion: Completion
    price: Price


@dataclass(frozen=True)
class StreamSummary:
    """The last event of a stream: what it cost."""

    finish_reason: str
    usage: Usage
    price: Price


class Gateway:
    def __init__(
        self, registry: ProviderRegistry, prices: PriceBook, requests: RequestLog, default_model: str
    ) -> None:
        self._registry = registry
        self._prices = prices
        self._requests = requests
        self._default_model = default_model

    def route(self, call: ChatCall) -> Route:
        if call.requested_model == "auto":
            model, reason = self._default_model, "auto -> configured default model"
        else:
            model, reason = call.requested_model, "model named by the client"
        provider = self._registry.resolve(model)
        if provider.kind == "local" and call.params.passthrough:
            names = ", ".join(name for name, _ in call.params.passthrough)
            raise InvalidRequest(f"local models do not support: {names}", code="unsupported_parameter")
        return Route(provider, model, provider.kind, reason)

    async def chat(self, caller: Caller, call: ChatCall) -> ChatResult:
        flight = _InFlight(caller, call, self.route(call), new_request_id())
        try:
            completion = await flight.route.provider.complete(
                flight.route.model, call.messages, call.params, flight.progress
            )
        except AIFinOpsError as e:
            self._record(flight, "error", _failed_usage(flight), e.error_type)
            raise
        except asyncio.CancelledError:  # the client left, or the agent is shutting down
            self._record(flight, "aborted", _partial_usage(flight))
            raise
        price = self._record(flight, "ok", completion.usage)
        return ChatResult(flight.request_id, flight.route, completion, price)

    async def stream(
        self, caller: Caller, call: ChatCall, request_id: str, route: Route
    ) -> AsyncGenerator[Delta | StreamSummary, None]:
        """Deltas, then one StreamSummary. Records the row however the stream ends."""
        flight = _InFlight(caller, call, route, request_id)
        recorded = False
        try:
            events = route.provider.stream(route.model, call.messages, call.params, flight.progress)
            async for event in events:
                if isinstance(event, StreamEnd):
                    recorded = True
                    price = self._record(flight, "ok", event.usage)
                    yield StreamSummary(event.finish_reason, event.usage, price)
                else:
                    yield event
        except AIFinOpsError as e:
            recorded = True
            self._record(flight, "error", _failed_usage(flight), e.error_type)
            raise
        finally:
            if not recorded:  # the client went away, or the agent is shutting down
                self._record(flight, "aborted", _partial_usage(flight))

    def _record(self, flight: _InFlight, status: Status, usage: Usage, error_type: str = "") -> Price:
        """Price the call and write its one ledger row."""
        route, call, progress = flight.route, flight.call, flight.progress
        price = self._price(route, usage, progress.compute_s)
        self._requests.record(
            RequestRecord(
                id=flight.request_id,
                ts=flight.ts,
                user_id=flight.caller.user_id,
                user_name=flight.caller.user,
                department=flight.caller.department,
                feature=call.feature,
                requested_model=call.requested_model,
                model=route.model,
                provider=route.provider.name,
                route=route.route,
                reason=route.reason,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                tokens_estimated=usage.estimated,
                cost_micro_usd=price.cost_micro_usd,
                price_source=price.source,
                cost_saved_micro_usd=0,
                cache_hit=False,
                latency_ms=round((time.perf_counter() - flight.started) * 1000),
                status=status,
                error_type=error_type,
                stream=call.stream,
                attempts=max(progress.attempts, 1),
            )
        )
        return price

    def _price(self, route: Route, usage: Usage, compute_s: float) -> Price:
        if route.provider.kind == "local":
            return self._prices.for_compute(compute_s)
        if usage.input_tokens == 0 and usage.output_tokens == 0:
            return Price(0, "no-usage")
        return self._prices.for_tokens(
            route.model, route.provider.price_provider_id, usage.input_tokens, usage.output_tokens
        )


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


@dataclass
class _InFlight:
    """One request on its way through the pipeline: who, what, where, and since when."""

    caller: Caller
    call: ChatCall
    route: Route
    request_id: str
    ts: str = field(default_factory=utc_now_iso)
    started: float = field(default_factory=time.perf_counter)
    progress: CallProgress = field(default_factory=CallProgress)


def _partial_usage(flight: _InFlight) -> Usage:
    """Tokens of a call that ended early, estimated from what it produced."""
    progress, call = flight.progress, flight.call
    input_tokens = progress.input_tokens or count_message_tokens(m.content for m in call.messages)
    return Usage(input_tokens, count_text_tokens(progress.text), estimated=True)


def _failed_usage(flight: _InFlight) -> Usage:
    """A failed call is charged for what it produced before failing; usually nothing."""
    return _partial_usage(flight) if flight.progress.text else Usage(0, 0)
