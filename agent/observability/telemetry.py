"""What the request pipeline tells the outside about itself: Prometheus metrics and
OpenTelemetry traces behind one small interface, so the gateways call the same few methods
whether both, one or neither is on. Off, each call is a test of ``None``.

A request's trace starts when the gateway takes it (``begin``), gets a child span per stage
(``stage``: embed, route, cache, optimise, budget hold, provider) and ends when its ledger row
is written (``recorded``) or when it is refused before any model ran (``refused``). Every ledger
row feeds the metrics, so they agree with the ledger.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.money import format_usd

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from agent.errors import AIFinOpsError
    from agent.ledger.requests import RequestRecord
    from agent.observability.metrics import Metrics
    from agent.observability.tracing import Tracing
    from agent.providers.base import Message

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format
# Ledger provider and route -> gen_ai.provider.name (the conventions' well-known values).
_CACHE_PROVIDER = "aifinops.cache"
_LOCAL_PROVIDER = "llama.cpp"


@dataclass
class Trace:
    """One request's root span and what its attributes need at the end."""

    span: Span
    operation: str  # gen_ai.operation.name: chat, text_completion, embeddings
    started: float = field(default_factory=time.perf_counter)


class Telemetry:
    def __init__(self, metrics: Metrics | None = None, tracing: Tracing | None = None) -> None:
        self.metrics = metrics
        self.tracing = tracing

    # -- traces ----------------------------------------------------------------------------------

    def begin(
        self,
        operation: str,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
    ) -> Trace | None:
        if self.tracing is None:
            return None
        span = self.tracing.start(f"{operation} {model}", client=True)
        span.set_attributes({"gen_ai.operation.name": operation, "gen_ai.request.model": model})
        requested = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        span.set_attributes({f"gen_ai.request.{k}": v for k, v in requested.items() if v is not None})
        return Trace(span, operation)

    @contextmanager
    def stage(self, trace: Trace | None, name: str, **attributes: Any) -> Iterator[Span | None]:
        """A child span around one stage of the request (nothing when tracing is off)."""
        if trace is None or self.tracing is None:
            yield None
            return
        span = self.tracing.start(name, trace.span)
        for key, value in attributes.items():
            span.set_attribute(key, value)
        try:
            yield span
        except BaseException as e:
            _error(span, type(e).__name__)
            raise
        finally:
            span.end()

    def content(self, trace: Trace | None, messages: Sequence[Message], answer: str | None) -> None:
        """Prompt and answer on the span, only when telemetry.capture_content is on."""
        if trace is None or self.tracing is None or not self.tracing.capture_content:
            return
        prompt = [{"role": m.role, "parts": [{"type": "text", "content": m.content}]} for m in messages]
        trace.span.set_attribute("gen_ai.input.messages", json.dumps(prompt))
        if answer is not None:
            output = [{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]
            trace.span.set_attribute("gen_ai.output.messages", json.dumps(output))

    # -- the ledger row, and refusals ---------------------------------------------------------------

    def recorded(
        self,
        trace: Trace | None,
        row: RequestRecord,
        *,
        cache_status: str | None = None,
        routed: bool = False,
        provider_id: str = "",
        final: bool = True,
    ) -> None:
        """A ledger row was written; ``final``: it is the request's own row (not a cascade's attempt)."""
        if self.metrics is not None:
            self.metrics.request(row, cache_status if final else None, routed and final)
        if self.tracing is None or trace is None or not final:
            return
        span = trace.span
        provider = _CACHE_PROVIDER if row.cache_hit else (provider_id or (_LOCAL_PROVIDER if row.route == "local"
                                                                         else row.provider))  # fmt: skip
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": provider,
            "gen_ai.response.model": row.model,
            "gen_ai.response.id": row.id,
            "gen_ai.usage.input_tokens": row.input_tokens,
            "gen_ai.usage.output_tokens": row.output_tokens,
            "aifinops.request_id": row.id,
            "aifinops.route": row.route,
            "aifinops.tier": row.tier,
            "aifinops.cache": cache_status or ("hit" if row.cache_hit else "bypass"),
            "aifinops.cost_usd": format_usd(row.cost_micro_usd),
            "aifinops.price_source": row.price_source,
            "aifinops.department": row.department,
            "aifinops.feature": row.feature,
            "aifinops.tokens_estimated": row.tokens_estimated,
            "aifinops.status": row.status,
        }
        if row.cost_micro_usd is not None:
            attributes["aifinops.cost_micro_usd"] = row.cost_micro_usd
        if row.cost_saved_micro_usd:
            attributes["aifinops.saved_micro_usd"] = row.cost_saved_micro_usd
        if row.hold_micro_usd is not None:
            attributes["aifinops.budget.held_micro_usd"] = row.hold_micro_usd
        span.set_attributes(attributes)
        if row.status != "ok":
            _error(span, row.error_type or row.status)
        span.end()
        self._genai_metrics(trace, provider, row)

    def _genai_metrics(self, trace: Trace, provider: str, row: RequestRecord) -> None:
        tracing = self.tracing
        assert tracing is not None  # noqa: S101 - called with tracing on
        common = {
            "gen_ai.operation.name": trace.operation,
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": row.requested_model,
            "gen_ai.response.model": row.model,
        }
        if row.status != "ok":
            common["error.type"] = row.error_type or row.status
        tracing.operation_duration.record(time.perf_counter() - trace.started, common)
        if row.status == "ok":
            tracing.token_usage.record(row.input_tokens, {**common, "gen_ai.token.type": "input"})
            tracing.token_usage.record(row.output_tokens, {**common, "gen_ai.token.type": "output"})

    def refused(self, trace: Trace | None, error: AIFinOpsError) -> None:
        """The request was refused before any model ran (no ledger row)."""
        if trace is not None:
            _error(trace.span, error.error_type)
            trace.span.set_attribute("aifinops.refused", error.error_type)
            trace.span.end()

    def http_refusal(self, error_type: str) -> None:
        """An API answer in the 4xx range (bad body, no token, rate limit, budget, ...)."""
        if self.metrics is not None:
            self.metrics.refusal(error_type)

    # -- the rest of the agent ----------------------------------------------------------------------

    def first_token(self, route: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.first_token(route, seconds)

    def model_load(self, model: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.model_load(model, seconds)

    def model_unload(self, model: str) -> None:
        if self.metrics is not None:
            self.metrics.model_unload(model)

    def shutdown(self) -> None:
        if self.tracing is not None:
            self.tracing.shutdown()


def _error(span: Span, error_type: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))


OFF = Telemetry()  # neither metrics nor traces: tests and tools that build a gateway by hand
