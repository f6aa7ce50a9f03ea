"""The Provider seam: what the gateway asks of any model backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ProviderKind = Literal["local", "cloud"]


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    name: str | None = None

    def as_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class ChatParams:
    """Sampling parameters the agent understands; everything else is refused at the API."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Extra OpenAI fields passed to cloud endpoints unchanged (e.g. response_format).
    passthrough: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    estimated: bool = False


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    usage: Usage


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class StreamEnd:
    finish_reason: str
    usage: Usage


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

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class Provider(Protocol):
    name: str
    kind: ProviderKind
    price_provider_id: str

    def models(self) -> tuple[str, ...]: ...

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
