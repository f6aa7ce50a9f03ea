"""Reading the agent's server-sent events: a streamed chat answer, as `aifinops chat` and the tray
read it (one reader for both).

`server_events` splits a stream's lines into events (the WHATWG rules: fields up to a blank
line, `data` lines joined, comments and unknown fields skipped); `read_chat` hands each text
delta of an OpenAI-style chat stream to a callback and returns the last chunk's `x_aifinops`;
`stream_chat` POSTs the request and does both. Anything the agent says went wrong, before the
stream (an HTTP error) or in it (an error event), is a `StreamError`, which each client turns
into its own error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from agent.api.schemas import AIFinOpsInfo

CHAT_PATH = "/v1/chat/completions"
MID_STREAM_STATUS = 502  # an error event after the 200: the upstream failed while answering


@dataclass(frozen=True)
class ServerEvent:
    event: str  # "message" when the stream names none
    data: str


def server_events(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """The events in a stream's lines (without their line ends, as httpx's `iter_lines` gives
    them). An event the stream ends in the middle of (no blank line after it) is dropped."""
    event = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield ServerEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value


class StreamError(Exception):
    """The agent refused the request (`status` >= 400) or sent an error event mid-stream
    (`status` 502). `body` is its JSON error body, {"error": {"type", "message", ...}}, or None."""

    def __init__(self, status: int, body: Any, retry_after: str | None = None) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        self.error: dict[str, Any] = error if isinstance(error, dict) else {}
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.type = str(self.error.get("type") or "http_error")
        self.message = str(self.error.get("message") or f"the agent answered HTTP {status}")
        super().__init__(f"{status} {self.type}: {self.message}")


def chat_chunks(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON chunks of a streamed chat answer, up to `data: [DONE]`."""
    for event in server_events(lines):
        if event.data == "[DONE]":
            return
        try:
            chunk = json.loads(event.data)
        except ValueError:
            body = {"error": {"type": "bad_stream", "message": f"not a JSON chunk: {event.data[:80]!r}"}}
            raise StreamError(MID_STREAM_STATUS, body) from None
        if not isinstance(chunk, dict):
            raise StreamError(MID_STREAM_STATUS, {"error": {"type": "bad_stream", "message": "not a chunk"}})
        if "error" in chunk:
            raise StreamError(MID_STREAM_STATUS, chunk)
        yield chunk


def read_chat(lines: Iterable[str], on_text: Callable[[str], None]) -> AIFinOpsInfo | None:
    """Hand each text delta to `on_text` as it arrives; the `x_aifinops` of the stream's last
    chunk that has one (cost, route, cache), None when none had."""
    info: dict[str, Any] | None = None
    for chunk in chat_chunks(lines):
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                on_text(text)
        if chunk.get("x_aifinops"):
            info = chunk["x_aifinops"]
    if info is None:
        return None
    from agent.api.schemas import AIFinOpsInfo  # its 50 pydantic models: not before the first token

    return AIFinOpsInfo.model_validate(info)


def stream_chat(
    http: httpx.Client,
    body: dict[str, Any],
    on_text: Callable[[str], None],
    *,
    headers: dict[str, str],
    timeout: httpx.Timeout,
) -> AIFinOpsInfo | None:
    """POST `body` to the agent's chat completions as a stream (with its usage and cost) and read
    it with `read_chat`. httpx's transport errors are the caller's to word."""
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", CHAT_PATH, json=payload, headers=headers, timeout=timeout) as response:
        if response.status_code >= 400:
            response.read()
            try:
                error_body = response.json()
            except ValueError:
                error_body = None
            raise StreamError(response.status_code, error_body, response.headers.get("retry-after"))
        return read_chat(response.iter_lines(), on_text)
