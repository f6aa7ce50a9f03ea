"""The request pipeline, top to bottom: route -> semantic cache -> provider -> price -> ledger.

``prepare()`` decides who answers (the route, or the cache); ``chat()`` / ``stream()`` then
deliver. Later stages (policy gate, prompt optimiser, router, budget reservation) slot in here
in the order ARCHITECTURE.md gives. Every request that reaches this point leaves exactly one
ledger row: ok, error or aborted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace

from agent.cache.keys import cache_key
from agent.cache.service import CacheLookup, SemanticCache
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

CACHE_PRICE = Price(0, "cache")


@dataclass(frozen=True)
class ChatCall:
    requested_model: str
    messages: tuple[Message, ...]
    params: ChatParams
    feature: str = ""
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: send a final usage chunk
    cache_allowed: bool = True  # false for `"cache": false` or `Cache-Control: no-cache`


@dataclass(frozen=True)
class Route:
    provider: Provider
    model: str
    route: str  # the tier that answers: "local" or "cloud"
    reason: str


@dataclass
class Flight:
    """One request on its way through the pipeline: who, what, where, and since when."""

    caller: Caller
    call: ChatCall
    route: Route
    cache: CacheLookup
    request_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    ts: str = field(default_factory=utc_now_iso)
    started: float = field(default_factory=time.perf_counter)
    progress: CallProgress = field(default_factory=CallProgress)

    @property
    def served_by(self) -> str:
        """What the X-AIFinOps-Route header says: the tier, or "cache"."""
        return "cache" if self.cache.hit else self.route.route


@dataclass(frozen=True)
class ChatResult:
    flight: Flight
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
        self,
        registry: ProviderRegistry,
        prices: PriceBook,
        requests: RequestLog,
        default_model: str,
        cache: SemanticCache | None = None,
    ) -> None:
        self._registry = registry
        self._prices = prices
        self._requests = requests
        self._default_model = default_model
        self._cache = cache

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

    async def prepare(self, caller: Caller, call: ChatCall) -> Flight:
        """Route the request and ask the cache; nothing is spent or recorded yet."""
        route = self.route(call)
        return Flight(caller, call, route, await self._lookup(caller, call, route))

    async def _lookup(self, caller: Caller, call: ChatCall, route: Route) -> CacheLookup:
        if self._cache is None:
            return CacheLookup("bypass", reason="no cache")
        key = cache_key(self._cache.settings, caller, call, route.model)
        if isinstance(key, str):
            return CacheLookup("bypass", reason=key)
        # Embedding and search run off the event loop (ONNX and numba release the GIL).
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._cache.lookup, key)
        except Exception:  # the cache saves money; it must never fail a request (logged with traceback)
            log.exception("semantic cache lookup failed; answering without the cache")
            return CacheLookup("bypass", reason="cache unavailable")

    async def chat(self, flight: Flight) -> ChatResult:
        if (hit := flight.cache.hit) is not None:
            self._record_hit(flight)
            entry = hit.entry
            return ChatResult(flight, Completion(entry.answer, entry.finish_reason, Usage(0, 0)), CACHE_PRICE)
        route, call = flight.route, flight.call
        try:
            completion = await route.provider.complete(route.model, call.messages, call.params, flight.progress)
        except AIFinOpsError as e:
            self._record(flight, "error", _failed_usage(flight), e.error_type)
            raise
        except asyncio.CancelledError:  # the client left, or the agent is shutting down
            self._record(flight, "aborted", _partial_usage(flight))
            raise
        price = self._record(flight, "ok", completion.usage)
        await self._store(flight, completion.text, completion.finish_reason, completion.usage, price)
        return ChatResult(flight, completion, price)

    async def stream(self, flight: Flight) -> AsyncGenerator[Delta | StreamSummary, None]:
        """Deltas, then one StreamSummary. Records the row however the stream ends."""
        if (hit := flight.cache.hit) is not None:
            self._record_hit(flight)
            yield Delta(hit.entry.answer)
            yield StreamSummary(hit.entry.finish_reason, Usage(0, 0), CACHE_PRICE)
            return
        route, call = flight.route, flight.call
        recorded = False
        try:
            events = route.provider.stream(route.model, call.messages, call.params, flight.progress)
            async for event in events:
                if isinstance(event, StreamEnd):
                    recorded = True
                    price = self._record(flight, "ok", event.usage)
                    await self._store(flight, flight.progress.text, event.finish_reason, event.usage, price)
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

    async def _store(self, flight: Flight, text: str, finish_reason: str, usage: Usage, price: Price) -> None:
        """Keep a complete answer for the next similar question."""
        lookup = flight.cache
        if self._cache is None or lookup.key is None or lookup.vector is None:
            return
        if finish_reason not in ("stop", "length") or not text.strip():
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                None,
                self._cache.store,
                lookup.key,
                lookup.vector,
                flight.route.model,
                text,
                finish_reason,
                usage.input_tokens,
                usage.output_tokens,
                price.cost_micro_usd,
            )
        except Exception:  # the answer was delivered and recorded; only the cache misses out
            log.exception("storing an answer in the semantic cache failed")

    def _record_hit(self, flight: Flight) -> None:
        hit = flight.cache.hit
        assert hit is not None  # noqa: S101 - only called on a hit
        saved = hit.entry.cost_micro_usd
        reason = f"cache hit, similarity {hit.similarity:.3f}" + ("" if saved is not None else ", saving unknown")
        self._requests.record(
            replace(
                self._row(flight, "ok", Usage(0, 0), CACHE_PRICE),
                model=hit.entry.model,
                provider="cache",
                route="cache",
                reason=reason,
                cost_saved_micro_usd=saved or 0,
                cache_hit=True,
                attempts=0,
            )
        )

    def _record(self, flight: Flight, status: Status, usage: Usage, error_type: str = "") -> Price:
        """Price the call and write its one ledger row."""
        price = self._price(flight.route, usage, flight.progress.compute_s)
        self._requests.record(self._row(flight, status, usage, price, error_type))
        return price

    def _row(self, flight: Flight, status: Status, usage: Usage, price: Price, error_type: str = "") -> RequestRecord:
        route, call = flight.route, flight.call
        return RequestRecord(
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
            attempts=max(flight.progress.attempts, 1),
        )

    def _price(self, route: Route, usage: Usage, compute_s: float) -> Price:
        if route.provider.kind == "local":
            return self._prices.for_compute(compute_s)
        if usage.input_tokens == 0 and usage.output_tokens == 0:
            return Price(0, "no-usage")
        return self._prices.for_tokens(
            route.model, route.provider.price_provider_id, usage.input_tokens, usage.output_tokens
        )


def _partial_usage(flight: Flight) -> Usage:
    """Tokens of a call that ended early, estimated from what it produced."""
    progress, call = flight.progress, flight.call
    input_tokens = progress.input_tokens or count_message_tokens(m.content for m in call.messages)
    return Usage(input_tokens, count_text_tokens(progress.text), estimated=True)


def _failed_usage(flight: Flight) -> Usage:
    """A failed call is charged for what it produced before failing; usually nothing."""
    return _partial_usage(flight) if flight.progress.text else Usage(0, 0)
