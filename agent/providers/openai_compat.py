"""Any OpenAI-compatible endpoint (OpenAI, OpenRouter, vLLM, a llama.cpp server, ...).

Speaks the chat-completions wire format directly over aiohttp. The ``openai`` SDK was the first
transport; it cost about 1.5 ms of CPU per call on this path (request building, response models,
its HTTP client), which alone broke the agent's overhead budget (docs/BENCHMARKS.md).

Retries 429 and 5xx answers and refused connections with exponential back-off, honouring
``Retry-After``; a timeout is not retried (the upstream may have done, and charged, the work).
Streams are retried only before their first byte. When the upstream sends no usage, tokens are
estimated and the usage says so. Embeddings go to ``<base_url>/embeddings`` the same way (vectors
asked for as floats, which every compatible server speaks; base64 answers are read too).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt

from agent.errors import (
    InvalidRequest,
    ProviderBadResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from agent.pricing.tokens import count_embedding_tokens, count_message_tokens, count_text_tokens
from agent.providers.base import (
    CallProgress,
    ChatParams,
    Choice,
    Completion,
    Delta,
    Embedded,
    EmbeddingInputs,
    Message,
    ProviderKind,
    StreamEnd,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from agent.retry import backoff_s, retry_after_s
from agent.settings import CloudEndpoint

_JITTER = random.Random()  # noqa: S311 - spreading retries, not secrets

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class _Failure:
    """A failed attempt that may be retried."""

    description: str
    retry_after_s: float | None = None


class OpenAICompatProvider:
    kind: ProviderKind = "cloud"
    usd_per_hour: Decimal | None = None

    def __init__(self, endpoint: CloudEndpoint, api_key: str | None) -> None:
        self.name = endpoint.name
        self.price_provider_id = endpoint.provider_id
        self._endpoint = endpoint
        self._url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    def models(self) -> tuple[str, ...]:
        return self._endpoint.models

    def cannot_serve(self, params: ChatParams) -> str | None:
        return None  # tools, formats, n and logprobs go to the endpoint as the client sent them

    def _chat_url(self, model: str) -> str:
        """Where chat completions for `model` go (Azure maps models to deployments: azure_openai.py)."""
        return self._url

    def _embeddings_url(self, model: str) -> str:
        """Where embeddings requests for `model` go."""
        return self._endpoint.base_url.rstrip("/") + "/embeddings"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the running event loop
            self._session = aiohttp.ClientSession(headers=self._headers, connector=aiohttp.TCPConnector(limit=256))
        return self._session

    async def complete(
        self, model: str, messages: tuple[Message, ...], params: ChatParams, progress: CallProgress
    ) -> Completion:
        timeout = aiohttp.ClientTimeout(total=self._endpoint.timeout_s)
        response = await self._send(_body(model, messages, params), timeout, progress)
        try:
            data = json.loads(await response.read())
        except (ValueError, aiohttp.ClientError) as e:
            raise self._bad("the cloud endpoint sent a body that is not JSON") from e
        except TimeoutError as e:
            raise self._timeout() from e
        finally:
            response.release()
        return _completion(data, messages)

    async def stream(
        self,
        model: str,
        messages: tuple[Message, ...],
        params: ChatParams,
        progress: CallProgress,
    ) -> AsyncIterator[Delta | StreamEnd]:
        body = _body(model, messages, params)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._endpoint.timeout_s, sock_read=self._endpoint.timeout_s
        )
        response = await self._send(body, timeout, progress)
        usage: Usage | None = None
        finishes: dict[int, str] = {}
        other_text: list[str] = []  # tool call arguments and other choices: for a usage estimate
        try:
            async for line in response.content:
                event = _sse_event(line)
                if event is None:
                    continue
                if event == "[DONE]":
                    break
                if "error" in event:
                    raise ProviderError(f"{self.name}: the stream failed upstream: {_message(event)}")
                usage = _usage(event.get("usage")) or usage
                for choice in event.get("choices") or ():
                    delta = _delta(choice)
                    if delta is not None:
                        (progress.text_parts if delta.index == 0 else other_text).append(delta.text)
                        other_text.extend(call.arguments for call in delta.tool_calls)
                        progress.tool_calls += len(delta.tool_calls)
                        yield delta
                    if choice.get("finish_reason"):
                        finishes[int(choice.get("index") or 0)] = str(choice["finish_reason"])
        except (aiohttp.ClientError, ValueError, AttributeError, TypeError, KeyError) as e:
            response.close()  # a broken stream's connection cannot be reused: closed, not pooled
            raise self._bad(f"the stream broke off ({type(e).__name__})") from e
        except TimeoutError as e:
            response.close()
            raise self._timeout() from e
        finally:
            response.release()
        if 0 not in finishes:
            raise self._bad("the stream ended without a finish reason")
        more = tuple(sorted((i, f) for i, f in finishes.items() if i != 0))
        yield StreamEnd(finishes[0], usage or estimate_usage(messages, progress.text + "".join(other_text)), more)

    async def check(self, model: str, inputs: EmbeddingInputs, dimensions: int | None) -> None:
        """Token ids and ``dimensions`` go to the endpoint as they came: it says what it supports."""

    async def embed(
        self, model: str, inputs: EmbeddingInputs, dimensions: int | None, progress: CallProgress
    ) -> Embedded:
        body: dict[str, Any] = {
            "model": model,
            "input": [item if isinstance(item, str) else list(item) for item in inputs],
            "encoding_format": "float",
        }
        if dimensions is not None:
            body["dimensions"] = dimensions
        timeout = aiohttp.ClientTimeout(total=self._endpoint.timeout_s)
        response = await self._send(body, timeout, progress, self._embeddings_url(model))
        try:
            raw = await response.read()
        except aiohttp.ClientError as e:
            raise self._bad("the cloud endpoint's answer broke off") from e
        except TimeoutError as e:
            raise self._timeout() from e
        finally:
            response.release()
        # Thousands of vectors are megabytes of JSON: parsed off the event loop.
        return await asyncio.to_thread(self._embedded, raw, inputs)

    def _embedded(self, raw: bytes, inputs: EmbeddingInputs) -> Embedded:
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise self._bad("the cloud endpoint sent a body that is not JSON") from e
        return Embedded(self._vectors(data, len(inputs)), _embedding_usage(data, inputs))

    def _vectors(self, data: Any, count: int) -> npt.NDArray[np.float32]:
        """The answer's vectors in input order, or ProviderBadResponse."""
        try:
            rows = sorted(data["data"], key=lambda row: row["index"])
            if [row["index"] for row in rows] != list(range(count)):
                raise ValueError(f"{len(rows)} vectors, indexed otherwise than the {count} inputs")
            vectors = np.array([_embedding(row["embedding"]) for row in rows], dtype=np.float32)
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise self._bad(f"the embeddings answer is not usable ({e})") from e
        if vectors.ndim != 2 or vectors.shape[1] == 0 or not np.isfinite(vectors).all():
            raise self._bad("the embeddings answer holds vectors of different or no length, or non-numbers")
        return vectors

    async def _send(
        self,
        body: dict[str, Any],
        timeout: aiohttp.ClientTimeout,
        progress: CallProgress,
        url: str | None = None,
    ) -> aiohttp.ClientResponse:
        """POST (to the model's chat URL unless `url` is given) with retries; returns a 200
        response whose body is still unread."""
        endpoint = self._endpoint
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        url = url or self._chat_url(body["model"])
        while True:
            progress.attempts += 1
            try:
                response = await self._http().post(url, data=payload, headers=headers, timeout=timeout)
            except TimeoutError as e:
                raise self._timeout() from e
            except aiohttp.ClientConnectionError as e:
                failure = _Failure(type(e).__name__)
            else:
                if response.status == 200:
                    return response
                failure = await self._refusal(response)
            wait_s = failure.retry_after_s
            if wait_s is None:
                wait_s = backoff_s(endpoint.retry_base_s, progress.attempts, _JITTER)
            if progress.attempts > endpoint.max_retries or wait_s > endpoint.retry_max_wait_s:
                message = (
                    f"the endpoint {self.name} is unavailable ({failure.description}, {progress.attempts} attempts)"
                )
                log.warning("%s", message)
                raise ProviderUnavailable(message)
            log.info(
                "%s: %s (attempt %d), retrying in %.2f s",
                self.name,
                failure.description,
                progress.attempts,
                wait_s,
            )
            await asyncio.sleep(wait_s)

    async def _refusal(self, response: aiohttp.ClientResponse) -> _Failure:
        """A non-200 answer: a retryable failure, or raise the error it maps to."""
        try:
            detail = _message(json.loads(await response.read()))
        except (ValueError, aiohttp.ClientError, TimeoutError):
            detail = ""
        finally:
            response.release()
        status = response.status
        if status in _RETRY_STATUSES:
            return _Failure(f"HTTP {status}", _retry_after_s(response.headers))
        if status == 400:
            raise InvalidRequest(f"the cloud endpoint refused the request: {detail or 'HTTP 400'}")
        raise ProviderError(
            f"the cloud endpoint {self.name} answered HTTP {status}"
            + (" (check its API key)" if status in (401, 403) else "")
        )

    def _bad(self, what: str) -> ProviderBadResponse:
        return ProviderBadResponse(f"{self.name}: {what}")

    def _timeout(self) -> ProviderTimeout:
        return ProviderTimeout(f"the cloud endpoint {self.name} did not answer within {self._endpoint.timeout_s} s")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def estimate_usage(messages: tuple[Message, ...], output: str) -> Usage:
    return Usage(count_message_tokens(m.content for m in messages), count_text_tokens(output), estimated=True)


def _body(model: str, messages: tuple[Message, ...], params: ChatParams) -> dict[str, Any]:
    body: dict[str, Any] = dict(params.passthrough)
    body.update(model=model, messages=[m.as_openai() for m in messages])
    optional = {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop) or None,
        "seed": params.seed,
        "n": params.n if params.n > 1 else None,
        "logprobs": True if params.logprobs else None,
        "top_logprobs": params.top_logprobs,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def _completion(data: Any, messages: tuple[Message, ...]) -> Completion:
    try:
        choices = sorted((_choice(raw, i) for i, raw in enumerate(data["choices"])), key=lambda c: c.index)
        first, *more = choices
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ProviderBadResponse(f"the upstream answer has no usable choice ({e})") from e
    written = "".join(c.text + "".join(call.arguments for call in c.tool_calls) for c in choices)
    usage = _usage(data.get("usage")) or estimate_usage(messages, written)
    return Completion(first.text, first.finish_reason, usage, first.tool_calls, first.logprobs, tuple(more))


def _choice(raw: Any, position: int) -> Choice:
    """One choice of an upstream answer: its text, tool calls and logprobs as OpenAI shapes them."""
    message = raw["message"]
    text = message.get("content") or ""
    if not isinstance(text, str):
        raise TypeError("content is not text")
    calls = tuple(
        ToolCall(str(call["id"]), str(call["function"]["name"]), str(call["function"].get("arguments") or ""))
        for call in message.get("tool_calls") or ()
    )
    logprobs = raw.get("logprobs")
    logprobs = logprobs if isinstance(logprobs, dict) else None
    return Choice(int(raw.get("index", position)), text, raw.get("finish_reason") or "stop", calls, logprobs)


def _delta(choice: Any) -> Delta | None:
    """A streamed choice's piece: text, tool call pieces, logprobs (None when it has none of them)."""
    delta = choice.get("delta") or {}
    text = delta.get("content")
    text = text if isinstance(text, str) else ""
    calls = tuple(
        ToolCallDelta(
            int(call.get("index") or 0),
            call.get("id"),
            (call.get("function") or {}).get("name"),
            str((call.get("function") or {}).get("arguments") or ""),
        )
        for call in delta.get("tool_calls") or ()
    )
    logprobs = choice.get("logprobs")
    logprobs = logprobs if isinstance(logprobs, dict) else None
    if not text and not calls and logprobs is None:
        return None
    return Delta(text, int(choice.get("index") or 0), calls, logprobs)


def _usage(raw: Any) -> Usage | None:
    """An answer's usage in full, as OpenAI and the gateways that mimic it send it:

    - ``prompt_tokens_details.cached_tokens`` (OpenAI, Azure, vLLM, llama-server), or a top-level
      ``cache_read_input_tokens`` (Anthropic-style, LiteLLM, OpenRouter's ``cached_tokens`` too) or
      ``prompt_cache_hit_tokens`` (DeepSeek): input read from the provider's prompt cache;
    - ``cache_creation_input_tokens`` or ``prompt_tokens_details.cache_write_tokens``: input written
      to it (Anthropic bills these above the input rate);
    - ``completion_tokens_details.reasoning_tokens``: part of the completion.

    ``prompt_tokens`` includes cached tokens in OpenAI's reading; a gateway passing Anthropic's
    counts through (cache tokens *beside* the input) is recognised when they exceed it, and added.
    A malformed detail is ignored (the call is priced without it), never a failure."""
    if not isinstance(raw, Mapping):
        return None
    if not (_count(raw.get("prompt_tokens")) and _count(raw.get("completion_tokens"))):
        return None
    prompt, completion = int(raw["prompt_tokens"]), int(raw["completion_tokens"])
    prompt_details = raw.get("prompt_tokens_details")
    prompt_details = prompt_details if isinstance(prompt_details, Mapping) else {}
    completion_details = raw.get("completion_tokens_details")
    completion_details = completion_details if isinstance(completion_details, Mapping) else {}
    read = _first_count(prompt_details.get("cached_tokens"), raw.get("cache_read_input_tokens"),
                        raw.get("prompt_cache_hit_tokens"))  # fmt: skip
    written = _first_count(raw.get("cache_creation_input_tokens"), prompt_details.get("cache_write_tokens"))
    reasoning = min(_first_count(completion_details.get("reasoning_tokens")), completion)
    if read + written > prompt:  # Anthropic's reading: the cache tokens are not in prompt_tokens
        prompt += read + written
    return Usage(prompt, completion, cache_read_tokens=read, cache_write_tokens=written, reasoning_tokens=reasoning)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _first_count(*values: Any) -> int:
    """The first of ``values`` that is a token count (a non-negative int), else 0."""
    return next((int(v) for v in values if _count(v)), 0)


def _embedding(value: Any) -> Any:
    """One vector as the endpoint sent it: a list of numbers, or base64 of little-endian float32."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4")
    if not isinstance(value, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise TypeError("an embedding that is not a list of numbers")
    return value


def _embedding_usage(data: Mapping[str, Any], inputs: EmbeddingInputs) -> Usage:
    raw = data.get("usage")
    prompt = raw.get("prompt_tokens") if isinstance(raw, Mapping) else None
    if isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0:
        return Usage(prompt, 0)
    return Usage(count_embedding_tokens(inputs), 0, estimated=True)


def _sse_event(line: bytes) -> Any:
    """One SSE line -> the decoded `data:` payload, "[DONE]", or None for other lines."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return None
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return "[DONE]"
    event = json.loads(payload)
    if not isinstance(event, dict):
        raise ValueError("an SSE event that is not a JSON object")
    return event


def _message(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))[:300]
    return str(error or "")[:300]


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return retry_after_s(headers.get("retry-after"))