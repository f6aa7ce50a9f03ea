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
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import AIFinOpsError, InvalidRequest, ModelError
from agent.models.store import ModelStore
from agent.providers.base import (
    CallProgress,
    ChatParams,
    Choice,
    Completion,
    Delta,
    Message,
    ProviderKind,
    StreamEnd,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from agent.settings import LocalModelConfig

log = logging.getLogger(__name__)

# Request fields beyond sampling that the local model honours (see cannot_serve).
_LOCAL_OPTIONS = frozenset({"tools", "tool_choice", "parallel_tool_calls", "response_format"})
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
            # top_logprobs: the `top_wanted` likeliest (token, log p) at each step, when asked
            self.top_wanted = 0
            self.tops: list[list[tuple[int, float]]] = []
            self._scratch = np.empty(self.n_vocab(), dtype=np.float32)

        def generate(self, *args: Any, **kwargs: Any) -> Any:
            self.sampled.clear()
            self.tops.clear()
            return super().generate(*args, **kwargs)

        def sample(self, *args: Any, **kwargs: Any) -> int:
            token: int = super().sample(*args, **kwargs)
            # The sampler worked on a copy: the context still holds the logits it sampled from.
            # (generate() passes idx by keyword; sample() reads the same row.)
            idx: int | None = kwargs.get("idx")
            row = -1 if idx is None else idx - self.n_tokens
            pointer = llama_cpp.llama_get_logits_ith(self.ctx, row)
            logits = np.ctypeslib.as_array(pointer, shape=(len(self._scratch),))
            normalizer = _log_normalizer(logits, self._scratch)
            self.sampled.append((token, float(logits[token]) - normalizer))
            if self.top_wanted:
                best = np.argpartition(logits, -self.top_wanted)[-self.top_wanted :]
                best = best[np.argsort(-logits[best])]
                self.tops.append([(int(t), float(logits[t]) - normalizer) for t in best])
            return token

    return _ScoringLlama


def _log_normalizer(logits: npt.NDArray[np.float32], scratch: npt.NDArray[np.float32]) -> float:
    """log sum exp(logits): log softmax(logits)[t] = logits[t] - this. `scratch` (same shape) is
    the only working memory."""
    top = logits.max()
    np.subtract(logits, top, out=scratch)
    np.exp(scratch, out=scratch)
    return float(top) + float(np.log(scratch.sum(dtype=np.float64)))


def _logprob(logits: npt.NDArray[np.float32], token: int, scratch: npt.NDArray[np.float32]) -> float:
    """log softmax(logits)[token]."""
    return float(logits[token]) - _log_normalizer(logits, scratch)


def _answer_tokens(llm: Any, sampled: list[tuple[int, float]], text: str) -> int:
    """How many of the sampled tokens produced `text` (the rest: a stop string's tokens,
    end-of-generation, text a cancelled stream never sent)."""
    wanted = len(text.encode("utf-8"))
    produced = count = 0
    for token, _ in sampled:
        if produced >= wanted:
            break
        produced += len(llm.detokenize([token]))
        count += 1
    return count


def _answer_confidence(llm: Any, sampled: list[tuple[int, float]], text: str) -> float | None:
    """exp(mean log p) over the sampled tokens that produced `text` (see the module docstring)."""
    count = _answer_tokens(llm, sampled, text)
    return float(np.exp(sum(lp for _, lp in sampled[:count]) / count)) if count else None


def _openai_logprobs(llm: Any, text: str) -> dict[str, Any]:
    """OpenAI's ``logprobs`` object for the answer's tokens, from what `sample` recorded."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        raw = llm.detokenize([token])
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    count = _answer_tokens(llm, llm.sampled, text)
    content = []
    for i, (token, logprob) in enumerate(llm.sampled[:count]):
        tops = llm.tops[i] if i < len(llm.tops) else []
        content.append({**entry(token, logprob), "top_logprobs": [entry(t, lp) for t, lp in tops]})
    return {"content": content, "refusal": None}


@dataclass(frozen=True)
class _Answer:
    """One generated choice."""

    text: str
    finish_reason: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: dict[str, Any] | None = None


def _total(answers: list[_Answer]) -> Usage:
    """Usage of every choice: the prompt is read for each (n separate generations)."""
    return Usage(sum(a.usage.input_tokens for a in answers), sum(a.usage.output_tokens for a in answers))


def _wants_tools(params: ChatParams) -> bool:
    return bool(params.tools) and params.option("tool_choice") != "none"


@functools.lru_cache(maxsize=64)
def _schema_grammar(schema: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = str(json_schema_to_gbnf(schema))
    except (ValueError, KeyError, TypeError, NotImplementedError, RecursionError, AssertionError) as e:
        raise ValueError(str(e) or type(e).__name__) from e
    # This converter lets a string hold raw control characters (a newline), which is not JSON;
    # llama.cpp's own converter has since excluded them the same way.
    return grammar.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |')


def _grammar_text(params: ChatParams) -> str | None:
    """GBNF for the response format (None: free text). Raises ValueError for a schema llama.cpp's
    converter cannot handle."""
    response_format = params.option("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") not in ("json_object", "json_schema"):
        return None
    if response_format["type"] == "json_object":
        from llama_cpp.llama_grammar import JSON_GBNF

        return str(JSON_GBNF)
    schema = (response_format.get("json_schema") or {}).get("schema") or {}
    return _schema_grammar(json.dumps(_enumerate_small_ranges(schema), sort_keys=True))


_MAX_ENUMERATED_RANGE = 2000


def _enumerate_small_ranges(schema: Any) -> Any:
    """The schema with each bounded integer of at most 2,000 values written as an enum: llama.cpp's
    Python grammar converter ignores minimum/maximum, but follows an enum exactly."""
    if isinstance(schema, list):
        return [_enumerate_small_ranges(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _enumerate_small_ranges(value) for key, value in schema.items()}
    low, high = out.get("minimum"), out.get("maximum")
    if "exclusiveMinimum" in out and isinstance(out["exclusiveMinimum"], int):
        low = out["exclusiveMinimum"] + 1
    if "exclusiveMaximum" in out and isinstance(out["exclusiveMaximum"], int):
        high = out["exclusiveMaximum"] - 1
    if out.get("type") == "integer" and isinstance(low, int) and isinstance(high, int):
        if 0 <= high - low < _MAX_ENUMERATED_RANGE:
            for key in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                out.pop(key, None)
            out["enum"] = list(range(low, high + 1))
    return out


def _grammar(params: ChatParams) -> Any:
    text = _grammar_text(params)
    if text is None:
        return None
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_string(text, verbose=False)


def _local_tool_choice(params: ChatParams) -> str | dict[str, Any] | None:
    """tool_choice as llama.cpp's ChatML function calling takes it: "auto" or one named function
    ("required" of a single tool is that tool; of several it has no equivalent: None)."""
    choice = params.option("tool_choice")
    if choice is None or choice == "auto":
        return "auto"
    if choice == "required":
        tools = params.tools
        return {"type": "function", "function": {"name": tools[0]["function"]["name"]}} if len(tools) == 1 else None
    return choice if isinstance(choice, dict) else None


def _chatml_message(m: Message) -> dict[str, Any]:
    """A message for llama.cpp's ChatML function-calling template, which knows no tool role:
    a tool's result reaches the model as a user turn that says which call it answers."""
    if m.role == "tool":
        return {"role": "user", "content": f"Result of tool call {m.tool_call_id}: {m.content}"}
    if m.role == "developer":
        return {"role": "system", "content": m.content}
    return m.as_openai()


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
    usd_per_hour: Decimal | None = None  # pricing.local_usd_per_hour

    def __init__(self, config: LocalModelConfig, store: ModelStore) -> None:
        self.name = config.name
        self.config = config
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{config.name}")
        self._loaded: _Loaded | None = None
        self._template: str | None = None
        self._last_used = time.monotonic()
        self._state_lock = threading.Lock()
        self.on_load: Callable[[str, float], None] | None = None  # (model, seconds): the metrics

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
        if self.on_load is not None:
            self.on_load(self.name, load_s)
        with self._state_lock:
            self._loaded = _Loaded(llm, formatter, path, load_s)
        return self._loaded

    # -- what it can do ------------------------------------------------------------------

    def cannot_serve(self, params: ChatParams) -> str | None:
        other = sorted(name for name, _ in params.passthrough if name not in _LOCAL_OPTIONS)
        if other:
            return f"local models do not support {', '.join(other)}"
        if _wants_tools(params) and "<|im_start|>" not in self._chat_template():
            return (
                f"the chat template of {self.name!r} has no tool calling (llama.cpp calls tools through "
                "ChatML templates); ask for model 'auto' or a cloud model"
            )
        if _wants_tools(params) and _local_tool_choice(params) is None:
            return "tool_choice 'required' with several tools (the local model takes auto, none or one named tool)"
        try:
            _grammar_text(params)
        except ValueError as e:
            return f"its JSON schema cannot be turned into a grammar for the local model ({e})"
        return None

    def _chat_template(self) -> str:
        """The GGUF's chat template, read once (from the loaded model, or its metadata alone)."""
        if self._template is None:
            loaded = self._loaded
            if loaded is not None:
                self._template = str(loaded.llm.metadata.get("tokenizer.chat_template") or "")
            else:
                import llama_cpp

                try:
                    path = self._store.resolve(self.config.model)
                    probe = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
                except (ValueError, RuntimeError, AIFinOpsError) as e:
                    log.warning("cannot read the chat template of %s: %s", self.name, e)
                    return ""
                self._template = str(probe.metadata.get("tokenizer.chat_template") or "")
                probe.close()
        return self._template

    # -- generation ----------------------------------------------------------------------

    def _generate(
        self,
        messages: tuple[Message, ...],
        params: ChatParams,
        cancel: threading.Event,
        progress: CallProgress,
        emit: Callable[[Delta], None] | None,
        index: int = 0,
    ) -> _Answer:
        """One choice: its text (streamed through ``emit``), tool calls, logprobs and tokens."""
        if cancel.is_set():  # the client left while the request waited for the model
            return _Answer("", "aborted", Usage(0, 0))
        from llama_cpp import StoppingCriteriaList

        was_loaded = self._loaded is not None
        loaded = self._ensure_loaded()
        if not was_loaded:  # this request paid for the load (first use, or after an idle unload)
            progress.load_s = loaded.load_s
        llm = loaded.llm
        started, before = time.perf_counter(), progress.compute_s  # earlier choices' compute
        if progress.compute_started_unix is None:
            progress.compute_started_unix = time.time()
        self._last_used = time.monotonic()
        if _wants_tools(params):
            return self._generate_with_tools(llm, messages, params, progress, emit, index, started)
        formatted = loaded.formatter(messages=[m.as_openai() for m in messages])
        prompt = llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)
        progress.input_tokens = len(prompt)
        max_tokens = self._answer_room(len(prompt), params)
        stops = list(params.stop) + (
            [formatted.stop] if isinstance(formatted.stop, str) else list(formatted.stop or [])
        )
        llm.top_wanted = (params.top_logprobs or 0) if params.logprobs else 0
        parts: list[str] = []
        finish_reason = "stop"
        chunks = llm.create_completion(
            prompt,
            max_tokens=max_tokens,
            temperature=_DEFAULT_TEMPERATURE if params.temperature is None else params.temperature,
            top_p=0.95 if params.top_p is None else params.top_p,
            stop=stops,
            seed=None if params.seed is None else params.seed + index,
            stream=True,
            grammar=_grammar(params),
            stopping_criteria=StoppingCriteriaList([lambda _ids, _logits: cancel.is_set()]),
        )
        for chunk in chunks:
            choice = chunk["choices"][0]
            text = choice["text"]
            if text:
                parts.append(text)
                if index == 0:
                    progress.text_parts.append(text)
                if emit is not None:
                    emit(Delta(text, index))
            progress.compute_s = before + time.perf_counter() - started  # priced so far, if the client leaves
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
        output = "".join(parts)
        if index == 0:
            progress.confidence = _answer_confidence(llm, llm.sampled, output)
        logprobs = _openai_logprobs(llm, output) if params.logprobs else None
        if logprobs is not None and emit is not None:
            emit(Delta("", index, logprobs=logprobs))  # one chunk carries the whole answer's logprobs
        output_tokens = len(llm.tokenize(output.encode("utf-8"), add_bos=False)) if output else 0
        progress.compute_s = before + time.perf_counter() - started
        self._last_used = time.monotonic()
        if cancel.is_set():
            finish_reason = "aborted"
        return _Answer(output, finish_reason, Usage(len(prompt), output_tokens), logprobs=logprobs)

    def _answer_room(self, prompt_tokens: int, params: ChatParams) -> int:
        room = self.config.n_ctx - prompt_tokens
        if room <= 0:
            raise InvalidRequest(
                f"the prompt is {prompt_tokens} tokens; model {self.name!r} holds "
                f"{self.config.n_ctx} (shorten the conversation)",
                code="context_length_exceeded",
            )
        return min(params.max_tokens or self.config.max_tokens, self.config.max_tokens, room)

    def _generate_with_tools(
        self,
        llm: Any,
        messages: tuple[Message, ...],
        params: ChatParams,
        progress: CallProgress,
        emit: Callable[[Delta], None] | None,
        index: int,
        started: float,
    ) -> _Answer:
        """Tools through llama.cpp's ChatML function calling: a grammar makes the model answer
        either a message or calls of the given functions, with arguments that fit their schemas."""
        from llama_cpp.llama_chat_format import chatml_function_calling

        sent = "".join(m.content for m in messages)
        budget = self._answer_room(len(llm.tokenize(sent.encode("utf-8"), add_bos=False)), params)
        result = chatml_function_calling(
            llama=llm,
            messages=[_chatml_message(m) for m in messages],
            tools=params.tools,
            tool_choice=_local_tool_choice(params),
            temperature=_DEFAULT_TEMPERATURE if params.temperature is None else params.temperature,
            top_p=0.95 if params.top_p is None else params.top_p,
            stop=list(params.stop),
            max_tokens=budget,
            stream=False,
        )
        choice = result["choices"][0]
        message = choice["message"]
        text = message.get("content") or ""
        calls = tuple(
            ToolCall(f"call_{uuid.uuid4().hex[:24]}", c["function"]["name"], c["function"]["arguments"])
            for c in message.get("tool_calls") or ()
        )
        usage = result.get("usage") or {}
        progress.input_tokens = int(usage.get("prompt_tokens") or 0)
        progress.tool_calls += len(calls)
        if index == 0 and text:
            progress.text_parts.append(text)
        if emit is not None:
            if text:
                emit(Delta(text, index))
            for n, call in enumerate(calls):
                emit(Delta("", index, (ToolCallDelta(n, call.id, call.name, call.arguments),)))
        progress.compute_s += time.perf_counter() - started
        self._last_used = time.monotonic()
        finish = "tool_calls" if calls else (choice.get("finish_reason") or "stop")
        tokens = Usage(progress.input_tokens, int(usage.get("completion_tokens") or 0))
        return _Answer(text, finish, tokens, calls)

    def _generate_all(
        self,
        messages: tuple[Message, ...],
        params: ChatParams,
        cancel: threading.Event,
        progress: CallProgress,
        emit: Callable[[Delta], None] | None,
    ) -> list[_Answer]:
        """``n`` choices, one after the other (the worker runs one generation at a time)."""
        answers = []
        for index in range(params.n):
            answers.append(self._generate(messages, params, cancel, progress, emit, index))
            if cancel.is_set():
                break
        return answers

    async def complete(
        self, model: str, messages: tuple[Message, ...], params: ChatParams, progress: CallProgress
    ) -> Completion:
        progress.attempts = 1
        cancel = threading.Event()
        try:
            answers = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._generate_all, messages, params, cancel, progress, None
            )
        finally:
            cancel.set()  # if we were cancelled while generating, stop the worker too
        first = answers[0]
        more = tuple(Choice(i, a.text, a.finish_reason, a.tool_calls, a.logprobs) for i, a in enumerate(answers) if i)
        return Completion(first.text, first.finish_reason, _total(answers), first.tool_calls, first.logprobs, more)

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

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        def work() -> list[_Answer]:
            try:
                return self._generate_all(messages, params, cancel, progress, emit)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        future = loop.run_in_executor(self._executor, work)
        try:
            while isinstance(item := await queue.get(), Delta):
                yield item
            answers = await future
            more = tuple((i, a.finish_reason) for i, a in enumerate(answers) if i)
            yield StreamEnd(answers[0].finish_reason, _total(answers), more)
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
