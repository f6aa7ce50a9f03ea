"""``POST /v1/completions``, OpenAI's legacy text completions, on the chat pipeline.

The prompt goes to the model as one user message, so routing, the cache, budgets and the ledger
treat it like any chat. What only a raw completion model could do is refused with a 400 naming
the field: ``suffix`` (fill-in-the-middle), ``echo``, ``best_of`` above ``n``, several prompts in
one request, and prompts given as token ids.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from agent.api import schemas
from agent.api.answer import (
    Event,
    aifinops_info,
    answer_model,
    cost_headers,
    dump_json,
    error_event,
    walk,
    wire_usage,
)
from agent.api.bodies import parse_body, refuse_unknown
from agent.api.features import feature_tag
from agent.chat import ChatCall
from agent.errors import AIFinOpsError, InvalidRequest
from agent.gateway import ChatResult, Flight, StreamSummary
from agent.money import format_usd
from agent.providers.base import ChatParams, Message

# Forwarded to cloud endpoints as sent (the chat API takes them under the same names).
_PASSTHROUGH = ("frequency_penalty", "presence_penalty", "logit_bias")
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    prompt: str | list[str]
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=16)
    best_of: int | None = Field(None, ge=1, le=16)
    stop: schemas.Stop = None
    seed: int | None = None
    stream: bool = False
    stream_options: schemas.StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: Literal[False] | None = None
    suffix: None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, int] | None = None
    user: str | None = Field(None, max_length=256)  # accepted and ignored: the token says who calls
    metadata: schemas.Metadata | None = None  # ours, as in chat: metadata.feature tags the spend
    cache: bool | None = None  # aifinops: false skips the semantic cache

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_text(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("one prompt per request: send several prompts as separate requests")
        if isinstance(value, list) and not isinstance(value[0], str):
            raise ValueError("a text prompt: token-id prompts are not supported")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def completion_call(payload: Any, headers: Mapping[str, str]) -> ChatCall:
    body = parse_body(CompletionRequest, payload)
    refuse_unknown(body.model_extra or {})
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidRequest("best_of other than n (the best of several samples) is not supported",
                             code="unsupported_parameter", param="best_of")  # fmt: skip
    if not body.text():
        raise InvalidRequest("prompt: must not be empty", code="invalid_value", param="prompt")
    passthrough = {name: payload[name] for name in _PASSTHROUGH if payload.get(name) is not None}
    params = ChatParams(
        max_tokens=body.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=schemas.stop_sequences(body.stop),
        seed=body.seed,
        n=body.n or 1,
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs,
        passthrough=tuple(sorted(passthrough.items())),
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    no_cache = body.cache is False or "no-cache" in headers.get("cache-control", "").lower()
    feature = feature_tag(headers, body.metadata)
    messages = (Message("user", body.text()),)
    return ChatCall(body.model, messages, params, feature, body.stream, include_usage, not no_cache, "text_completion")


def legacy_logprobs(chat: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Chat's ``logprobs.content`` list as the completions API's parallel arrays."""
    if chat is None:
        return None
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top: list[dict[str, float]] = []
    offsets: list[int] = []
    offset = 0
    for item in chat.get("content") or ():
        tokens.append(item["token"])
        token_logprobs.append(item["logprob"])
        top.append({alt["token"]: alt["logprob"] for alt in item.get("top_logprobs") or ()})
        offsets.append(offset)
        offset += len(item["token"])
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def _choice(index: int, text: str, finish: str | None, logprobs: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": legacy_logprobs(logprobs)}


def text_completion(result: ChatResult) -> Response:
    c, flight = result.completion, result.flight
    info = aifinops_info(flight, result.price, c.usage.estimated)
    body = {
        "id": f"cmpl-{flight.request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": info.model,
        "choices": [_choice(ch.index, ch.text, ch.finish_reason, ch.logprobs) for ch in c.choices],
        "usage": wire_usage(c.usage).model_dump(),
        "x_aifinops": info.model_dump(),
    }
    headers = cost_headers(flight, format_usd(result.price.cost_micro_usd))
    return Response(dump_json(body), media_type="application/json", headers=headers)


async def text_completion_stream(
    events: AsyncGenerator[Event, None], first: Event | None, flight: Flight
) -> AsyncIterator[str]:
    created = int(time.time())
    model = answer_model(flight)

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": f"cmpl-{flight.request_id}", "object": "text_completion", "created": created, "model": model}
        return f"data: {dump_json(body | {'choices': choices} | extra)}\n\n"

    try:
        async for event in walk(first, events):
            if isinstance(event, StreamSummary):
                info = aifinops_info(flight, event.price, event.usage.estimated).model_dump()
                for index, finish in event.more:
                    yield chunk([_choice(index, "", finish, None)])
                yield chunk([_choice(0, "", event.finish_reason, None)], x_aifinops=info)
                if flight.call.include_usage:
                    yield chunk([], usage=wire_usage(event.usage).model_dump(), x_aifinops=info)
                break
            yield chunk([_choice(event.index, event.text, None, event.logprobs)])
        yield "data: [DONE]\n\n"
    except AIFinOpsError as e:
        yield f"data: {error_event(schemas.ErrorDetail(message=e.message, type=e.error_type, code=e.code))}\n\n"
    finally:
        await events.aclose()
