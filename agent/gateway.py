"""The request pipeline, top to bottom: embed -> route -> semantic cache -> optimiser ->
provider (cascade: local first, then escalate) -> price -> ledger.

``prepare()`` decides who answers (the router's tier, or the cache) and what is sent (the
optimised messages); ``chat()`` / ``stream()`` then deliver. The latest user message is embedded
once and shared by the router and the cache. Every request that reaches this point leaves
exactly one ledger row (ok, error or aborted), plus, when a cascade escalates, one row for the
local attempt that points at it (``parent_id``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.budgets.calibration import held_input_tokens
from agent.budgets.enforcer import Quote
from agent.cache.keys import cache_key
from agent.cache.service import CacheLookup, Embedder, SemanticCache
from agent.chat import ChatCall
from agent.errors import AIFinOpsError, BudgetExceeded, InvalidRequest, PermissionDenied
from agent.gpu.attribution import Activity, ActivityLog
from agent.identity import Caller
from agent.ledger.database import utc_now_iso
from agent.ledger.requests import RequestLog, RequestRecord, Status
from agent.observability.telemetry import OFF, Telemetry, Trace
from agent.pricing.prices import Price, PriceBook, TokenRates
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
from agent.routing.router import TIERS, Decision, Router, RouteSignals, Tier
from agent.settings import CacheSection, RoutingSection

if TYPE_CHECKING:
    from agent.budgets.calibration import InputCalibration
    from agent.budgets.enforcer import Admission, BudgetEnforcer, Reservation
    from agent.budgets.runaway import RunawayWatch

log = logging.getLogger(__name__)

CACHE_PRICE = Price(0, "cache")
# Room left for the chat template's own tokens when fitting history into a local context.
_TEMPLATE_MARGIN_TOKENS = 64
# Prompts longer than this (about 4k tokens) are counted off the event loop, and longer than the
# second (about 1k tokens; its first lossless pass takes up to ~0.5 ms) optimised off it: a shorter
# one costs less than the hop to a worker thread (~0.1 ms).
_OFF_LOOP_CHARS = 16_000
_OFF_LOOP_OPTIMIZE_CHARS = 4_000
_O200K_SHARE_OF_LOCAL_CONTEXT = 0.8
# Worst case held against budgets: the estimate of the prompt plus a margin (held_input_tokens),
# and max_tokens of answer (or this many when the client sets none).
_WORST_CASE_OUTPUT_TOKENS = 4096
# Nearly spent: a grant below the worst case is taken when it pays for at least this many tokens
# of answer (the request's max_tokens is lowered to what the grant pays for).
_MIN_ANSWER_TOKENS = 32


class Optimized(Protocol):
    """What the prompt optimiser returns (agent.optimizer.Optimized)."""

    @property
    def messages(self) -> tuple[Message, ...]: ...
    @property
    def tokens_before(self) -> int: ...
    @property
    def tokens_after(self) -> int: ...
    @property
    def note(self) -> str: ...


class Optimizer(Protocol):
    @property
    def runs_model(self) -> bool: ...  # optimize may run a model: call it off the event loop

    def optimize(
        self, messages: tuple[Message, ...], budget_tokens: int | None = None, *, lossy: bool = True
    ) -> Optimized: ...


@dataclass(frozen=True)
class Terms:
    """What applies to one caller: the agent's settings, with their department's part of the
    policy in force on top (its routing tiers, cache scope and negotiated prices)."""

    router: Router | None
    tier_of: Mapping[str, Tier]  # model -> tier, for the ledger
    cache: CacheSection | None
    prices: Mapping[str, TokenRates]  # model -> the department's negotiated rates


@dataclass(frozen=True)
class Route:
    provider: Provider
    model: str
    route: str  # where it runs: "local" or "cloud" (the provider's kind)
    reason: str
    tier: str = ""  # "local", "cheap" or "strong" when the model is a tier's, else ""
    score: float | None = None  # the router's score, when the router decided


@dataclass
class Flight:
    """One request on its way through the pipeline: who, what, where, and since when."""

    caller: Caller
    call: ChatCall
    route: Route
    cache: CacheLookup
    terms: Terms | None = None  # the caller's department view of settings and policy
    messages: tuple[Message, ...] = ()  # what is sent: the call's messages after the optimiser
    optimized: Optimized | None = None
    escalation: Route | None = None  # cascade: where to go when the local answer is not confident
    admission: Admission | None = None  # what the rate limits counted
    reservation: Reservation | None = None  # the worst case held against the caller's budgets
    expected_input: tuple[str, int] | None = None  # (paid model, input tokens we estimated for it)
    request_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    ts: str = field(default_factory=utc_now_iso)
    started: float = field(default_factory=time.perf_counter)
    progress: CallProgress = field(default_factory=CallProgress)
    trace: Trace | None = None  # its OpenTelemetry span, when tracing is on

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
    more: tuple[tuple[int, str], ...] = ()  # (choice index, finish reason) of choices 1..n-1


class Gateway:
    def __init__(
        self,
        registry: ProviderRegistry,
        prices: PriceBook,
        requests: RequestLog,
        default_model: str,
        cache: SemanticCache | None = None,
        *,
        router: Router | None = None,
        routing: RoutingSection | None = None,
        embedder: Callable[[], Embedder] | None = None,
        optimizer: Optimizer | None = None,
        enforcer: BudgetEnforcer | None = None,
        tiers: Mapping[Tier, str] | None = None,
        activity: ActivityLog | None = None,
        cloud_paused: Callable[[Caller], bool] | None = None,
        calibration: InputCalibration | None = None,
        hold_wait_s: float = 0.0,
        telemetry: Telemetry = OFF,
        runaway: RunawayWatch | None = None,
    ) -> None:
        self._registry = registry
        self._telemetry = telemetry  # metrics and traces
        self._prices = prices
        self._requests = requests
        self._default_model = default_model
        self._cache = cache
        self.router = router
        self._routing = routing or RoutingSection()
        self._embedder = embedder
        self._optimizer = optimizer
        self._enforcer = enforcer
        self._activity = activity  # local computations, for charging GPU busy time to their users
        self._cloud_paused = cloud_paused  # the user chose "local only" in the tray
        self._calibration = calibration  # each model's reported / estimated input tokens
        self._hold_wait_s = hold_wait_s  # how long a request waits for holds in flight to settle
        self._runaway = runaway  # each user's request rate against their usual one
        # Which tier a model belongs to, for the ledger, whoever chose it (router, client, default).
        self._tier_of: dict[str, Tier] = {model: tier for tier, model in (tiers or {}).items() if model}

    # -- deciding ---------------------------------------------------------------------------

    def terms(self, caller: Caller) -> Terms:
        """The settings as they apply to this caller's department under the policy in force."""
        policy = self._enforcer.policy if self._enforcer is not None else None
        department = policy.departments.get(caller.department) if policy is not None else None
        if department is None:
            return Terms(self.router, self._tier_of, self._cache.settings if self._cache is not None else None, {})
        router, tier_of = self.router, self._tier_of
        if department.tiers is not None and router is not None:
            known = set(self._registry.model_names())
            tiers = dict(router.tiers)
            for tier in TIERS:
                model = getattr(department.tiers, tier)
                if model and model in known:
                    tiers[tier] = model
            router = router.with_tiers(tiers)
            tier_of = {model: tier for tier, model in tiers.items()}
        cache = self._cache.settings if self._cache is not None else None
        if cache is not None and department.cache_scope is not None:
            cache = cache.model_copy(update={"scope": department.cache_scope})
        return Terms(router, tier_of, cache, department.price_overrides)

    def route(self, call: ChatCall, decision: Decision | None = None, terms: Terms | None = None) -> Route:
        """The route for a named model, or for the router's decision on an ``auto`` request."""
        router = terms.router if terms is not None else self.router
        tier_of = terms.tier_of if terms is not None else self._tier_of
        if decision is not None and router is not None:
            model = router.tiers[decision.tier]
            reason, score = decision.reason, decision.score
        elif call.requested_model == "auto":
            model, reason, score = self._default_model, "auto -> configured default model (routing off)", None
        else:
            model, reason, score = call.requested_model, "model named by the client", None
        provider = self._registry.resolve(model)
        if (problem := provider.cannot_serve(call.params)) is not None:
            raise InvalidRequest(f"model {model!r} cannot serve this request: {problem}", code="unsupported_parameter")
        return Route(provider, model, provider.kind, reason, tier_of.get(model, ""), score)

    async def prepare(self, caller: Caller, call: ChatCall) -> Flight:
        """Rate limits, embed, route, ask the cache, optimise the prompt, hold the worst case
        against the budgets; nothing is spent or recorded yet."""
        p = call.params
        trace = self._telemetry.begin(call.operation, call.requested_model, p.max_tokens, p.temperature, p.top_p)
        try:
            if self._enforcer is None:
                return await self._prepare(caller, call, None, trace)
            caller = self._enforcer.effective_caller(caller)
            if self._runaway is not None:
                self._runaway.admit(caller.user)  # a user throttled after a runaway
            admission = self._enforcer.admit(caller, await _token_estimate_off_loop(call))
            try:
                return await self._prepare(caller, call, admission, trace)
            except BaseException:
                self._enforcer.settle_tokens(admission, 0)  # refused: its tokens were not used
                raise
        except AIFinOpsError as e:
            self._telemetry.refused(trace, e)
            raise

    async def _prepare(
        self, caller: Caller, call: ChatCall, admission: Admission | None, trace: Trace | None
    ) -> Flight:
        terms = self.terms(caller)
        router = terms.router
        auto = call.requested_model == "auto" and router is not None
        cacheable = terms.cache is not None and not isinstance(cache_key(terms.cache, caller, call, "auto"), str)
        wants_vector = cacheable or (auto and router is not None and router.wants_embedding)
        telemetry = self._telemetry
        vector = None
        if wants_vector:
            with telemetry.stage(trace, "aifinops.embed"):
                vector = await self._embed(call.messages[-1].content)
        with telemetry.stage(trace, "aifinops.route") as span:
            route, escalation = self._decide(caller, call, terms, vector)
            if span is not None:
                span["aifinops.tier"], span["aifinops.model"] = route.tier, route.model
        # Auto requests share cached answers whichever tier gave them: the router chose it.
        lookup = await self._lookup(caller, call, "auto" if auto else route.model, vector, terms.cache, trace)
        flight = Flight(caller, call, route, lookup, terms=terms, messages=call.messages, escalation=escalation)
        flight.admission, flight.trace = admission, trace
        if lookup.hit is None:
            with telemetry.stage(trace, "aifinops.optimize"):
                await self._optimize(flight)
            await self._reserve(flight)
        return flight

    def _decide(
        self, caller: Caller, call: ChatCall, terms: Terms, vector: npt.NDArray[np.float32] | None
    ) -> tuple[Route, Route | None]:
        """The route (router's, named or default, after policy and "Pause cloud") and where a
        cascade escalates to."""
        router = terms.router
        auto = call.requested_model == "auto" and router is not None
        escalation = None
        if auto and router is not None:
            decision = self._allowed_decision(caller, router, router.decide(self._signals(caller, call, vector)))
            decision = self._capable_decision(call, router, decision)
            route = self.route(call, decision, terms)
            escalation = self._cascade_plan(call, route, terms)
            if escalation is not None:
                route = replace(
                    self.route(call, replace(decision, tier="local"), terms),
                    reason=f"{decision.reason}; cascade: local answers first",
                )
        else:
            route = self.route(call, terms=terms)
            if self._enforcer is not None:
                self._enforcer.check_model(caller, route.model)
        if self._cloud_paused is not None and route.provider.kind == "cloud" and self._cloud_paused(caller):
            local = self._local_tier_model(terms)
            if not auto or local is None:
                raise PermissionDenied(
                    f"you paused cloud models (tray menu: Pause cloud); {route.model!r} is a cloud model",
                    code="cloud_paused",
                )
            route = replace(self.route(replace(call, requested_model=local), terms=terms),
                            reason="cloud paused by you -> local")  # fmt: skip
            escalation = None
        return route, escalation

    def _allowed_decision(self, caller: Caller, router: Router, decision: Decision) -> Decision:
        """The router's tier, or the nearest one (cheaper first) the caller's policy allows."""
        enforcer = self._enforcer
        if enforcer is None or enforcer.model_allowed(caller, router.tiers[decision.tier]):
            return decision
        tiers = list(router.tiers)
        at = tiers.index(decision.tier)
        for tier in [*reversed(tiers[:at]), *tiers[at + 1 :]]:
            if enforcer.model_allowed(caller, router.tiers[tier]):
                return replace(decision, tier=tier, reason=f"{decision.reason}; not allowed by policy -> {tier}")
        raise PermissionDenied(
            f"no tier's model is allowed for department {caller.department!r} by policy", code="model_not_allowed"
        )

    def _capable_decision(self, call: ChatCall, router: Router, decision: Decision) -> Decision:
        """The router's tier, or the cheapest tier above it whose model can serve the call (tools
        or a response format the local model cannot do go to the cloud)."""
        tiers = list(router.tiers)
        problem = why = None
        for tier in tiers[tiers.index(decision.tier) :]:
            problem = self._registry.resolve(router.tiers[tier]).cannot_serve(call.params)
            if problem is None:
                if tier == decision.tier:
                    return decision
                reason = f"{decision.reason}; {decision.tier} cannot: {why} -> {tier}"
                return replace(decision, tier=tier, reason=reason)
            why = problem
        raise InvalidRequest(f"no tier's model can serve this request: {problem}", code="unsupported_parameter")

    async def _reserve(self, flight: Flight) -> None:
        """Hold the worst case of the paid call against the caller's budgets, waiting a bounded
        time for calls in flight to settle. Nearly spent: a smaller grant with ``max_tokens``
        lowered to what it pays for. Over a hard budget: ``block`` refuses (402); ``downgrade``
        answers from the local tier instead."""
        enforcer = self._enforcer
        paid = flight.escalation or flight.route
        if enforcer is None or paid.provider.kind == "local":
            return  # local answers are never blocked by a money budget
        call = flight.call
        expected = prompt_tokens(flight.messages, call.params)
        output_tokens = (call.params.max_tokens or _WORST_CASE_OUTPUT_TOKENS) * call.params.n
        flight.expected_input = (paid.model, expected)
        if enforcer.policy is None:
            return  # no budgets in force, nothing to hold; the estimate still calibrates the model
        held_input = 0

        def quote() -> Quote:
            nonlocal held_input
            ratio = self._calibration.ratio(paid.model) if self._calibration is not None else Fraction(1)
            held_input = held_input_tokens(expected, ratio)
            worst = self._token_price(flight, paid, held_input, output_tokens).cost_micro_usd
            short = min(output_tokens, _MIN_ANSWER_TOKENS)
            floor = self._token_price(flight, paid, held_input, short).cost_micro_usd
            # Not calibrated: one call at a time learns the model's ratio.
            return Quote(worst or 0, floor, exclusive=ratio is None)

        if self._token_price(flight, paid, 1, 1).cost_micro_usd is None:
            if enforcer.charges(flight.caller, call.feature):
                raise PermissionDenied(
                    f"model {paid.model!r} has no known price, so budgets cannot be enforced on it: "
                    "an admin can add a price override",
                    code="unpriced_model",
                )
            return
        try:
            with self._telemetry.stage(flight.trace, "aifinops.budget_hold"):
                flight.reservation = await enforcer.reserve_waiting(
                    flight.caller, call.feature, flight.request_id, quote, wait_s=self._hold_wait_s
                )
        except BudgetExceeded as e:
            local = self._local_tier_model(flight.terms)
            if e.code != "downgrade" or local is None:
                raise
            name = e.budget.get("name", "?")
            reason = f"budget {name!r} exhausted -> local tier instead of {paid.model}"
            flight.route = replace(self.route(replace(call, requested_model=local), terms=flight.terms), reason=reason)
            flight.escalation = None
            flight.expected_input = None
            await self._optimize(flight)
            return
        if flight.reservation.capped:
            self._cap_answer(flight, paid, held_input, flight.reservation.amount)

    def _cap_answer(self, flight: Flight, paid: Route, input_tokens: int, grant_micro_usd: int) -> None:
        """Lower ``max_tokens`` to the answer the grant pays for, after the input's cost."""
        input_cost = self._token_price(flight, paid, input_tokens, 0).cost_micro_usd or 0
        million_out = self._token_price(flight, paid, 0, 1_000_000).cost_micro_usd or 0
        asked = flight.call.params.max_tokens or _WORST_CASE_OUTPUT_TOKENS
        tokens = asked if million_out == 0 else min(asked, (grant_micro_usd - input_cost) * 1_000_000 // million_out)
        tokens = max(tokens, 1)
        flight.call = replace(flight.call, params=replace(flight.call.params, max_tokens=tokens))
        note = f"budget nearly spent: answer capped at {tokens} tokens"
        flight.route = replace(flight.route, reason=f"{flight.route.reason}; {note}")
        if flight.escalation is not None:
            flight.escalation = replace(flight.escalation, reason=f"{flight.escalation.reason}; {note}")

    def _local_tier_model(self, terms: Terms | None) -> str | None:
        for model, tier in (terms.tier_of if terms is not None else self._tier_of).items():
            if tier == "local":
                return model
        return None

    def _signals(self, caller: Caller, call: ChatCall, vector: npt.NDArray[np.float32] | None) -> RouteSignals:
        return RouteSignals(
            prompt=call.messages[-1].content,
            prompt_tokens=count_message_tokens(m.content for m in call.messages),
            user_turns=sum(m.role == "user" for m in call.messages),
            max_tokens=call.params.max_tokens,
            embedding=vector,
            budget_used=self._enforcer.used_fraction(caller, call.feature) if self._enforcer else None,
        )

    def _cascade_plan(self, call: ChatCall, route: Route, terms: Terms) -> Route | None:
        """Where a cascade escalates to, when this request should try the local tier first."""
        routing, router = self._routing, terms.router
        if not routing.cascade or router is None or call.params.passthrough:
            return None
        target = routing.cascade_to
        if "local" not in router.tiers or target not in router.tiers:
            return None
        if route.tier not in TIERS or TIERS.index(route.tier) > TIERS.index(target):
            return None  # the router sent it above the cascade: no local attempt
        return self.route(call, Decision(target, route.score, route.reason, "model"), terms)

    async def _embed(self, text: str) -> npt.NDArray[np.float32] | None:
        """The latest user message's embedding, computed once for the router and the cache."""
        if self._embedder is None or not text.strip():
            return None
        embedder = self._embedder
        try:
            # ONNX releases the GIL: off the event loop, in the default pool.
            return await asyncio.get_running_loop().run_in_executor(None, lambda: embedder().embed([text])[0])
        except Exception:  # routing falls back to rules and the cache to a miss; logged with traceback
            log.exception("embedding the question failed; routing by rules, no cache")
            return None

    async def _lookup(
        self,
        caller: Caller,
        call: ChatCall,
        model: str,
        vector: npt.NDArray[np.float32] | None,
        settings: CacheSection | None,
        trace: Trace | None = None,
    ) -> CacheLookup:
        cache = self._cache
        if cache is None or settings is None:
            return CacheLookup("bypass", reason="no cache")
        with self._telemetry.stage(trace, "aifinops.cache") as span:
            key = cache_key(settings, caller, call, model)
            if isinstance(key, str):
                lookup = CacheLookup("bypass", reason=key)
            else:
                # Embedding (if not given) and search run off the event loop (ONNX and numba release the GIL).
                try:
                    lookup = await asyncio.get_running_loop().run_in_executor(None, cache.lookup, key, vector)
                except Exception:  # the cache saves money; it must never fail a request (logged with traceback)
                    log.exception("semantic cache lookup failed; answering without the cache")
                    lookup = CacheLookup("bypass", reason="cache unavailable")
            if span is not None:
                span["aifinops.cache"] = lookup.status
        return lookup

    async def _optimize(self, flight: Flight) -> None:
        """Fewer tokens for the same answer, fitted to the model that will read them."""
        if self._optimizer is None:
            flight.messages, flight.optimized = flight.call.messages, None
            return
        optimizer, messages = self._optimizer, flight.call.messages
        budget = self._history_budget(flight.route, flight.call)
        loop = asyncio.get_running_loop()
        try:
            if not optimizer.runs_model and _short(messages, _OFF_LOOP_OPTIMIZE_CHARS):
                optimized = optimizer.optimize(messages, budget)
            else:  # the lossy step runs a model, and a long prompt holds the loop: off the event loop
                optimized = await loop.run_in_executor(None, optimizer.optimize, messages, budget)
        except AIFinOpsError as e:  # the lossy step's scoring model is unusable: lossless only
            log.warning("lossy prompt compression skipped: %s", e.message)
            optimized = await loop.run_in_executor(None, lambda: optimizer.optimize(messages, budget, lossy=False))
        except Exception:  # an optimiser bug must not cost the answer: send the prompt as it came
            log.exception("the prompt optimiser failed; sending the prompt unchanged")
            flight.messages, flight.optimized = messages, None
            return
        flight.messages, flight.optimized = optimized.messages, optimized

    @staticmethod
    def _history_budget(route: Route, call: ChatCall) -> int | None:
        """Tokens the conversation may take: a local model's context minus the answer's room."""
        config = getattr(route.provider, "config", None)
        n_ctx, cap = getattr(config, "n_ctx", None), getattr(config, "max_tokens", None)
        if not isinstance(n_ctx, int) or not isinstance(cap, int):
            return None
        answer = min(call.params.max_tokens or cap, cap)
        # The optimiser counts o200k tokens; the local tokenizer needs up to ~15% more for the same text.
        return max(int((n_ctx - answer - _TEMPLATE_MARGIN_TOKENS) * _O200K_SHARE_OF_LOCAL_CONTEXT), 1)

    # -- delivering -------------------------------------------------------------------------

    async def chat(self, flight: Flight) -> ChatResult:
        if (hit := flight.cache.hit) is not None:
            self._record_hit(flight)
            entry = hit.entry
            return ChatResult(flight, Completion(entry.answer, entry.finish_reason, Usage(0, 0)), CACHE_PRICE)
        if flight.escalation is not None and (kept := await self._cascade_local(flight)) is not None:
            return kept
        route, call = flight.route, flight.call
        try:
            with self._provider_stage(flight):
                completion = await route.provider.complete(route.model, flight.messages, call.params, flight.progress)
        except AIFinOpsError as e:
            self._record(flight, "error", _failed_usage(flight), e.error_type)
            raise
        except asyncio.CancelledError:  # the client left, or the agent is shutting down
            self._record(flight, "aborted", _partial_usage(flight))
            raise
        self._telemetry.content(flight.trace, flight.messages, completion.text)
        price = self._record(flight, "ok", completion.usage)
        if not completion.more and not completion.tool_calls:  # the cache keeps one text answer
            await self._store(flight, completion.text, completion.finish_reason, completion.usage, price)
        return ChatResult(flight, completion, price)

    async def stream(self, flight: Flight) -> AsyncGenerator[Delta | StreamSummary, None]:
        """Deltas, then one StreamSummary. Records the row however the stream ends."""
        if (hit := flight.cache.hit) is not None:
            self._record_hit(flight)
            yield Delta(hit.entry.answer)
            yield StreamSummary(hit.entry.finish_reason, Usage(0, 0), CACHE_PRICE)
            return
        if flight.escalation is not None:
            # The client sees only the final answer's stream: the local attempt is not streamed.
            if (kept := await self._cascade_local(flight)) is not None:
                yield Delta(kept.completion.text)
                yield StreamSummary(kept.completion.finish_reason, kept.completion.usage, kept.price)
                return
        route, call = flight.route, flight.call
        recorded = first = False
        try:
            with self._provider_stage(flight):
                async for event in route.provider.stream(route.model, flight.messages, call.params, flight.progress):
                    if not first and not isinstance(event, StreamEnd):
                        first = True
                        self._telemetry.first_token(route.route, time.perf_counter() - flight.started)
                    if isinstance(event, StreamEnd):
                        recorded = True
                        self._telemetry.content(flight.trace, flight.messages, flight.progress.text)
                        price = self._record(flight, "ok", event.usage)
                        if not event.more and not flight.progress.tool_calls:
                            await self._store(flight, flight.progress.text, event.finish_reason, event.usage, price)
                        yield StreamSummary(event.finish_reason, event.usage, price, event.more)
                    else:
                        yield event
        except AIFinOpsError as e:
            recorded = True
            self._record(flight, "error", _failed_usage(flight), e.error_type)
            raise
        finally:
            if not recorded:  # the client went away, or the agent is shutting down
                self._record(flight, "aborted", _partial_usage(flight))

    async def _cascade_local(self, flight: Flight) -> ChatResult | None:
        """The cascade's first step: the local answer if it is confident, else None (escalated).

        Either way the local call is recorded: as the request's row when kept, as a row of its
        own (``parent_id`` = the request) when the request escalates.
        """
        escalation, local, call = flight.escalation, flight.route, flight.call
        assert escalation is not None  # noqa: S101 - only called for a cascade
        flight.escalation = None
        threshold = self._routing.cascade_threshold
        try:
            with self._provider_stage(flight):
                completion = await local.provider.complete(local.model, flight.messages, call.params, flight.progress)
        except asyncio.CancelledError:
            self._record(flight, "aborted", _partial_usage(flight))
            raise
        except AIFinOpsError as e:  # e.g. the prompt does not fit the local context: escalate
            self._record_attempt(flight, "error", _failed_usage(flight), e.error_type, f"local failed ({e.code})")
            why = f"local failed ({e.code})"
        else:
            confidence = flight.progress.confidence
            if (
                confidence is not None
                and confidence >= threshold
                and completion.finish_reason in ("stop", "length")
                and completion.text.strip()
            ):
                flight.route = replace(local, reason=f"{local.reason}; confidence {confidence:.2f} >= {threshold:.2f}")
                price = self._record(flight, "ok", completion.usage)
                await self._store(flight, completion.text, completion.finish_reason, completion.usage, price)
                return ChatResult(flight, completion, price)
            shown = "unknown" if confidence is None else f"{confidence:.2f}"
            why = f"confidence {shown} < {threshold:.2f}"
            self._record_attempt(flight, "ok", completion.usage, "", why)
        flight.route = replace(escalation, reason=f"{local.reason}; {why} -> escalated to {escalation.tier}")
        flight.progress = CallProgress()
        if escalation.provider is not local.provider:
            await self._optimize(flight)  # fit the prompt to the model that now answers
        return None

    def _record_attempt(self, flight: Flight, status: Status, usage: Usage, error_type: str, why: str) -> None:
        """A cascade's local call that did not answer: its own row, pointing at the request."""
        price = self._price(flight, usage)
        row = self._row(flight, status, usage, price, error_type)
        if self._enforcer is not None:  # the local attempt's cost counts; the hold stays for the escalation
            at = datetime.fromisoformat(flight.ts)
            self._enforcer.settle(None, flight.caller, flight.call.feature, at, price.cost_micro_usd)
        attempt = replace(
            row,
            id=f"{flight.request_id}-local",
            parent_id=flight.request_id,
            reason=f"{flight.route.reason}; {why} -> escalated",
        )
        self._requests.record(attempt)
        self._telemetry.recorded(flight.trace, attempt, final=False)
        self._note_activity(flight)

    async def _store(self, flight: Flight, text: str, finish_reason: str, usage: Usage, price: Price) -> None:
        """Keep a complete answer for the next similar question."""
        lookup = flight.cache
        if self._cache is None or lookup.key is None or lookup.vector is None:
            return
        if finish_reason not in ("stop", "length") or not text.strip():
            return
        if flight.reservation is not None and flight.reservation.capped:
            return  # cut short by the budget: not the answer the client's limit asked for
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

    # -- recording --------------------------------------------------------------------------

    def _record_hit(self, flight: Flight) -> None:
        hit = flight.cache.hit
        assert hit is not None  # noqa: S101 - only called on a hit
        saved = hit.entry.cost_micro_usd
        verified = "" if hit.verifier_score is None else f", verifier {hit.verifier_score:.3f}"
        unknown = "" if saved is not None else ", saving unknown"
        reason = f"cache hit, similarity {hit.similarity:.3f}{verified}{unknown}"
        self._settle(flight, 0, 0)
        row = replace(
            self._row(flight, "ok", Usage(0, 0), CACHE_PRICE),
            model=hit.entry.model,
            provider="cache",
            route="cache",
            tier="",
            reason=reason,
            cost_saved_micro_usd=saved or 0,
            cache_hit=True,
            attempts=0,
            prompt_tokens_before=None,
            prompt_tokens_after=None,
        )
        self._requests.record(row)
        self._telemetry.content(flight.trace, flight.messages, hit.entry.answer)
        self._telemetry.recorded(flight.trace, row, cache_status="hit", routed=flight.call.requested_model == "auto")

    def _record(self, flight: Flight, status: Status, usage: Usage, error_type: str = "") -> Price:
        """Price the call, write its one ledger row, then settle its budget hold and rate tokens."""
        price = self._price(flight, usage)
        row = self._row(flight, status, usage, price, error_type)
        # Budgets first: their totals load from the ledger on first use, which must not see this
        # row yet. Should the write below fail, the spend stays counted (the safe side).
        self._settle(flight, price.cost_micro_usd, usage.input_tokens + usage.output_tokens)
        self._requests.record(row)
        if self._runaway is not None:
            self._runaway.observe(row.user_name, row.department, row.feature, row.model)
        self._telemetry.recorded(flight.trace, row, cache_status=flight.cache.status,
                                 routed=flight.call.requested_model == "auto",
                                 provider_id=flight.route.provider.price_provider_id)  # fmt: skip
        self._note_activity(flight)
        if status == "ok" and self._calibration is not None and row.input_tokens_expected and not usage.estimated:
            self._calibration.observe(row.model, row.input_tokens_expected, usage.input_tokens)
        return price

    def _provider_stage(self, flight: Flight) -> AbstractContextManager[Any]:
        """The provider call's span: a client span named like the request's."""
        route = flight.route
        attributes = {"gen_ai.provider.name": route.provider.price_provider_id or route.provider.name,
                      "gen_ai.request.model": route.model, "aifinops.route": route.route}  # fmt: skip
        return self._telemetry.stage(flight.trace, f"aifinops.provider {route.model}", **attributes)

    def _note_activity(self, flight: Flight) -> None:
        progress = flight.progress
        if self._activity is None or flight.route.provider.kind != "local" or progress.compute_started_unix is None:
            return
        start = progress.compute_started_unix
        caller = flight.caller
        self._activity.add(Activity(caller.user, caller.department, start, start + progress.compute_s))

    def _settle(self, flight: Flight, cost_micro_usd: int | None, tokens: int) -> None:
        if self._enforcer is None:
            return
        at = datetime.fromisoformat(flight.ts)
        self._enforcer.settle(flight.reservation, flight.caller, flight.call.feature, at, cost_micro_usd)
        if flight.admission is not None:
            self._enforcer.settle_tokens(flight.admission, tokens)

    def _row(self, flight: Flight, status: Status, usage: Usage, price: Price, error_type: str = "") -> RequestRecord:
        route, call, optimized = flight.route, flight.call, flight.optimized
        saved = self._optimizer_saving(flight) if status == "ok" else 0
        paid = flight.expected_input
        expected = paid[1] if paid is not None and paid[0] == route.model else None
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
            cost_saved_micro_usd=saved,
            cache_hit=False,
            latency_ms=round((time.perf_counter() - flight.started) * 1000),
            status=status,
            error_type=error_type,
            stream=call.stream,
            attempts=max(flight.progress.attempts, 1),
            tier=route.tier,
            route_score=route.score,
            confidence=None if flight.progress.confidence is None else round(flight.progress.confidence, 4),
            prompt_tokens_before=optimized.tokens_before if optimized else None,
            prompt_tokens_after=optimized.tokens_after if optimized else None,
            optimizer_note=optimized.note if optimized else "",
            model_load_ms=round(flight.progress.load_s * 1000) if flight.progress.load_s else None,
            input_tokens_expected=expected,
            hold_micro_usd=flight.reservation.amount if flight.reservation is not None else None,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            provider_cache_saved_micro_usd=price.provider_cache_saved_micro_usd,
        )

    def _optimizer_saving(self, flight: Flight) -> int:
        """What the tokens the optimiser removed would have cost at this model's input price."""
        route, optimized = flight.route, flight.optimized
        if optimized is None or route.provider.kind == "local" or optimized.tokens_after >= optimized.tokens_before:
            return 0
        price = self._token_price(flight, route, optimized.tokens_before - optimized.tokens_after, 0)
        return price.cost_micro_usd or 0

    def _price(self, flight: Flight, usage: Usage) -> Price:
        route = flight.route
        if route.provider.kind == "local":
            return self._prices.for_compute(flight.progress.compute_s, route.provider.usd_per_hour)
        if usage.input_tokens == 0 and usage.output_tokens == 0:
            return Price(0, "no-usage")
        return self._usage_price(flight, route, usage)

    def _token_price(self, flight: Flight, route: Route, input_tokens: int, output_tokens: int) -> Price:
        """Plain tokens (holds, estimates) at the prices ``_usage_price`` uses."""
        return self._usage_price(flight, route, Usage(input_tokens, output_tokens))

    def _usage_price(self, flight: Flight, route: Route, usage: Usage) -> Price:
        """The department's negotiated rates when the policy has them, else the agent's prices;
        the provider's cached input at its own rate."""
        rates = flight.terms.prices.get(route.model) if flight.terms is not None else None
        return self._prices.for_usage(route.model, route.provider.price_provider_id, usage, negotiated=rates)


async def _token_estimate_off_loop(call: ChatCall) -> int:
    """``_token_estimate``, counted on a worker thread when the prompt is long: tokenising 10k
    tokens holds the event loop (every other request) for a couple of milliseconds. The count is
    kept (agent.pricing.tokens), so the router, the optimiser and the budget hold reuse it."""
    if _short(call.messages, _OFF_LOOP_CHARS):
        return _token_estimate(call)
    return await asyncio.to_thread(_token_estimate, call)


def _short(messages: tuple[Message, ...], chars: int) -> bool:
    return sum(len(m.content) for m in messages) < chars


def _token_estimate(call: ChatCall) -> int:
    """Tokens a request is admitted on by the token rate limits (corrected when it ends)."""
    return prompt_tokens(call.messages, call.params) + (call.params.max_tokens or 256) * call.params.n


def prompt_tokens(messages: tuple[Message, ...], params: ChatParams) -> int:
    """The o200k estimate of what a request sends: its messages, their tool calls, the tool schemas
    and the response format's schema (all count as input where the provider bills them)."""
    parts = [m.content for m in messages]
    parts += [f"{c.name} {c.arguments}" for m in messages for c in m.tool_calls]
    extra = [params.option(name) for name in ("tools", "response_format")]
    parts += [json.dumps(value) for value in extra if value is not None]
    return count_message_tokens(parts)


def _partial_usage(flight: Flight) -> Usage:
    """Tokens of a call that ended early, estimated from what it produced."""
    progress = flight.progress
    input_tokens = progress.input_tokens or prompt_tokens(flight.messages, flight.call.params)
    return Usage(input_tokens, count_text_tokens(progress.text), estimated=True)


def _failed_usage(flight: Flight) -> Usage:
    """A failed call is charged for what it produced before failing; usually nothing."""
    return _partial_usage(flight) if flight.progress.text else Usage(0, 0)
