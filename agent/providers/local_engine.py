"""A local inference engine (llama.cpp's llama-server, vLLM, Ollama) as a provider of the local
tier: the OpenAI-compatible wire of ``openai_compat``, but its answers are local ones.

What makes it local:
- it is priced by time, not tokens: each call's wall-clock seconds at the engine's hourly rate
  (``usd_per_hour``, else ``pricing.local_usd_per_hour``) divided by its ``parallel`` slots;
- its busy time is reported like the in-process model's (``CallProgress.compute_s`` and
  ``compute_started_unix``), so the GPU sampler charges the GPU's busy time to the caller;
- the router may put it in the local tier, and "Pause cloud" does not stop it.

Unlike the in-process model it serves many requests at once: an engine with continuous batching
is what a team sharing one box needs (docs/BENCHMARKS.md, "Local engines").
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

from agent.errors import ProviderUnavailable
from agent.providers.base import (
    CallProgress,
    ChatParams,
    Completion,
    Delta,
    Embedded,
    EmbeddingInputs,
    Message,
    ProviderKind,
    StreamEnd,
)
from agent.providers.openai_compat import OpenAICompatProvider
from agent.settings import LocalEngine


class LocalEngineProvider(OpenAICompatProvider):
    kind: ProviderKind = "local"

    def __init__(self, engine: LocalEngine, api_key: str | None, default_usd_per_hour: Decimal) -> None:
        super().__init__(engine.endpoint(), api_key)
        self.engine = engine
        hourly = engine.usd_per_hour if engine.usd_per_hour is not None else default_usd_per_hour
        self.usd_per_hour = hourly / engine.parallel  # one slot's share of the engine

    async def complete(
        self, model: str, messages: tuple[Message, ...], params: ChatParams, progress: CallProgress
    ) -> Completion:
        with _busy(progress):
            return await super().complete(model, messages, params, progress)

    async def stream(
        self, model: str, messages: tuple[Message, ...], params: ChatParams, progress: CallProgress
    ) -> AsyncIterator[Delta | StreamEnd]:
        with _busy(progress) as clock:
            async for event in super().stream(model, messages, params, progress):
                if isinstance(event, StreamEnd):
                    clock()  # the answer is priced on this event: its time so far
                yield event

    async def embed(
        self, model: str, inputs: EmbeddingInputs, dimensions: int | None, progress: CallProgress
    ) -> Embedded:
        with _busy(progress):
            return await super().embed(model, inputs, dimensions, progress)


@contextmanager
def _busy(progress: CallProgress) -> Iterator[Callable[[], None]]:
    """Time the engine works on this call, however the call ends (done, failed, abandoned), but
    none when it never took the call; the yielded function brings ``progress.compute_s`` up to now."""
    progress.compute_started_unix = time.time()
    started = time.perf_counter()

    def clock() -> None:
        progress.compute_s = time.perf_counter() - started

    try:
        yield clock
    except ProviderUnavailable:  # unreachable, or it refused every try: the engine did no work
        progress.compute_s = 0.0
        raise
    except BaseException:
        clock()
        raise
    else:
        clock()
