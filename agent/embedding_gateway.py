"""Embeddings through the same gates as chat: the caller's department under the policy, the
model allow-list, rate limits, a budget hold for cloud models, one ledger row, settled spend.

The steps are chat's (``agent.gateway``), with the enforcer's own calls: ``admit`` then
``settle_tokens``; ``reserve_waiting`` with a quote sized like a chat prompt's
(``held_input_tokens``) and ``settle`` with the real cost after the row is priced. What differs:

- no router, cache or prompt optimiser: the client names the model, and an embedding of another
  model's space would be useless to it. For the same reason a ``downgrade`` budget refuses an
  embeddings call (402) instead of answering from a local model.
- nothing to cap: a call embeds all its inputs or none, so a hold is all or nothing.
- the local model is the semantic cache's ONNX embedder, priced by compute time like local chat.

A request refused before it reaches a model (unknown model, bad input, rate limit, budget)
leaves no row; one that reaches a model leaves exactly one (ok, error or aborted).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from agent.budgets.calibration import held_input_tokens
from agent.budgets.enforcer import Quote
from agent.errors import AIFinOpsError, ConfigError, InvalidRequest, ModelNotFound, PermissionDenied
from agent.identity import Caller
from agent.ledger.database import utc_now_iso
from agent.ledger.requests import RequestLog, RequestRecord, Status
from agent.observability.telemetry import OFF, Telemetry, Trace
from agent.pricing.prices import Price, PriceBook
from agent.pricing.tokens import count_embedding_tokens
from agent.providers.base import CallProgress, EmbeddingInputs, EmbeddingProvider, Usage
from agent.providers.registry import ProviderRegistry

if TYPE_CHECKING:
    from agent.budgets.calibration import InputCalibration
    from agent.budgets.enforcer import Admission, BudgetEnforcer, Reservation
    from agent.gateway import Terms

# OpenAI's limit on inputs per request.
MAX_INPUTS = 2048


@dataclass(frozen=True)
class EmbeddingCall:
    """One embeddings request as the pipeline sees it, after the API layer validated it."""

    requested_model: str
    inputs: EmbeddingInputs
    dimensions: int | None = None
    feature: str = ""


@dataclass(frozen=True)
class EmbeddingResult:
    request_id: str
    model: str
    route: str  # "local" or "cloud"
    vectors: npt.NDArray[np.float32]  # (inputs, dimensions), in input order
    usage: Usage
    price: Price


@dataclass
class _Flight:
    caller: Caller
    call: EmbeddingCall
    provider: EmbeddingProvider
    admission: Admission | None = None
    reservation: Reservation | None = None
    expected_input: int | None = None  # cloud: the input tokens we estimated (calibration)
    request_id: str = field(default_factory=lambda: f"embd-{uuid.uuid4().hex}")
    ts: str = field(default_factory=utc_now_iso)
    started: float = field(default_factory=time.perf_counter)
    progress: CallProgress = field(default_factory=CallProgress)
    trace: Trace | None = None  # its OpenTelemetry span, when tracing is on


class EmbeddingGateway:
    def __init__(
        self,
        registry: ProviderRegistry,
        prices: PriceBook,
        requests: RequestLog,
        *,
        local: EmbeddingProvider | None = None,
        enforcer: BudgetEnforcer | None = None,
        terms: Callable[[Caller], Terms] | None = None,
        cloud_paused: Callable[[Caller], bool] | None = None,
        calibration: InputCalibration | None = None,
        hold_wait_s: float = 0.0,
        telemetry: Telemetry = OFF,
    ) -> None:
        if local is not None and local.name in registry.model_names():
            raise ConfigError(f"model name {local.name!r} is the local embedding model's and is configured again")
        self._registry = registry
        self._prices = prices
        self._requests = requests
        self._local = local  # its name is its model's name
        self._enforcer = enforcer
        self._terms = terms  # the caller's department view: its negotiated prices
        self._cloud_paused = cloud_paused
        self._calibration = calibration
        self._hold_wait_s = hold_wait_s
        self._telemetry = telemetry

    def models(self) -> tuple[str, ...]:
        """The embedding models of the agent itself (cloud endpoints list theirs)."""
        return (self._local.name,) if self._local is not None else ()

    def resolve(self, model: str) -> EmbeddingProvider:
        if self._local is not None and model == self._local.name:
            return self._local
        try:
            provider = self._registry.resolve(model)
        except ModelNotFound:
            raise ModelNotFound(
                f"model {model!r} is not configured here; embedding models: {self._known()}",
                code="model_not_found",
            ) from None
        if not isinstance(provider, EmbeddingProvider):
            raise InvalidRequest(
                f"model {model!r} is a chat model and makes no embeddings; embedding models: {self._known()}",
                code="model_not_supported",
                param="model",
            )
        return provider

    def _known(self) -> str:
        cloud = [m for p in self._registry.providers if isinstance(p, EmbeddingProvider) for m in p.models()]
        return ", ".join([*self.models(), *cloud]) or "none"

    # -- the pipeline ------------------------------------------------------------------------

    async def embed(self, caller: Caller, call: EmbeddingCall) -> EmbeddingResult:
        trace = self._telemetry.begin("embeddings", call.requested_model)
        estimate = await asyncio.to_thread(count_embedding_tokens, call.inputs)  # up to a MiB of text
        enforcer = self._enforcer
        admission = None
        try:
            if enforcer is not None:
                caller = enforcer.effective_caller(caller)
                admission = enforcer.admit(caller, estimate)
            try:
                flight = await self._prepare(caller, call, estimate)
            except BaseException:
                if enforcer is not None and admission is not None:
                    enforcer.settle_tokens(admission, 0)  # refused: its tokens were not used
                raise
        except AIFinOpsError as e:
            self._telemetry.refused(trace, e)
            raise
        flight.admission, flight.trace = admission, trace
        return await self._deliver(flight)

    async def _prepare(self, caller: Caller, call: EmbeddingCall, estimate: int) -> _Flight:
        """Everything that may refuse the call before a model sees it; nothing recorded yet."""
        model = call.requested_model
        provider = self.resolve(model)
        if self._enforcer is not None:
            self._enforcer.check_model(caller, model)
        if provider.kind == "cloud" and self._cloud_paused is not None and self._cloud_paused(caller):
            raise PermissionDenied(
                f"you paused cloud models (tray menu: Pause cloud); {model!r} is a cloud model", code="cloud_paused"
            )
        await provider.check(model, call.inputs, call.dimensions)
        flight = _Flight(caller, call, provider)
        await self._reserve(flight, estimate)
        return flight

    async def _reserve(self, flight: _Flight, estimate: int) -> None:
        """Hold the worst case of a cloud call against the caller's budgets (local calls are never
        blocked by a money budget, as in chat). A spent budget refuses any paid call: the hold is
        at least one micro-USD, however cheap the embedding."""
        enforcer, provider, call = self._enforcer, flight.provider, flight.call
        if enforcer is None or provider.kind == "local":
            return
        model = call.requested_model
        flight.expected_input = estimate
        if self._token_price(flight, 1).cost_micro_usd is None:
            if enforcer.charges(flight.caller, call.feature):
                raise PermissionDenied(
                    f"model {model!r} has no known price, so budgets cannot be enforced on it: "
                    "an admin can add a price override",
                    code="unpriced_model",
                )
            return

        def quote() -> Quote:
            ratio = self._calibration.ratio(model) if self._calibration is not None else Fraction(1)
            worst = self._token_price(flight, held_input_tokens(estimate, ratio)).cost_micro_usd or 0
            return Quote(max(worst, 1), None, exclusive=ratio is None)

        flight.reservation = await enforcer.reserve_waiting(
            flight.caller, call.feature, flight.request_id, quote, wait_s=self._hold_wait_s
        )

    async def _deliver(self, flight: _Flight) -> EmbeddingResult:
        provider, call = flight.provider, flight.call
        try:
            with self._telemetry.stage(flight.trace, f"aifinops.provider {call.requested_model}"):
                embedded = await provider.embed(call.requested_model, call.inputs, call.dimensions, flight.progress)
        except AIFinOpsError as e:
            self._record(flight, "error", Usage(0, 0), e.error_type)
            raise
        except asyncio.CancelledError:  # the client left, or the agent is shutting down
            expected = flight.expected_input or 0
            self._record(flight, "aborted", Usage(flight.progress.input_tokens or expected, 0, estimated=True))
            raise
        usage = embedded.usage
        price = self._record(flight, "ok", usage)
        if self._calibration is not None and flight.expected_input and not usage.estimated:
            self._calibration.observe(call.requested_model, flight.expected_input, usage.input_tokens)
        return EmbeddingResult(flight.request_id, call.requested_model, provider.kind, embedded.vectors, usage, price)

    # -- recording ---------------------------------------------------------------------------

    def _record(self, flight: _Flight, status: Status, usage: Usage, error_type: str = "") -> Price:
        """Price the call, settle its hold and rate tokens, then write its one ledger row."""
        price = self._price(flight, usage)
        # Budgets first: their totals load from the ledger on first use, which must not see this
        # row yet (as in chat).
        if self._enforcer is not None:
            at = datetime.fromisoformat(flight.ts)
            self._enforcer.settle(flight.reservation, flight.caller, flight.call.feature, at, price.cost_micro_usd)
            if flight.admission is not None:
                self._enforcer.settle_tokens(flight.admission, usage.input_tokens)
        row = self._row(flight, status, usage, price, error_type)
        self._requests.record(row)
        self._telemetry.recorded(flight.trace, row, provider_id=flight.provider.price_provider_id)
        return price

    def _price(self, flight: _Flight, usage: Usage) -> Price:
        if flight.provider.kind == "local":
            return self._prices.for_compute(flight.progress.compute_s, flight.provider.usd_per_hour)
        if usage.input_tokens == 0:
            return Price(0, "no-usage")
        return self._token_price(flight, usage.input_tokens)

    def _token_price(self, flight: _Flight, input_tokens: int) -> Price:
        """Input tokens only; the department's negotiated rates when the policy has them."""
        model = flight.call.requested_model
        rates = self._terms(flight.caller).prices.get(model) if self._terms is not None else None
        provider_id = flight.provider.price_provider_id
        return self._prices.for_tokens(model, provider_id, input_tokens, 0, negotiated=rates)

    def _row(self, flight: _Flight, status: Status, usage: Usage, price: Price, error_type: str) -> RequestRecord:
        call, provider, caller, progress = flight.call, flight.provider, flight.caller, flight.progress
        count = len(call.inputs)
        return RequestRecord(
            id=flight.request_id,
            ts=flight.ts,
            user_id=caller.user_id,
            user_name=caller.user,
            department=caller.department,
            feature=call.feature,
            requested_model=call.requested_model,
            model=call.requested_model,
            provider=provider.name,
            route=provider.kind,
            reason=f"embeddings of {count} input{'s' if count != 1 else ''}, model named by the client",
            input_tokens=usage.input_tokens,
            output_tokens=0,
            tokens_estimated=usage.estimated,
            cost_micro_usd=price.cost_micro_usd,
            price_source=price.source,
            cost_saved_micro_usd=0,
            cache_hit=False,
            latency_ms=round((time.perf_counter() - flight.started) * 1000),
            status=status,
            error_type=error_type,
            stream=False,
            attempts=max(progress.attempts, 1),
            model_load_ms=round(progress.load_s * 1000) or None,
            input_tokens_expected=flight.expected_input,
            hold_micro_usd=flight.reservation.amount if flight.reservation is not None else None,
        )
