"""Any OpenAI-compatible endpoint (OpenAI, Azure, OpenRouter, vLLM, llama.cpp server).

Retries 429 and 5xx answers and refused connections with exponential back-off, honouring
``Retry-After``; a timeout is not retried (the upstream may have done, and charged, the work).
Streams are retried only before their first byte. When the upstream sends no usage, tokens are
estimated and the usage says so.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import httpx
import openai

from agent.errors import (
    InvalidRequest,
    ProviderBadResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from agent.pricing.tokens import count_message_tokens, count_text_tokens
from agent.providers.base import (
    ChatParams,
    Completion,
    Delta,
    Message,
    StreamEnd,
    StreamProgress,
    Usage,
)
from agent.settings import CloudEndpoint

log = logging.getLogger(__name__)

_RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)


class OpenAICompatProvider:
    kind = "cloud"

    def __init__(self, endpoint: CloudEndpoint, api_key: str | None) -> None:
        self.name = endpoint.name
        self.price_provider_id = endpoint.provider_id
        self._endpoint = endpoint
        self._client = openai.AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=api_key or "no-key",
            timeout=endpoint.timeout_s,
            max_retries=0,  # retries are ours: counted, recorded, Retry-After honoured
        )

    def models(self) -> tuple[str, ...]:
        return self._endpoint.models

    def _request(
        self, model: str, messages: tuple[Message, ...], params: ChatParams
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": [m.as_openai() for m in messages]}
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens
        if params.temperature is not None:
            body["temperature"] = params.temperature
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.passthrough:
            body["extra_body"] = dict(params.passthrough)
        return body

    async def complete(
        self, model: str, messages: tuple[Message, ...], params: ChatParams
    ) -> Completion:
        body = self._request(model, messages, params)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._client.chat.completions.create(**body)
                return _completion(response, messages, attempt)
            except _RETRYABLE as e:
                await self._backoff_or_raise(e, attempt)
            except openai.APIError as e:
                _raise_mapped(e, attempt)
            except ValueError as e:  # a 200 whose body is not JSON: the SDK lets json's error out
                message = f"{self.name}: the cloud endpoint sent a body that is not JSON"
                raise ProviderBadResponse(message, attempts=attempt) from e

    async def stream(
        self,
        model: str,
        messages: tuple[Message, ...],
        params: ChatParams,
        progress: StreamProgress,
    ) -> AsyncIterator[Delta | StreamEnd]:
        body = self._request(model, messages, params)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        while True:
            progress.attempts += 1
            try:
                upstream = await self._client.chat.completions.create(**body)
                break
            except _RETRYABLE as e:
                await self._backoff_or_raise(e, progress.attempts)
            except openai.APIError as e:
                _raise_mapped(e, progress.attempts)
        usage: Usage | None = None
        finish_reason: str | None = None
        try:
            async for chunk in upstream:
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        progress.text_parts.append(choice.delta.content)
                        yield Delta(choice.delta.content)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        except (openai.APIError, httpx.HTTPError, ValueError) as e:
            raise ProviderBadResponse(
                f"{self.name}: the stream broke off: {type(e).__name__}", attempts=progress.attempts
            ) from e
        finally:
            await upstream.close()
        if finish_reason is None:
            raise ProviderBadResponse(
                f"{self.name}: the stream ended without a finish reason", attempts=progress.attempts
            )
        yield StreamEnd(finish_reason, usage or estimate_usage(messages, progress.text), progress.attempts)

    async def _backoff_or_raise(self, error: openai.APIError, attempt: int) -> None:
        endpoint = self._endpoint
        wait_s = _retry_after_s(error)
        if wait_s is None:
            wait_s = endpoint.retry_base_s * 2 ** (attempt - 1)
        # APITimeoutError is an APIConnectionError, but the upstream may have done (and charged)
        # the work: a timeout is never retried.
        if (
            isinstance(error, openai.APITimeoutError)
            or attempt > endpoint.max_retries
            or wait_s > endpoint.retry_max_wait_s
        ):
            _raise_mapped(error, attempt)
        log.info(
            "%s: %s (attempt %d), retrying in %.2f s", self.name, _describe(error), attempt, wait_s
        )
        await asyncio.sleep(wait_s)

    async def close(self) -> None:
        await self._client.close()


def estimate_usage(messages: tuple[Message, ...], output: str) -> Usage:
    return Usage(
        count_message_tokens(m.content for m in messages), count_text_tokens(output), estimated=True
    )


def _completion(response: Any, messages: tuple[Message, ...], attempt: int) -> Completion:
    choices = getattr(response, "choices", None)
    if not choices or getattr(choices[0], "message", None) is None:
        raise ProviderBadResponse("the upstream answered without choices", attempts=attempt)
    text = choices[0].message.content or ""
    usage = response.usage
    measured = (
        Usage(usage.prompt_tokens, usage.completion_tokens)
        if usage is not None and usage.prompt_tokens is not None
        else estimate_usage(messages, text)
    )
    return Completion(text, choices[0].finish_reason or "stop", measured, attempt)


def _retry_after_s(error: openai.APIError) -> float | None:
    response = getattr(error, "response", None)
    if response is None:
        return None
    headers = response.headers
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _describe(error: openai.APIError) -> str:
    status = getattr(error, "status_code", None)
    return f"HTTP {status}" if status else type(error).__name__


def _raise_mapped(error: openai.APIError, attempts: int) -> NoReturn:
    """Upstream error -> our tree. The client's token was fine; upstream auth is our problem."""
    detail = _describe(error)
    if isinstance(error, openai.APITimeoutError):
        raise ProviderTimeout(f"the cloud endpoint did not answer in time ({detail})", attempts=attempts) from error
    if isinstance(error, _RETRYABLE):
        unavailable = ProviderUnavailable(
            f"the cloud endpoint is unavailable ({detail}, {attempts} attempts)", attempts=attempts
        )
        raise unavailable from error
    if isinstance(error, openai.BadRequestError):
        raise InvalidRequest(f"the cloud endpoint refused the request: {error.message}") from error
    if isinstance(error, openai.APIResponseValidationError):
        raise ProviderBadResponse(f"the cloud endpoint sent an invalid reply ({detail})", attempts=attempts) from error
    raise ProviderError(f"the cloud endpoint failed ({detail})", attempts=attempts) from error
