"""What the request pipeline tells the outside about itself: Prometheus metrics and
OpenTelemetry traces behind one small interface, so the gateways call the same few methods
whether both, one or neither is on. Off, each call is a test of ``None``.

A request's trace starts when the gateway takes it (``begin``), gets a child span per stage
(``stage``: embed, route, cache, optimise, budget hold, provider) and ends when its ledger row
is written (``recorded``) or when it is refused before any model ran (``refused``). On the
request path a trace is only written down (clock reads into a small record); the OpenTelemetry
spans are built from it later, off the path (``Tracing``). Every ledger row feeds the metrics,
so they agree with the ledger.
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
class Stage:
    name: str
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class Trace:
    """One request as its spans will show it, written down as it happens (a few clock reads);
    the spans themselves are built off the request path, by ``Tracing``'s own thread."""

    operation: str  # gen_ai.operation.name: chat, text_completion, embeddings
    name: str
    attributes: dict[str, Any]
    start_ns: int = field(default_factory=time.time_ns)
    stages: list[Stage] = field(default_factory=list)
    error: str = ""
    end_ns: int = 0
    metric_attributes: dict[str, Any] | None = None  # set when the request is done: the GenAI metrics
    usage: tuple[int, int] | None = None  # (input, output) tokens, when answered


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
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.request.model": model}
        if max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = max_tokens
        if temperature is not None:
            attributes["gen_ai.request.temperature"] = temperature
        if top_p is not None:
            attributes["gen_ai.request.top_p"] = top_p
        return Trace(operation, f"{operation} {model}", attributes)

    @contextmanager
    def stage(self, trace: Trace | None, name: str, **attributes: Any) -> Iterator[dict[str, Any] | None]:
        """Times one stage of the request for its child span; yields the span's attributes, which
        the stage may add to (None when tracing is off)."""
        if trace is None:
            yield None
            return
        stage = Stage(name, time.time_ns(), attributes=attributes)
        trace.stages.append(stage)
        try:
            yield stage.attributes
        except BaseException as e:
            stage.error = type(e).__name__
            raise
        finally:
            stage.end_ns = time.time_ns()

    def content(self, trace: Trace | None, messages: Sequence[Message], answer: str | None) -> None:
        """Prompt and answer on the span, only when telemetry.capture_content is on."""
        if trace is None or self.tracing is None or not self.tracing.capture_content:
            return
        prompt = [{"role": m.role, "parts": [{"type": "text", "content": m.content}]} for m in messages]
        trace.attributes["gen_ai.input.messages"] = json.dumps(prompt)
        if answer is not None:
            output = [{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]
            trace.attributes["gen_ai.output.messages"] = json.dumps(output)

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
        provider = _CACHE_PROVIDER if row.cache_hit else (provider_id or (_LOCAL_PROVIDER if row.route == "local"
                                                                         else row.provider))  # fmt: skip
        a = trace.attributes
        a["gen_ai.provider.name"] = provider
        a["gen_ai.response.model"] = row.model
        a["gen_ai.response.id"] = row.id
        a["gen_ai.usage.input_tokens"] = row.input_tokens
        a["gen_ai.usage.output_tokens"] = row.output_tokens
        a["aifinops.request_id"] = row.id
        a["aifinops.route"] = row.route
        a["aifinops.tier"] = row.tier
        a["aifinops.cache"] = cache_status or ("hit" if row.cache_hit else "bypass")
        a["aifinops.cost_usd"] = format_usd(row.cost_micro_usd)
        a["aifinops.price_source"] = row.price_source
        a["aifinops.department"] = row.department
        a["aifinops.feature"] = row.feature
        a["aifinops.tokens_estimated"] = row.tokens_estimated
        a["aifinops.status"] = row.status
        if row.cost_micro_usd is not None:
            a["aifinops.cost_micro_usd"] = row.cost_micro_usd
        if row.cost_saved_micro_usd:
            a["aifinops.saved_micro_usd"] = row.cost_saved_micro_usd
        if row.hold_micro_usd is not None:
            a["aifinops.budget.held_micro_usd"] = row.hold_micro_usd
        metric = {
            "gen_ai.operation.name": trace.operation,
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": row.requested_model,
            "gen_ai.response.model": row.model,
        }
        if row.status != "ok":
            trace.error = metric["error.type"] = row.error_type or row.status
        else:
            trace.usage = (row.input_tokens, row.output_tokens)
        trace.metric_attributes = metric
        self._finish(trace)

    def refused(self, trace: Trace | None, error: AIFinOpsError) -> None:
        """The request was refused before any model ran (no ledger row)."""
        if trace is not None:
            trace.error = error.error_type
            trace.attributes["aifinops.refused"] = error.error_type
            self._finish(trace)

    def _finish(self, trace: Trace) -> None:
        trace.end_ns = time.time_ns()
        if self.tracing is not None:
            self.tracing.submit(trace)

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


OFF = Telemetry()  # neither metrics nor traces: tests and tools that build a gateway by hand
