"""``POST /v1/responses``, OpenAI's Responses API for text in and text out, on the chat pipeline.

``instructions`` and the ``input`` messages become a chat conversation, so routing, the cache,
budgets and the ledger apply as to any chat; the answer comes back as a ``response`` object, or
as the Responses event stream (``response.created`` ... ``response.output_text.delta`` ...
``response.completed``, usage in the last one). Structured output (``text.format``), logprobs
(``top_logprobs`` with ``include``) and ``reasoning.effort`` map onto their chat equivalents.

Not served, each refused with a 400 that names it: tools, stored responses
(``previous_response_id``, ``store: true``, ``conversation``), background mode, non-text input
(images, files) and every field this module does not know.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
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
    walk,
)
from agent.api.bodies import parse_body, refuse_unknown
from agent.api.features import feature_tag
from agent.chat import ChatCall
from agent.errors import AIFinOpsError, InvalidRequest
from agent.gateway import ChatResult, Flight, StreamSummary
from agent.money import format_usd
from agent.providers.base import ChatParams, Message, Usage

LOGPROBS_INCLUDE = "message.output_text.logprobs"
_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text")
# finish_reason -> why a response is incomplete
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=schemas.TOOL_NAME_PATTERN)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    effort: Literal["minimal", "low", "medium", "high"] | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    input: str | list[Message]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    include: list[Literal["message.output_text.logprobs"]] | None = None
    stream: bool = False
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    store: Literal[False] | None = None  # the agent keeps no response objects to fetch later
    truncation: Literal["disabled"] | None = None
    tools: list[Any] | None = Field(None, max_length=0)  # [] only: tool calls go through chat completions
    metadata: schemas.Metadata | None = None  # metadata.feature tags the spend, as in chat
    user: str | None = Field(None, max_length=256)  # accepted and ignored: the token says who calls
    safety_identifier: str | None = Field(None, max_length=256)  # likewise
    cache: bool | None = None  # aifinops: false skips the semantic cache

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("must not be empty")
            return value
        if not isinstance(value, list) or not value:
            raise ValueError("must be a string or a non-empty array of messages")
        if len(value) > 1000:
            raise ValueError("at most 1000 input items")
        return [_input_message(i, item) for i, item in enumerate(value)]

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _input_message(i: int, item: Any) -> Message:
    """One input item as a chat message; ValueError naming the item (and part) at fault."""
    if not isinstance(item, dict):
        raise ValueError(f"input[{i}] is not an object")
    kind = item.get("type", "message")
    if kind != "message":
        raise ValueError(f"input[{i}].type {kind!r} is not supported: only text messages are")
    unknown = sorted(set(item) - {"type", "role", "content", "id", "status"})
    if unknown:
        raise ValueError(f"input[{i}] has unsupported field(s): {', '.join(unknown)}")
    role = item.get("role")
    if role not in _ROLES:
        raise ValueError(f"input[{i}].role must be one of {', '.join(_ROLES)}")
    content = item.get("content")
    if isinstance(content, str):
        return Message(role, content)
    if not isinstance(content, list):
        raise ValueError(f"input[{i}].content must be a string or an array of text parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            raise ValueError(f"input[{i}].content[{j}] must be an input_text or output_text part (got {kind!r})")
        texts.append(part["text"])
    return Message(role, "".join(texts))


@dataclass(frozen=True)
class Echo:
    """What a response object repeats of its request."""

    instructions: str | None
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    metadata: dict[str, str]
    text_format: dict[str, Any]
    top_logprobs: int | None
    include_logprobs: bool


def response_call(payload: Any, headers: Mapping[str, str]) -> tuple[ChatCall, Echo]:
    body = parse_body(ResponsesRequest, payload)
    refuse_unknown(body.extra_fields())
    messages = [body.input] if isinstance(body.input, str) else body.input
    turns = tuple(Message("user", m) if isinstance(m, str) else m for m in messages)
    if body.instructions:
        turns = (Message("developer", body.instructions), *turns)
    passthrough: dict[str, Any] = {}
    fmt = body.text.format if body.text and body.text.format else None
    if fmt is not None and fmt.type != "text":
        passthrough["response_format"] = _chat_format(fmt)
    if body.reasoning and body.reasoning.effort:
        passthrough["reasoning_effort"] = body.reasoning.effort
    if body.service_tier:
        passthrough["service_tier"] = body.service_tier
    want_logprobs = LOGPROBS_INCLUDE in (body.include or ()) or body.top_logprobs is not None
    params = ChatParams(
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        logprobs=want_logprobs,
        top_logprobs=body.top_logprobs,
        passthrough=tuple(sorted(passthrough.items())),
    )
    no_cache = body.cache is False or "no-cache" in headers.get("cache-control", "").lower()
    call = ChatCall(body.model, turns, params, feature_tag(headers, body.metadata), body.stream, True, not no_cache)
    echo = Echo(
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        metadata=dict(body.metadata or {}),
        text_format=fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"},
        top_logprobs=body.top_logprobs,
        include_logprobs=want_logprobs,
    )
    return call, echo


def _chat_format(fmt: TextFormat) -> dict[str, Any]:
    """Responses' ``text.format`` as chat's ``response_format``."""
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.name is None or fmt.json_schema is None:
        raise InvalidRequest("text.format: json_schema needs a name and a schema", code="invalid_value",
                             param="text.format")  # fmt: skip
    inner: dict[str, Any] = {"name": fmt.name, "schema": fmt.json_schema}
    if fmt.description is not None:
        inner["description"] = fmt.description
    if fmt.strict is not None:
        inner["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": inner}


# -- the response object -------------------------------------------------------------------------


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _logprobs(chat: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Chat's ``logprobs.content`` as Responses' list (token, logprob, top_logprobs)."""
    out = []
    for item in (chat or {}).get("content") or ():
        top = [{"token": t["token"], "logprob": t["logprob"]} for t in item.get("top_logprobs") or ()]
        out.append({"token": item["token"], "logprob": item["logprob"], "top_logprobs": top})
    return out


class _Shape:
    """The response object at each stage of one answer."""

    def __init__(self, flight: Flight, echo: Echo) -> None:
        self.flight, self.echo = flight, echo
        self.id = f"resp_{flight.request_id}"
        self.message_id = f"msg_{flight.request_id}"
        self.created_at = int(time.time())

    def text_part(self, text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
        part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
        if self.echo.include_logprobs:
            part["logprobs"] = logprobs
        return part

    def message(self, status: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": parts}

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        finish_reason: str | None = None,
        usage: Usage | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        e = self.echo
        incomplete = _INCOMPLETE.get(finish_reason or "")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "incomplete" if incomplete and status == "completed" else status,
            "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": e.instructions,
            "max_output_tokens": e.max_output_tokens,
            "model": answer_model(self.flight),
            "output": output,
            "parallel_tool_calls": False,
            "temperature": e.temperature,
            "tool_choice": "none",
            "tools": [],
            "top_p": e.top_p,
            "top_logprobs": e.top_logprobs,
            "store": False,
            "text": {"format": e.text_format},
            "truncation": "disabled",
            "metadata": e.metadata,
            "usage": _usage(usage) if usage is not None else None,
            **(extra or {}),
        }


def response_object(result: ChatResult, echo: Echo) -> Response:
    c, flight = result.completion, result.flight
    shape = _Shape(flight, echo)
    status = "incomplete" if c.finish_reason in _INCOMPLETE else "completed"
    message = shape.message(status, [shape.text_part(c.text, _logprobs(c.logprobs))])
    info = aifinops_info(flight, result.price, c.usage.estimated)
    body = shape.response("completed", [message], c.finish_reason, c.usage, {"x_aifinops": info.model_dump()})
    headers = cost_headers(flight, format_usd(result.price.cost_micro_usd))
    return Response(dump_json(body), media_type="application/json", headers=headers)


async def response_stream(
    events: AsyncGenerator[Event, None], first: Event | None, flight: Flight, echo: Echo
) -> AsyncIterator[str]:
    """The Responses event stream of one text answer."""
    shape = _Shape(flight, echo)
    sequence = iter(range(1_000_000_000))
    where = {"item_id": shape.message_id, "output_index": 0, "content_index": 0}

    def event(kind: str, **fields: Any) -> str:
        body = {"type": kind, "sequence_number": next(sequence), **fields}
        return f"event: {kind}\ndata: {dump_json(body)}\n\n"

    text: list[str] = []
    logprobs: list[dict[str, Any]] = []
    try:
        yield event("response.created", response=shape.response("in_progress", []))
        yield event("response.in_progress", response=shape.response("in_progress", []))
        yield event("response.output_item.added", output_index=0, item=shape.message("in_progress", []))
        yield event("response.content_part.added", **where, part=shape.text_part("", []))
        async for e in walk(first, events):
            if isinstance(e, StreamSummary):
                whole = "".join(text)
                status = "incomplete" if e.finish_reason in _INCOMPLETE else "completed"
                part = shape.text_part(whole, logprobs)
                message = shape.message(status, [part])
                yield event("response.output_text.done", **where, text=whole, logprobs=logprobs)
                yield event("response.content_part.done", **where, part=part)
                yield event("response.output_item.done", output_index=0, item=message)
                info = aifinops_info(flight, e.price, e.usage.estimated).model_dump()
                final = shape.response("completed", [message], e.finish_reason, e.usage, {"x_aifinops": info})
                kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
                yield event(kind, response=final)
                break
            if e.index != 0:
                continue  # n is always 1 here
            piece = _logprobs(e.logprobs)
            text.append(e.text)
            logprobs += piece
            if e.text:
                yield event("response.output_text.delta", **where, delta=e.text, logprobs=piece)
    except AIFinOpsError as error:  # mid-stream failure: an error event, then the failed response
        yield event("error", code=error.code or error.error_type, message=error.message, param=None)
        detail = {"code": error.code or error.error_type, "message": error.message}
        failed = shape.response("failed", [], extra={"error": detail})
        yield event("response.failed", response=failed)
    finally:
        await events.aclose()
