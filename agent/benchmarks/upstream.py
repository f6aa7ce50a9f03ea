"""A scripted OpenAI-compatible server on 127.0.0.1, for cloud faults and fast benchmarks.

Each request takes the next behaviour from ``script`` (or ``default`` when the script is
empty): a normal answer, a 429 with Retry-After, a 5xx, a slow answer, malformed JSON, or a
stream cut off in the middle. Every request body received is kept in ``received``, and its
headers (lower-case names) in ``received_headers``. With ``count_usage`` the usage reports the
request's real token counts (o200k), as a provider would, instead of the scripted numbers.
An answer never bills more completion tokens than the request's ``max_tokens`` (it is then
cut: ``finish_reason`` "length"), as a provider's would not.
``/v1/embeddings`` answers each input with ``scripted_embedding`` (a unit vector drawn from the
input's SHA-256: deterministic across runs and processes) of ``dimensions`` or ``embedding_dim``
values, as floats or base64 as asked, with usage = the inputs' o200k tokens (token-id inputs:
their count); the script's faults (status, slow, malformed, ok_no_usage) apply to it too.
Used by the tests, by ``bench/`` and by ``aifinops bench replay``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.pricing.tokens import count_message_tokens, count_text_tokens

Kind = Literal["ok", "ok_no_usage", "status", "slow", "malformed", "stream_cut"]


@dataclass(frozen=True)
class Behaviour:
    kind: Kind = "ok"
    text: str = "Hello from the scripted upstream."
    prompt_tokens: int = 11
    completion_tokens: int = 7
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    word_delay_s: float = 0.0  # streams: pause before each word
    # (function name, JSON arguments) of the tool calls to answer with instead of text
    tool_calls: tuple[tuple[str, str], ...] = ()
    # More usage fields, as a provider sends them: (name, value), e.g.
    # ("prompt_tokens_details", {"cached_tokens": 8000}) or ("cache_creation_input_tokens", 500)
    usage_extra: tuple[tuple[str, Any], ...] = ()


@dataclass
class ScriptedUpstream:
    default: Behaviour = field(default_factory=Behaviour)
    script: deque[Behaviour] = field(default_factory=deque)
    received: list[dict[str, Any]] = field(default_factory=list)
    received_headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    keep_requests: bool = True  # benchmarks turn this off
    count_usage: bool = False  # usage from the request's and answer's real token counts
    embedding_dim: int = 16  # /v1/embeddings: vector length when the request names no dimensions

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self.port = self._sock.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", http="httptools")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedUpstream:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("scripted upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    async def _take(self, request: Request, malformed: bytes) -> tuple[dict[str, Any], Behaviour, Response | None]:
        """Keep the request, pick its behaviour, wait as scripted; a scripted fault is the answer."""
        body = await request.json()
        if self.keep_requests:
            self.received.append(body)
            self.received_headers.append(dict(request.headers))
        b = self.script.popleft() if self.script else self.default
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if b.kind == "status":
            error = {"error": {"message": f"scripted {b.status}", "type": "scripted"}}
            return body, b, JSONResponse(error, status_code=b.status, headers=dict(b.headers))
        if b.kind == "malformed":
            return body, b, Response(malformed, media_type="application/json")
        return body, b, None

    async def _chat(self, request: Request) -> Response:
        body, b, fault = await self._take(request, b'{"id": "x", "choices": [')
        if fault is not None:
            return fault
        headers = dict(b.headers)
        if body.get("stream"):
            return StreamingResponse(self._stream(body, b), media_type="text/event-stream")
        answer: dict[str, Any] = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [_choice(body, b, index) for index in range(int(body.get("n") or 1))],
        }
        if b.kind != "ok_no_usage":
            prompt_tokens, completion_tokens = b.prompt_tokens, b.completion_tokens
            if self.count_usage:
                prompt_tokens = count_message_tokens(str(m.get("content", "")) for m in body.get("messages", []))
                completion_tokens = count_text_tokens(b.text)
            limit = body.get("max_tokens")
            if isinstance(limit, int) and 0 < limit < completion_tokens and not b.tool_calls:  # stops at max_tokens
                completion_tokens = limit
                answer["choices"][0]["finish_reason"] = "length"
            answer["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                **dict(b.usage_extra),
            }
        return JSONResponse(answer, headers=headers)

    async def _embeddings(self, request: Request) -> Response:
        body, b, fault = await self._take(request, b'{"object": "list", "data": [')
        if fault is not None:
            return fault
        headers = dict(b.headers)
        raw = body.get("input")
        items: list[Any] = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw or [])
        dim = body.get("dimensions") or self.embedding_dim
        vectors = [scripted_embedding(item, dim) for item in items]
        if body.get("encoding_format") == "base64":
            encoded: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            encoded = [v.tolist() for v in vectors]
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
        answer: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model", "scripted")}
        if b.kind != "ok_no_usage":
            tokens = sum(count_text_tokens(item) if isinstance(item, str) else len(item) for item in items)
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse(answer, headers=headers)

    async def _stream(self, body: dict[str, Any], b: Behaviour) -> Any:
        words = b.text.split(" ")
        model = body.get("model", "scripted")

        def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0, **extra: Any) -> str:
            data = {
                "id": "chatcmpl-scripted",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(data)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        if b.tool_calls:  # each call: its id and name first, then the arguments in two pieces
            for i, (name, arguments) in enumerate(b.tool_calls):
                head = {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": ""}}
                yield chunk({"tool_calls": [head]})
                half = len(arguments) // 2
                for piece in (arguments[:half], arguments[half:]):
                    yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
            words = []
        for extra_index in range(1, int(body.get("n") or 1)):  # other choices: the whole text at once
            yield chunk({"role": "assistant", "content": b.text}, index=extra_index)
            yield chunk({}, "stop", index=extra_index)
        for i, word in enumerate(words):
            if b.kind == "stream_cut" and i == len(words) // 2:
                raise ConnectionResetError("scripted: stream cut in the middle")
            if b.word_delay_s:
                await asyncio.sleep(b.word_delay_s)
            yield chunk({"content": word if i == 0 else " " + word})
        yield chunk({}, "tool_calls" if b.tool_calls else "stop")
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if include_usage and b.kind != "ok_no_usage":
            usage = {
                "prompt_tokens": b.prompt_tokens,
                "completion_tokens": b.completion_tokens,
                "total_tokens": b.prompt_tokens + b.completion_tokens,
                **dict(b.usage_extra),
            }
            data = {
                "id": "chatcmpl-scripted",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"


def _choice(body: dict[str, Any], b: Behaviour, index: int) -> dict[str, Any]:
    """One choice of a plain answer: the scripted text or tool calls, with logprobs when asked."""
    if b.tool_calls:
        calls = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(b.tool_calls)
        ]
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
        return {"index": index, "message": message, "finish_reason": "tool_calls"}
    message = {"role": "assistant", "content": b.text}
    choice: dict[str, Any] = {"index": index, "message": message, "finish_reason": "stop"}
    if body.get("logprobs"):
        top = int(body.get("top_logprobs") or 0)
        tokens = [w if i == 0 else " " + w for i, w in enumerate(b.text.split(" "))]
        entries = [{"token": t, "logprob": -0.25, "bytes": list(t.encode())} for t in tokens]
        content = [{**e, "top_logprobs": [e][:top]} for e in entries]
        choice["logprobs"] = {"content": content, "refusal": None}
    return choice


def scripted_embedding(item: str | list[int], dim: int) -> npt.NDArray[np.float32]:
    """The scripted upstream's vector for one input: unit length, the same in every run."""
    seed = hashlib.sha256(json.dumps(item).encode()).digest()
    vector = np.random.default_rng(int.from_bytes(seed[:8], "little")).standard_normal(dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def main() -> None:
    """`python -m agent.benchmarks.upstream --port N`: serve the default answer until SIGTERM."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = ScriptedUpstream(port=args.port, keep_requests=False).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()


if __name__ == "__main__":
    main()
