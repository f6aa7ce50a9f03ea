"""The semantic cache's ONNX embedder, offered to clients as an embeddings model.

One model, under one stable name (``local-embed``): whatever ``cache.embedding_model`` names,
all-MiniLM-L6-v2 int8 (384 dimensions) by default. It shares the loaded session with the cache
and the router. Texts longer than the model reads (256 word pieces) are truncated, as the model
does everywhere; the usage counts the word pieces actually read. Token-id inputs are refused:
they would be ids of another tokenizer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal

from agent.errors import InvalidRequest
from agent.providers.base import CallProgress, Embedded, EmbeddingInputs, ProviderKind, Usage
from agent.providers.onnx_embedder import OnnxEmbedder

LOCAL_EMBEDDING_MODEL = "local-embed"


class LocalEmbeddingProvider:
    kind: ProviderKind = "local"
    price_provider_id = ""
    usd_per_hour: Decimal | None = None  # pricing.local_usd_per_hour

    def __init__(self, embedder: Callable[[], OnnxEmbedder], name: str = LOCAL_EMBEDDING_MODEL) -> None:
        self.name = name
        self._embedder = embedder  # loads the model on first use (shared with the cache)

    def models(self) -> tuple[str, ...]:
        return (self.name,)

    async def check(self, model: str, inputs: EmbeddingInputs, dimensions: int | None) -> None:
        if any(not isinstance(item, str) for item in inputs):
            raise InvalidRequest(
                f"model {model!r} takes text only, not token ids: send the texts as strings",
                code="unsupported_input",
                param="input",
            )
        if dimensions is None:
            return
        native = (await asyncio.get_running_loop().run_in_executor(None, self._embedder)).dim
        if dimensions != native:
            raise InvalidRequest(
                f"model {model!r} makes {native}-dimensional vectors and cannot shorten them: "
                f"leave dimensions out, or set it to {native}",
                code="unsupported_parameter",
                param="dimensions",
            )

    async def embed(
        self, model: str, inputs: EmbeddingInputs, dimensions: int | None, progress: CallProgress
    ) -> Embedded:
        texts = [item for item in inputs if isinstance(item, str)]
        progress.attempts = 1

        def run() -> Embedded:
            started = time.perf_counter()
            embedder = self._embedder()
            progress.load_s = time.perf_counter() - started
            progress.compute_started_unix = time.time()
            begun = time.perf_counter()
            vectors, lengths = embedder.embed_counted(texts)
            progress.compute_s = time.perf_counter() - begun
            progress.input_tokens = int(lengths.sum())
            return Embedded(vectors, Usage(progress.input_tokens, 0))

        # ONNX Runtime lets the GIL go: off the event loop, in the default pool.
        return await asyncio.get_running_loop().run_in_executor(None, run)
