"""Local chat models through llama.cpp (llama-cpp-python).

One model, one worker thread: loading and generation run on a single-thread executor, so
concurrent requests queue instead of crashing the (non-reentrant) llama context, and the event
loop never blocks. The prompt is built with the GGUF's own chat template; a GGUF without one is
refused as a chat model (llama-cpp-python would silently fall back to a llama-2 format and
produce garbage).

Confidence (the cascade's signal, `CallProgress.confidence`): the geometric mean of the
probabilities of the answer's tokens under the model's own distribution (softmax of the raw
logits: before temperature, top-p or penalties), i.e. exp(mean log p(token)). It is read from the
last-token logits llama.cpp computes anyway, so it needs no `logits_all=True` (which computes and
copies the logits of every position: SmolLM2 76 -> 21 tok/s). llama-cpp-python's
stopping-criteria callback cannot give it: without `logits_all` the `logits` it passes are a row
of a buffer nobody fills (zeros), and its `input_ids` lack the token just sampled. So
`_ScoringLlama.sample` reads the context's logits right after sampling, when they are still
the ones the token was drawn from, and records log p(token) (about 65 us per token on 49,152
logits; a token takes 6-13 ms).

What it averages over: the tokens whose text reached the caller. Left out are the
end-of-generation token and the tokens llama-cpp-python generated that spell a stop string it
cut off (or that a cancelled stream never sent). A generation with no answer text (the model
ended at once, or the request was cancelled first) has confidence None: there is nothing to be
confident about, and an empty answer is a failed answer whatever its probability.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import InvalidRequest, ModelError
from agent.models.store import ModelStore
from agent.providers.base import (
    CallProgress,
    ChatParams,
    Completion,
    Delta,
    Message,
    ProviderKind,
    StreamEnd,
    Usage,
)
from agent.settings import LocalModelConfig

log = logging.getLogger(__name__)

_DEFAULT_TEMPERATURE = 0.2  # llama-cpp-python's chat default; small models ramble when hotter
_END = object()


@functools.cache
def _scoring_llama() -> type[Any]:
    """`llama_cpp.Llama` that records log p(token) of each token it samples (imported lazily)."""
    import llama_cpp

    class _ScoringLlama(llama_cpp.Llama):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # (token id, natural log of its probability) for each token of the latest generate()
            self.sampled: list[tuple[int, float]] = []
            self._scratch = np.empty(self.n_vocab(), dtype=np.float32)

        def generate(self, *args: Any, **kwargs: Any) -> Any:
            self.sampled.clear()
            return super().generate(*args, **kwargs)

        def sample(self, *args: Any, **kwargs: Any) -> int:
            token: int = super().sample(*args, **kwargs)
            # The sampler worked on a copy: the context still holds the logits it sampled from.
            # (generate() passes idx by keyword; sample() reads the same row.)
            idx: int | None = kwargs.get("idx")
            row = -1 if idx is None else idx - self.n_tokens
            pointer = llama_cpp.llama_get_logits_ith(self.ctx, row)
            logits = np.ctypeslib.as_array(pointer, shape=(len(self._scratch),))
            self.sampled.append((token, _logprob(logits, token, self._scratch)))
            return token

    return _ScoringLlama


def _logprob(logits: npt.NDArray[np.float32], token: int, scratch: npt.NDArray[np.float32]) -> float:
    """log softmax(logits)[token], with `scratch` (same shape) as the only working memory."""
    top = logits.max()
    np.subtract(logits, top, out=scratch)
    np.exp(scratch, out=scratch)
    return float(logits[token] - top) - float(np.log(scratch.sum(dtype=np.float64)))


def _answer_confidence(llm: Any, sampled: list[tuple[int, float]], text: str) -> float | None:
    """exp(mean log p) over the sampled tokens that produced `text` (see the module docstring)."""
    wanted = len(text.encode("utf-8"))
    produced, total, count = 0, 0.0, 0
    for token, logprob in sampled:
        if produced >= wanted:  # the rest: a stop string's tokens, end-of-generation, unsent text
            break
        produced += len(llm.detokenize([token]))
        total += logprob
        count += 1
    return float(np.exp(total / count)) if count else None


class _Loaded:
    """A llama.cpp model with the chat formatter built from its GGUF template."""

    def __init__(self, llm: Any, formatter: Any, path: Path, load_s: float) -> None:
        self.llm = llm
        self.formatter = formatter
        self.path = path
        self.load_s = load_s


@dataclass(frozen=True)
class Unloaded:
    model: str
    idle_s: float
    memory_freed_bytes: int | None  # resident memory given back (None where it cannot be read)


def _rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class LocalLlamaProvider:
    kind: ProviderKind = "local"
    price_provider_id = ""

    def __init__(self, config: LocalModelConfig, store: ModelStore) -> None:
        self.name = config.name
        self.config = config
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{config.name}")
        self._loaded: _Loaded | None = None
        self._last_used = time.monotonic()
        self._state_lock = threading.Lock()

    def models(self) -> tuple[str, ...]:
        return (self.config.name,)

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    # -- loading (always on the worker thread) -------------------------------------------

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._ensure_loaded)

    def _ensure_loaded(self) -> _Loaded:
        if self._loaded is not None:
            return self._loaded
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self._store.resolve(self.config.model)
        started = time.perf_counter()
        try:
            llm = _scoring_llama()(
                model_path=str(path),
                n_ctx=self.config.n_ctx,
                n_threads=self.config.threads(),
                n_threads_batch=self.config.threads(),
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"cannot load {path} with llama.cpp: {e}") from e
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            llm.close()
            raise ModelError(
                f"{path.name} has no chat template in its GGUF metadata: it is a base model, "
                "not a chat model (use an -Instruct/-chat GGUF)",
                code="no_chat_template",
            )
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )
        load_s = time.perf_counter() - started
        log.info("loaded local model %s (%s) in %.2f s", self.name, path.name, load_s)
        with self._state_lock:
            self._loaded = _Loaded(llm, formatter, path, load_s)
        return self._loaded

    # -- generation ----------------------------------------------------------------------

    def _generate(
        self,
        messages: tuple[Message, ...],
        params: ChatParams,
        cancel: threading.Event,
        progress: CallProgress,
        emit: Callable[[str], None] | None,
    ) -> StreamEnd:
        if cancel.is_set():  # the client left while the request waited for the model
            return StreamEnd("aborted", Usage(0, 0))
        from llama_cpp import StoppingCriteriaList

        was_loaded = self._loaded is not None
        loaded = self._ensure_loaded()
        if not was_loaded:  # this request paid for the load (first use, or after an idle unload)
            progress.load_s = loaded.load_s
        llm = loaded.llm
        started = time.perf_counter()
        progress.compute_started_unix = time.time()
        self._last_used = time.monotonic()
        formatted = loaded.formatter(messages=[m.as_openai() for m in messages])
        prompt = llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)
        progress.input_tokens = len(prompt)
        room = self.config.n_ctx - len(prompt)
        if room <= 0:
            raise InvalidRequest(
                f"the prompt is {len(prompt)} tokens; model {self.name!r} holds "
                f"{self.config.n_ctx} (shorten the conversation)",
                code="context_length_exceeded",
            )
        max_tokens = min(params.max_tokens or self.config.max_tokens, self.config.max_tokens, room)
        stops = list(params.stop) + (
            [formatted.stop] if isinstance(formatted.stop, str) else list(formatted.stop or [])
        )
        finish_reason = "stop"
        chunks = llm.create_completion(
            prompt,
            max_tokens=max_tokens,
            temperature=_DEFAULT_TEMPERATURE if params.temperature is None else params.temperature,
            top_p=0.95 if params.top_p is None else params.top_p,
            stop=stops,
            seed=params.seed,
            stream=True,
            stopping_criteria=StoppingCriteriaList([lambda _ids, _logits: cancel.is_set()]),
        )
        for chunk in chunks:
            choice = chunk["choices"][0]
            text = choice["text"]
            if text:
                progress.text_parts.append(text)
                if emit is not None:
                    emit(text)
            progress.compute_s = time.perf_counter() - started
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
        output = progress.text
        progress.confidence = _answer_confidence(llm, llm.sampled, output)
        output_tokens = len(llm.tokenize(output.encode("utf-8"), add_bos=False)) if output else 0
        progress.compute_s = time.perf_counter() - started
        self._last_used = time.monotonic()
        if cancel.is_set():
            finish_reason = "aborted"
        return StreamEnd(finish_reason, Usage(len(prompt), output_tokens))

    async def complete(
        self, model: str, messages: tuple[Message, ...], params: ChatParams, progress: CallProgress
    ) -> Completion:
        progress.attempts = 1
        cancel = threading.Event()
        try:
            end = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._generate, messages, params, cancel, progress, None
            )
        finally:
            cancel.set()  # if we were cancelled while generating, stop the worker too
        return Completion(progress.text, end.finish_reason, end.usage)

    async def stream(
        self,
        model: str,
        messages: tuple[Message, ...],
        params: ChatParams,
        progress: CallProgress,
    ) -> AsyncIterator[Delta | StreamEnd]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()
        progress.attempts = 1

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, text)

        def work() -> StreamEnd:
            try:
                return self._generate(messages, params, cancel, progress, emit)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        future = loop.run_in_executor(self._executor, work)
        try:
            while (item := await queue.get()) is not _END:
                yield Delta(str(item))
            yield await future
        finally:
            cancel.set()

    def unload_if_idle(self, idle_s: float) -> Unloaded | None:
        """Unload the model when nobody used it for ``idle_s`` seconds (runs on the model's own
        thread, so never during a generation). Returns what was freed, or None."""

        def unload() -> Unloaded | None:
            idle_for = time.monotonic() - self._last_used
            if self._loaded is None or idle_for < idle_s:
                return None
            before = _rss_bytes()
            with self._state_lock:
                loaded, self._loaded = self._loaded, None
            loaded.llm.close()
            del loaded
            gc.collect()
            after = _rss_bytes()
            freed = None if before is None or after is None else max(before - after, 0)
            log.info("unloaded local model %s after %.0f s idle", self.name, idle_for)
            return Unloaded(self.name, idle_for, freed)

        return self._executor.submit(unload).result()

    async def close(self) -> None:
        def unload() -> None:
            with self._state_lock:
                loaded, self._loaded = self._loaded, None
            if loaded is not None:
                loaded.llm.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, unload)
        self._executor.shutdown(wait=True)
