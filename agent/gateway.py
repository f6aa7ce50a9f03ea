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
from dataclasses import dataclass

from agent.errors import AIFinOpsError, InvalidRequest
from agent.identity import Caller
from agent.ledger.database import utc_now_iso
from agent.ledger.requests import RequestLog, RequestRecord, Status
from agent.pricing.prices import Price, PriceBook
from agent.pricing.tokens import count_message_tokens, count_text_tokens
from agent.providers.base import (
    ChatParams,
    Completion,
    Delta,
    Message,
    Provider,
    StreamEnd,
    StreamProgress,
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
        started, ts, request_id = time.perf_counter(), utc_now_iso(), new_request_id()
        route = self.route(call)
        try:
            completion = await route.provider.complete(route.model, call.messages, call.params)
        except AIFinOpsError as e:
            self._record_failure(caller, call, route, request_id, ts, started, e)
            raise
        except asyncio.CancelledError:
            usage = Usage(count_message_tokens(m.content for m in call.messages), 0, True)
            self._record(caller, call, route, request_id, ts, started, "aborted", usage, 1, 0.0)
            raise
        price = self._record(
            caller,
            call,
            route,
            request_id,
            ts,
            started,
            "ok",
            completion.usage,
            completion.attempts,
            completion.compute_s,
        )
        return ChatResult(request_id, route, completion, price)

    async def stream(
        self, caller: Caller, call: ChatCall, request_id: str, route: Route
    ) -> AsyncGenerator[Delta | StreamSummary, None]:
        """Deltas, then one StreamSummary. Records the row however the stream ends."""
        started, ts = time.perf_counter(), utc_now_iso()
        progress = StreamProgress()
        finished = False
        try:
            async for event in route.provider.stream(route.model, call.messages, call.params, progress):
                if isinstance(event, StreamEnd):
                    finished = True
                    price = self._record(
                        caller,
                        call,
                        route,
                        request_id,
                        ts,
                        started,
                        "ok",
                        event.usage,
                        event.attempts,
                        event.compute_s,
                    )
                    yield StreamSummary(event.finish_reason, event.usage, price)
                else:
                    yield event
        except AIFinOpsError as e:
            finished = True
            self._record_failure(caller, call, route, request_id, ts, started, e, progress)
            raise
        finally:
            if not finished:  # the client went away, or the agent is shutting down
                self._record(
                    caller,
                    call,
                    route,
                    request_id,
                    ts,
                    started,
                    "aborted",
                    _partial_usage(call, progress),
                    max(progress.attempts, 1),
                    progress.compute_s,
                )

    def _record_failure(
        self,
        caller: Caller,
        call: ChatCall,
        route: Route,
        request_id: str,
        ts: str,
        started: float,
        error: AIFinOpsError,
        progress: StreamProgress | None = None,
    ) -> None:
        usage = _partial_usage(call, progress) if progress and progress.text else Usage(0, 0)
        self._record(
            caller,
            call,
            route,
            request_id,
            ts,
            started,
            "error",
            usage,
            getattr(error, "attempts", 1),
            progress.compute_s if progress else 0.0,
            error_type=error.error_type,
        )

    def _record(
        self,
        caller: Caller,
        call: ChatCall,
        route: Route,
        request_id: str,
        ts: str,
        started: float,
        status: Status,
        usage: Usage,
        attempts: int,
        compute_s: float,
        error_type: str = "",
    ) -> Price:
        price = self._price(route, usage, compute_s)
        self._requests.record(
            RequestRecord(
                id=request_id,
                ts=ts,
                user_id=caller.user_id,
                user_name=caller.user,
                department=caller.department,
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
                latency_ms=round((time.perf_counter() - started) * 1000),
                status=status,
                error_type=error_type,
                stream=call.stream,
                attempts=attempts,
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


def _partial_usage(call: ChatCall, progress: StreamProgress | None) -> Usage:
    """Tokens of a stream that ended early, estimated from what was produced."""
    text = progress.text if progress else ""
    input_tokens = (progress.input_tokens if progress else None) or count_message_tokens(
        m.content for m in call.messages
    )
    return Usage(input_tokens, count_text_tokens(text), estimated=True)
