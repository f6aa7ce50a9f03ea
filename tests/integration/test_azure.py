"""A `kind = "azure"` cloud endpoint against a scripted Azure OpenAI resource on 127.0.0.1.

The scripted resource checks what Azure checks: the deployment in the path, the api-version
query and the api-key header (401 otherwise); it answers with the deployment's underlying model
name and, when streaming, opens with Azure's content-filter chunk that has no choices.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import openai
import pytest
from genai_prices import Usage, calc_price

from agent.logs import setup_logging
from agent.money import usd_to_micros
from agent.pricing.prices import PriceBook
from agent.providers.azure_openai import AzureOpenAIProvider
from agent.providers.base import CallProgress, Embedded
from agent.settings import load_settings
from tests.conftest import RunningAgent
from tests.support.files import file_contains

API_VERSION = "2024-10-21"
KEY_ENV = "AZURE_OPENAI_API_KEY"
# Not shaped like any key the log filter masks: it must never be logged at all.
KEY = "azure-secret-7d3e9b1f40c2"
# Deployment -> the model behind it, as the resource names it in its answers.
DEPLOYMENTS = {
    "mini-prod": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-11-20",
    "embed-small": "text-embedding-3-small",
}
TEXT = "Bonjour from the scripted Azure resource."
PROMPT_TOKENS, COMPLETION_TOKENS = 1200, 300
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass(frozen=True)
class Seen:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]
    status: int


class AzureUpstream:
    """Serves /openai/deployments/<deployment>/{chat/completions,embeddings} as Azure OpenAI does."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.fail_next: list[int] = []  # statuses to answer first (with Retry-After: 0)
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                url = urlsplit(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, model = upstream.check(url.path, parse_qs(url.query), headers)
                upstream.seen.append(Seen(url.path, parse_qs(url.query), headers, body, status))
                if status != 200:
                    self.send_json(status, {"error": {"code": str(status), "message": f"scripted {status}"}})
                elif url.path.endswith("/embeddings"):
                    self.send_json(200, embeddings(model, body["input"]))
                elif body.get("stream"):
                    self.send_stream(body, model)
                else:
                    self.send_json(200, answer(model))

            def send_json(self, status: int, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(raw)

            def send_stream(self, body: dict[str, Any], model: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
                for event in stream_events(model, bool((body.get("stream_options") or {}).get("include_usage"))):
                    self.wfile.write(f"data: {event}\n\n".encode())
                    self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def check(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, str]:
        """The status Azure would answer with, and the model behind the deployment."""
        if headers.get("api-key") != KEY:
            return 401, ""
        prefix = "/openai/deployments/"
        deployment, _, operation = path.removeprefix(prefix).partition("/")
        if not path.startswith(prefix) or operation not in ("chat/completions", "embeddings"):
            return 404, ""
        if query.get("api-version") != [API_VERSION] or deployment not in DEPLOYMENTS:
            return 404, ""
        if self.fail_next:
            return self.fail_next.pop(0), ""
        return 200, DEPLOYMENTS[deployment]

    def __enter__(self) -> AzureUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def answer(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-azure",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        },
    }


def embeddings(model: str, inputs: list[str]) -> dict[str, Any]:
    rows = [
        {"object": "embedding", "index": i, "embedding": [float(len(text)), 1.0, -1.0]} for i, text in enumerate(inputs)
    ]
    tokens = sum(len(text.split()) for text in inputs)
    return {"object": "list", "model": model, "data": rows, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def stream_events(model: str, include_usage: bool) -> Iterator[str]:
    # Azure opens with the prompt's content-filter results: no model, no choices.
    yield json.dumps({"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": []})
    words = TEXT.split(" ")
    for i, word in enumerate(words):
        delta = {"content": word if i == 0 else " " + word}
        yield json.dumps({"id": "chatcmpl-azure", "model": model, "choices": [{"index": 0, "delta": delta}]})
    yield json.dumps(
        {"id": "chatcmpl-azure", "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    )
    if include_usage:
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS}
        yield json.dumps({"id": "chatcmpl-azure", "model": model, "choices": [], "usage": usage})
    yield "[DONE]"


def azure_endpoint(base_url: str) -> dict[str, Any]:
    return {
        "name": "azure-east",
        "kind": "azure",
        "base_url": base_url,
        "api_version": API_VERSION,
        "models": ["gpt-4o-mini", "gpt-4o"],
        "deployments": {"gpt-4o-mini": "mini-prod"},  # gpt-4o: the deployment named after it
        "api_key_env": KEY_ENV,
        "retry_base_s": 0.01,
    }


def azure_price_micro_usd(model: str) -> int:
    """What genai-prices' azure table charges for the scripted usage."""
    price = calc_price(
        Usage(input_tokens=PROMPT_TOKENS, output_tokens=COMPLETION_TOKENS), model_ref=model, provider_id="azure"
    )
    return usd_to_micros(Decimal(price.total_price))


@pytest.fixture
def azure() -> Iterator[AzureUpstream]:
    with AzureUpstream() as upstream:
        yield upstream


@pytest.fixture
def agent_log(hermetic_home: Path) -> Iterator[Path]:
    """The agent's logging as `aifinops agent run` sets it up, at DEBUG, in the test's home."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    log_dir = load_settings().paths.log_dir
    assert log_dir.is_relative_to(hermetic_home)
    setup_logging(log_dir, "DEBUG")
    yield log_dir / "agent.log"
    for handler in root.handlers[len(handlers) :]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    for name in ("httpx", "httpcore", "openai", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_azure_answers_plain_and_streamed_priced_under_the_configured_names(
    start_agent: Callable[..., RunningAgent],
    azure: AzureUpstream,
    monkeypatch: pytest.MonkeyPatch,
    agent_log: Path,
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    agent = start_agent(cloud=[azure_endpoint(azure.base_url)])
    azure.fail_next.append(429)  # retried at the same deployment URL, and logged

    with agent.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=QUESTION)
        completion = raw.parse()
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=QUESTION, stream=True, stream_options={"include_usage": True}
        ) as response:
            chunks = list(response.parse())

    mini_cost, strong_cost = azure_price_micro_usd("gpt-4o-mini"), azure_price_micro_usd("gpt-4o")
    assert 0 < mini_cost < strong_cost
    assert completion.choices[0].message.content == TEXT
    assert completion.model == "gpt-4o-mini"  # not the resource's gpt-4o-mini-2024-07-18
    assert raw.headers["X-AIFinOps-Route"] == "cloud"
    assert (completion.model_extra or {})["x_aifinops"]["cost_micro_usd"] == mini_cost
    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == TEXT
    [usage_chunk] = [chunk for chunk in chunks if chunk.usage is not None]
    assert usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert (usage_chunk.model_extra or {})["x_aifinops"]["cost_micro_usd"] == strong_cost
    assert {chunk.model for chunk in chunks} == {"gpt-4o"}

    paths = ["/openai/deployments/mini-prod/chat/completions"] * 2 + ["/openai/deployments/gpt-4o/chat/completions"]
    assert [(s.path, s.status) for s in azure.seen] == list(zip(paths, [429, 200, 200], strict=True))
    assert all(s.query == {"api-version": [API_VERSION]} for s in azure.seen)
    assert all(s.headers["api-key"] == KEY and "authorization" not in s.headers for s in azure.seen)
    assert azure.seen[-1].body["stream_options"] == {"include_usage": True}

    rows = sorted(agent.rows(), key=lambda r: r.model, reverse=True)
    assert [(r.status, r.route, r.provider, r.model, r.stream) for r in rows] == [
        ("ok", "cloud", "azure-east", "gpt-4o-mini", False),
        ("ok", "cloud", "azure-east", "gpt-4o", True),
    ]
    assert [(r.input_tokens, r.output_tokens, r.tokens_estimated) for r in rows] == [
        (PROMPT_TOKENS, COMPLETION_TOKENS, False)
    ] * 2
    assert [(r.cost_micro_usd, r.price_source, r.attempts) for r in rows] == [
        (mini_cost, "genai-prices", 2),
        (strong_cost, "genai-prices", 1),
    ]

    ledger = agent.thread.services.settings.paths.ledger_file
    files = [ledger, ledger.with_name(ledger.name + "-wal")]
    assert any(file_contains(f, completion.id) for f in files)  # the check reads where the rows really are
    assert not any(file_contains(f, KEY) for f in files)
    log_text = agent_log.read_text(encoding="utf-8")
    assert "azure-east: HTTP 429 (attempt 1), retrying" in log_text
    assert KEY not in log_text


def test_a_wrong_key_is_refused_by_azure_and_not_retried(
    start_agent: Callable[..., RunningAgent], azure: AzureUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "not-the-azure-key")
    agent = start_agent(cloud=[azure_endpoint(azure.base_url)])

    with agent.client() as client, pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)

    assert err.value.status_code == 502
    assert isinstance(err.value.body, dict) and err.value.body["type"] == "provider_error"
    assert "check its API key" in err.value.message
    assert [(s.path, s.status) for s in azure.seen] == [("/openai/deployments/mini-prod/chat/completions", 401)]
    [row] = agent.rows()
    assert (row.status, row.model, row.error_type, row.attempts) == ("error", "gpt-4o-mini", "provider_error", 1)
    assert (row.input_tokens, row.output_tokens, row.cost_micro_usd) == (0, 0, 0)


def test_the_azure_price_table_falls_back_to_openai_prices() -> None:
    """provider_id "azure" (the default for kind azure) also prices models Azure's own table lacks."""
    book = PriceBook({}, Decimal("0.10"))
    for model in ("gpt-4.1-nano", "gpt-5-mini"):  # in genai-prices' openai table only
        azure, openai_rates = book.rates(model, "azure"), book.rates(model, "openai")
        assert azure is not None and openai_rates is not None, model
        assert (azure.input_usd_per_mtok, azure.output_usd_per_mtok) == (
            openai_rates.input_usd_per_mtok,
            openai_rates.output_usd_per_mtok,
        ), model


def test_embeddings_go_to_the_models_deployment(azure: AzureUpstream) -> None:
    endpoint = {
        **azure_endpoint(azure.base_url),
        "models": ["text-embedding-3-small"],
        "deployments": {"text-embedding-3-small": "embed-small"},
    }
    [settings] = load_settings(environ={}, overrides={"cloud": [endpoint]}).cloud
    provider = AzureOpenAIProvider(settings, KEY)

    async def embed() -> Embedded:
        try:
            return await provider.embed("text-embedding-3-small", ("one two", "three"), None, CallProgress())
        finally:
            await provider.close()

    embedded = asyncio.run(embed())

    assert embedded.vectors.tolist() == [[7.0, 1.0, -1.0], [5.0, 1.0, -1.0]]
    assert (embedded.usage.input_tokens, embedded.usage.output_tokens, embedded.usage.estimated) == (3, 0, False)
    [seen] = azure.seen
    assert (seen.path, seen.status) == ("/openai/deployments/embed-small/embeddings", 200)
    assert seen.query == {"api-version": [API_VERSION]} and seen.headers["api-key"] == KEY
    assert seen.body["input"] == ["one two", "three"]
