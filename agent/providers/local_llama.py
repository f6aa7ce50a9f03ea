"""Local chat models through llama.cpp (llama-cpp-python).

One model, one worker thread: loading and generation run on a single-thread executor, so
concurrent requests queue instead of crashing the (non-reentrant) llama context, and the event
loop never blocks. The prompt is built with the GGUF's own chat template; a GGUF without one is
refused as a chat model (llama-cpp-python would silently fall back to a llama-2 format and
produce garbage).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


class _Loaded:
    """A llama.cpp model with the chat formatter built from its GGUF template."""

    def __init__(self, llm: Any, formatter: Any, path: Path, load_s: float) -> None:
        self.llm = llm
        self.formatter = formatter
        self.path = path
        self.load_s = load_s


class LocalLlamaProvider:
    kind: ProviderKind = "local"
    price_provider_id = ""

    def __init__(self, config: LocalModelConfig, store: ModelStore) -> None:
        self.name = config.name
        self.config = config
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{config.name}")
        self._loaded: _Loaded | None = None
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
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self._store.resolve(self.config.model)
        started = time.perf_counter()
        try:
            llm = Llama(
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

        loaded = self._ensure_loaded()
        llm = loaded.llm
        started = time.perf_counter()
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
        output_tokens = len(llm.tokenize(output.encode("utf-8"), add_bos=False)) if output else 0
        progress.compute_s = time.perf_counter() - started
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

    async def close(self) -> None:
        def unload() -> None:
            with self._state_lock:
                loaded, self._loaded = self._loaded, None
            if loaded is not None:
                loaded.llm.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, unload)
        self._executor.shutdown(wait=True)
