"""``POST /v1/chat/completions`` on the wire: OpenAI's request in, a completion or a stream of
chunks out, with the agent's ``x_aifinops`` object and cost headers."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response

from agent.api import schemas
from agent.api.answer import (
    Event,
    aifinops_info,
    answer_model,
    cost_headers,
    error_event,
    walk,
    wire_usage,
)
from agent.api.bodies import parse_body, refuse_unknown
from agent.api.features import feature_tag
from agent.chat import ChatCall
from agent.errors import AIFinOpsError
from agent.gateway import ChatResult, Flight, StreamSummary
from agent.money import format_usd
from agent.providers.base import ChatParams, Message, ToolCall
from agent.providers.base import Choice as AnswerChoice


def chat_call(payload: Any, headers: Mapping[str, str]) -> ChatCall:
    body = parse_body(schemas.ChatCompletionRequest, payload)
    extras = body.extra_fields()
    refuse_unknown(set(extras) - schemas.PASSTHROUGH_FIELDS)
    feature = feature_tag(headers, body.metadata)
    # Tools and formats were validated above; cloud endpoints get them exactly as the client sent them.
    known = {name: payload[name] for name in schemas.TOOL_AND_FORMAT_FIELDS if payload.get(name) is not None}
    if known.get("response_format") == {"type": "text"}:
        del known["response_format"]  # the default: nothing to ask of any model
    params = ChatParams(
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=schemas.stop_sequences(body.stop),
        seed=body.seed,
        n=body.n or 1,
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs,
        passthrough=tuple(sorted((extras | known).items())),
    )
    messages = tuple(_message(m) for m in body.messages)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    no_cache = body.cache is False or "no-cache" in headers.get("cache-control", "").lower()
    return ChatCall(body.model, messages, params, feature, body.stream, include_usage, not no_cache)


def _message(m: schemas.ChatMessageIn) -> Message:
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ())
    return Message(m.role, m.text(), m.name, calls, m.tool_call_id)


def completion_response(result: ChatResult) -> Response:
    c, flight = result.completion, result.flight
    info = aifinops_info(flight, result.price, c.usage.estimated)
    body = schemas.ChatCompletion(
        id=flight.request_id,
        created=int(time.time()),
        model=info.model,
        choices=[_choice(choice) for choice in c.choices],
        usage=wire_usage(c.usage),
        x_aifinops=info,
    )
    return Response(
        body.model_dump_json(),
        media_type="application/json",
        headers=cost_headers(flight, format_usd(result.price.cost_micro_usd)),
    )


def _choice(choice: AnswerChoice) -> schemas.Choice:
    calls = [call.as_openai() for call in choice.tool_calls] or None
    message = schemas.ChatMessageOut(content=choice.text if choice.text or not calls else None, tool_calls=calls)
    logprobs = dict(choice.logprobs) if choice.logprobs is not None else None
    return schemas.Choice(index=choice.index, message=message, finish_reason=choice.finish_reason, logprobs=logprobs)


async def chunk_stream(events: AsyncGenerator[Event, None], first: Event | None, flight: Flight) -> AsyncIterator[str]:
    """Server-sent chat.completion.chunk events, the cost in the last one, then [DONE]."""
    created = int(time.time())
    model = answer_model(flight)

    def chunk(
        delta: schemas.ChunkDelta, finish: str | None = None, index: int = 0, logprobs: Any = None, **extra: Any
    ) -> str:
        choice = schemas.ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)
        body = schemas.ChatCompletionChunk(
            id=flight.request_id,
            created=created,
            model=model,
            choices=[] if extra.get("usage") else [choice],
            **extra,
        )
        return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

    try:
        for index in range(flight.call.params.n):
            yield chunk(schemas.ChunkDelta(role="assistant", content=""), index=index)
        async for event in walk(first, events):
            if isinstance(event, StreamSummary):
                u = event.usage
                info = aifinops_info(flight, event.price, u.estimated)
                for index, finish in event.more:
                    yield chunk(schemas.ChunkDelta(), finish, index=index)
                yield chunk(schemas.ChunkDelta(), event.finish_reason, x_aifinops=info)
                if flight.call.include_usage:
                    yield chunk(schemas.ChunkDelta(), usage=wire_usage(u), x_aifinops=info)
                break
            calls = [call.as_openai() for call in event.tool_calls] or None
            delta = schemas.ChunkDelta(content=event.text if event.text or not calls else None, tool_calls=calls)
            logprobs = dict(event.logprobs) if event.logprobs is not None else None
            yield chunk(delta, index=event.index, logprobs=logprobs)
        yield "data: [DONE]\n\n"
    except AIFinOpsError as e:  # mid-stream failure: OpenAI clients raise on an error event
        yield f"data: {error_event(schemas.ErrorDetail(message=e.message, type=e.error_type, code=e.code))}\n\n"
    finally:
        await events.aclose()  # records the row as aborted if the client left mid-stream
