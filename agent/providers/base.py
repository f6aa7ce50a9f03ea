"""The Provider seam: what the gateway asks of any model backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

ProviderKind = Literal["local", "cloud"]
# What an embeddings request embeds: texts, or (for models that take them) lists of token ids.
EmbeddingInputs = tuple[str, ...] | tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ToolCall:
    """A function call the model asked for; ``arguments`` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def as_openai(self) -> dict[str, Any]:
        content: str | None = self.content if self.content or not self.tool_calls else None
        out: dict[str, Any] = {"role": self.role, "content": content}
        if self.name:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [call.as_openai() for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True)
class ChatParams:
    """Sampling parameters the agent understands; everything else is refused at the API."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1  # choices to generate
    logprobs: bool = False
    top_logprobs: int | None = None
    # Extra OpenAI fields passed to cloud endpoints unchanged (tools, tool_choice, response_format,
    # ...), validated by the API where the agent reads them too.
    passthrough: tuple[tuple[str, Any], ...] = ()

    def option(self, name: str) -> Any:
        """A passthrough field's value (None when the client did not send it)."""
        return dict(self.passthrough).get(name)

    @property
    def tools(self) -> list[dict[str, Any]]:
        tools = self.option("tools")
        return tools if isinstance(tools, list) else []


@dataclass(frozen=True)
class Usage:
    """Tokens of one call. ``input_tokens`` counts every input token, those the provider read
    from or wrote to its prompt cache included (billed at their own rates: ``cache_read_tokens``,
    ``cache_write_tokens``); ``reasoning_tokens`` are part of ``output_tokens``."""

    input_tokens: int
    output_tokens: int
    estimated: bool = False
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Choice:
    """One of several answers to the same request (``n`` > 1)."""

    index: int
    text: str
    finish_reason: str
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    usage: Usage  # of every choice together
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: Mapping[str, Any] | None = None  # OpenAI's choice.logprobs object
    more: tuple[Choice, ...] = ()  # choices 1..n-1

    @property
    def choices(self) -> tuple[Choice, ...]:
        return (Choice(0, self.text, self.finish_reason, self.tool_calls, self.logprobs), *self.more)


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the first carries its id and name, the rest arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def as_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"], out["type"] = self.id, "function"
        function: dict[str, str] = {"arguments": self.arguments}
        if self.name is not None:
            function["name"] = self.name
        out["function"] = function
        return out


@dataclass(frozen=True)
class Delta:
    text: str
    index: int = 0  # which choice
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class StreamEnd:
    finish_reason: str
    usage: Usage
    more: tuple[tuple[int, str], ...] = ()  # (choice index, finish reason) of choices 1..n-1


@dataclass
class CallProgress:
    """What a call has done so far, kept up to date by the provider while it works.

    The gateway reads it when it records the call, however the call ended: finished, failed,
    or cancelled because the client left.
    """

    text_parts: list[str] = field(default_factory=list)
    attempts: int = 0  # HTTP attempts (cloud) or 1 (local)
    compute_s: float = 0.0  # time the local model spent on it (0 for cloud)
    input_tokens: int | None = None  # exact prompt tokens, once the provider knows them
    # Local models: geometric mean of the probabilities of the tokens the model chose (0..1),
    # the cascade's confidence signal; None when the provider does not measure it.
    confidence: float | None = None
    # Local models: seconds spent loading the model for this call (0: it was loaded already), and
    # when its computation started (Unix time), for charging GPU busy time to the caller.
    load_s: float = 0.0
    compute_started_unix: float | None = None
    tool_calls: int = 0  # tool calls (or pieces of them, streamed) the model produced

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class Provider(Protocol):
    name: str
    kind: ProviderKind
    price_provider_id: str
    # Local providers: the hourly rate a call's compute seconds are charged at (None: the agent's
    # pricing.local_usd_per_hour). Cloud providers are priced by tokens and leave it None.
    usd_per_hour: Decimal | None

    def models(self) -> tuple[str, ...]: ...

    def cannot_serve(self, params: ChatParams) -> str | None:
        """Why this provider cannot honour these parameters (tools, a response format, ...), or None."""
        ...

    async def complete(
        self, model: str, messages: tuple[Message, ...], params: ChatParams, progress: CallProgress
    ) -> Completion: ...

    def stream(
        self,
        model: str,
        messages: tuple[Message, ...],
        params: ChatParams,
        progress: CallProgress,
    ) -> AsyncIterator[Delta | StreamEnd]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Embedded:
    """An embeddings call's answer: one float32 row per input, in input order."""

    vectors: npt.NDArray[np.float32]  # (inputs, dimensions)
    usage: Usage  # output_tokens is always 0


@runtime_checkable
class EmbeddingProvider(Protocol):
    """A backend that embeds text (the local ONNX model; OpenAI-compatible endpoints)."""

    name: str
    kind: ProviderKind
    price_provider_id: str
    usd_per_hour: Decimal | None  # as Provider's

    async def check(self, model: str, inputs: EmbeddingInputs, dimensions: int | None) -> None:
        """Raise InvalidRequest (naming the field) for what this model cannot do; before any spend."""
        ...

    async def embed(
        self, model: str, inputs: EmbeddingInputs, dimensions: int | None, progress: CallProgress
    ) -> Embedded: ...
