"""The cloud path against a scripted OpenAI-compatible upstream: prices, retries and faults.

Each test drives the real agent with the official openai SDK and checks three things: what
the client sees, the one ledger row the request leaves, and how many calls reached upstream.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from agent.benchmarks.upstream import Behaviour, ScriptedUpstream
from agent.logs import setup_logging
from agent.pricing.tokens import count_message_tokens, count_text_tokens
from agent.settings import load_settings
from tests.conftest import RunningAgent
from tests.support.files import file_contains

MODEL = "scripted-model"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# 2 USD / 10 USD per million tokens: the scripted 11 prompt + 7 completion tokens cost 92 micro-USD.
PRICING = {"overrides": {MODEL: {"input_usd_per_mtok": "2", "output_usd_per_mtok": "10"}}}
ANSWER_MICRO_USD = 11 * 2 + 7 * 10
MAX_RETRIES = 2


def endpoint(base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "scripted",
        "base_url": base_url,
        "models": [MODEL],
        "max_retries": MAX_RETRIES,
        "retry_base_s": 0.01,
        "retry_max_wait_s": 5.0,
        **extra,
    }


def estimated_cost(text: str) -> tuple[int, int, int]:
    """Input tokens, output tokens and micro-USD at the override rates, from the estimate."""
    input_tokens = count_message_tokens(m["content"] for m in QUESTION)
    output_tokens = count_text_tokens(text)
    return input_tokens, output_tokens, input_tokens * 2 + output_tokens * 10


def error_type(error: openai.APIError) -> str:
    assert isinstance(error.body, dict)
    return str(error.body["type"])


@pytest.fixture
def cloud_agent(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream) -> RunningAgent:
    return start_agent(cloud=[endpoint(upstream.base_url)], pricing=PRICING)


def read_stream(stream: Any) -> tuple[str, Any, dict[str, Any] | None]:
    """The text, the usage chunk's usage and its x_aifinops, from an SDK stream."""
    text, usage, info = "", None, None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
            info = (chunk.model_extra or {})["x_aifinops"]
    return text, usage, info


# -- success -------------------------------------------------------------------------------


def test_answer_is_priced_from_upstream_usage(cloud_agent: RunningAgent, upstream: ScriptedUpstream) -> None:
    raw = cloud_agent.client().chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
    completion = raw.parse()

    assert completion.choices[0].message.content == Behaviour().text
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 7)
    assert raw.headers["X-AIFinOps-Route"] == "cloud"
    assert raw.headers["X-AIFinOps-Cost-USD"] == "0.000092"
    assert (completion.model_extra or {})["x_aifinops"]["cost_micro_usd"] == ANSWER_MICRO_USD
    assert len(upstream.received) == 1
    assert upstream.received[0]["model"] == MODEL
    assert upstream.received[0]["messages"] == QUESTION

    [row] = cloud_agent.rows()
    assert row.id == completion.id
    assert (row.status, row.route, row.provider, row.model, row.stream) == (
        "ok",
        "cloud",
        "scripted",
        MODEL,
        False,
    )
    assert (row.input_tokens, row.output_tokens, row.tokens_estimated) == (11, 7, False)
    assert (row.cost_micro_usd, row.price_source, row.attempts, row.error_type) == (
        ANSWER_MICRO_USD,
        "override",
        1,
        "",
    )


def test_stream_is_priced_from_the_upstream_usage_chunk(cloud_agent: RunningAgent, upstream: ScriptedUpstream) -> None:
    with cloud_agent.client().chat.completions.with_streaming_response.create(
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["X-AIFinOps-Route"] == "cloud"
        text, usage, info = read_stream(response.parse())

    assert text == Behaviour().text
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (11, 7)
    assert info is not None and info["cost_micro_usd"] == ANSWER_MICRO_USD and info["tokens_estimated"] is False
    # The agent always asks upstream for usage, whatever its own client asked for.
    assert upstream.received[0]["stream_options"] == {"include_usage": True}

    [row] = cloud_agent.rows()
    assert (row.status, row.stream, row.attempts) == ("ok", True, 1)
    assert (row.input_tokens, row.output_tokens, row.tokens_estimated) == (11, 7, False)
    assert (row.cost_micro_usd, row.price_source) == (ANSWER_MICRO_USD, "override")
    assert info["request_id"] == row.id


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_missing_usage_is_estimated_and_priced(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream, stream: bool
) -> None:
    upstream.default = Behaviour(kind="ok_no_usage")
    agent = start_agent(cloud=[endpoint(upstream.base_url)], pricing=PRICING)
    client = agent.client()
    if stream:
        text, usage, info = read_stream(
            client.chat.completions.create(
                model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
            )
        )
        assert info is not None and info["tokens_estimated"] is True
    else:
        completion = client.chat.completions.create(model=MODEL, messages=QUESTION)
        text, usage = completion.choices[0].message.content or "", completion.usage
    input_tokens, output_tokens, cost = estimated_cost(Behaviour().text)

    assert text == Behaviour().text
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (
        input_tokens,
        output_tokens,
    )
    [row] = agent.rows()
    assert (row.status, row.stream, row.tokens_estimated) == ("ok", stream, True)
    assert (row.input_tokens, row.output_tokens) == (input_tokens, output_tokens)
    assert output_tokens > 0
    assert (row.cost_micro_usd, row.price_source) == (cost, "override")


# -- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_429_with_retry_after_is_retried_and_charged_once(
    cloud_agent: RunningAgent, upstream: ScriptedUpstream, stream: bool
) -> None:
    upstream.script.append(Behaviour(kind="status", status=429, headers=(("Retry-After", "0"),)))
    client = cloud_agent.client()
    if stream:
        text, _, info = read_stream(
            client.chat.completions.create(
                model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
            )
        )
        assert info is not None and info["cost_micro_usd"] == ANSWER_MICRO_USD
    else:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
        assert raw.http_response.status_code == 200
        assert raw.headers["X-AIFinOps-Cost-USD"] == "0.000092"
        text = raw.parse().choices[0].message.content or ""

    assert text == Behaviour().text
    assert len(upstream.received) == 2
    [row] = cloud_agent.rows()
    assert (row.status, row.attempts, row.error_type) == ("ok", 2, "")
    assert (row.input_tokens, row.output_tokens, row.cost_micro_usd) == (11, 7, ANSWER_MICRO_USD)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_500_every_time_gives_up_after_the_retries(
    cloud_agent: RunningAgent, upstream: ScriptedUpstream, stream: bool
) -> None:
    upstream.default = Behaviour(kind="status", status=500)
    with pytest.raises(openai.APIStatusError) as caught:
        # Also when streaming: a failure before the first token is an HTTP error, not an SSE event.
        cloud_agent.client().chat.completions.create(model=MODEL, messages=QUESTION, stream=stream)

    assert caught.value.status_code == 503
    assert error_type(caught.value) == "provider_unavailable"
    assert caught.value.response.json()["error"]["type"] == "provider_unavailable"
    assert len(upstream.received) == MAX_RETRIES + 1
    [row] = cloud_agent.rows()
    assert (row.status, row.error_type, row.attempts, row.stream) == (
        "error",
        "provider_unavailable",
        MAX_RETRIES + 1,
        stream,
    )
    assert (row.input_tokens, row.output_tokens, row.cost_micro_usd) == (0, 0, 0)


def test_retry_after_beyond_the_max_wait_is_not_retried(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    agent = start_agent(cloud=[endpoint(upstream.base_url, retry_max_wait_s=1.0)], pricing=PRICING)
    upstream.script.append(Behaviour(kind="status", status=429, headers=(("Retry-After", "120"),)))

    with pytest.raises(openai.APIStatusError) as caught:
        agent.client().chat.completions.create(model=MODEL, messages=QUESTION)

    assert caught.value.status_code == 503
    assert error_type(caught.value) == "provider_unavailable"
    assert len(upstream.received) == 1
    [row] = agent.rows()
    assert (row.status, row.error_type, row.attempts, row.cost_micro_usd) == (
        "error",
        "provider_unavailable",
        1,
        0,
    )


def test_a_slow_upstream_times_out_and_is_not_retried(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    agent = start_agent(cloud=[endpoint(upstream.base_url, timeout_s=0.5)], pricing=PRICING)
    upstream.script.append(Behaviour(kind="slow", delay_s=1.5))

    with pytest.raises(openai.APIStatusError) as caught:
        agent.client().chat.completions.create(model=MODEL, messages=QUESTION)

    assert caught.value.status_code == 504
    assert error_type(caught.value) == "provider_timeout"
    # The upstream may have done (and charged) the work: a timeout is never sent twice.
    assert len(upstream.received) == 1
    [row] = agent.rows()
    assert (row.status, row.error_type, row.attempts) == ("error", "provider_timeout", 1)


# -- broken answers ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_malformed_json_is_a_bad_response_and_the_agent_keeps_serving(
    cloud_agent: RunningAgent, upstream: ScriptedUpstream, stream: bool
) -> None:
    upstream.script.append(Behaviour(kind="malformed"))
    client = cloud_agent.client()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=QUESTION, stream=stream)

    assert caught.value.status_code == 502
    assert error_type(caught.value) == "provider_bad_response"
    assert len(upstream.received) == 1

    after = client.chat.completions.create(model=MODEL, messages=QUESTION)
    assert after.choices[0].message.content == Behaviour().text
    failed, ok = cloud_agent.rows()
    assert (failed.status, failed.error_type, failed.attempts) == (
        "error",
        "provider_bad_response",
        1,
    )
    assert failed.cost_micro_usd == 0
    assert (ok.status, ok.cost_micro_usd) == ("ok", ANSWER_MICRO_USD)


def test_a_stream_cut_in_the_middle_raises_and_prices_the_partial_answer(
    cloud_agent: RunningAgent, upstream: ScriptedUpstream
) -> None:
    upstream.script.append(Behaviour(kind="stream_cut"))
    stream = cloud_agent.client().chat.completions.create(
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received += [c.delta.content or "" for c in chunk.choices]

    # The answer had started with HTTP 200: the failure arrives as an SSE error event.
    assert not isinstance(caught.value, openai.APIStatusError)
    assert error_type(caught.value) == "provider_bad_response"
    partial = "".join(received)
    assert partial and Behaviour().text.startswith(partial) and partial != Behaviour().text
    assert len(upstream.received) == 1  # a stream is never retried once it has started
    [row] = cloud_agent.rows()
    input_tokens, output_tokens, cost = estimated_cost(partial)
    assert (row.status, row.error_type, row.stream, row.tokens_estimated) == (
        "error",
        "provider_bad_response",
        True,
        True,
    )
    assert (row.input_tokens, row.output_tokens) == (input_tokens, output_tokens)
    assert row.output_tokens > 0
    assert (row.cost_micro_usd, row.price_source) == (cost, "override")


def test_an_unreachable_endpoint_is_unavailable_after_the_retries(
    start_agent: Callable[..., RunningAgent],
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent = start_agent(cloud=[endpoint(f"http://127.0.0.1:{port}/v1")], pricing=PRICING)

    with pytest.raises(openai.APIStatusError) as caught:
        agent.client().chat.completions.create(model=MODEL, messages=QUESTION)

    assert caught.value.status_code == 503
    assert error_type(caught.value) == "provider_unavailable"
    [row] = agent.rows()
    assert (row.status, row.error_type, row.attempts, row.cost_micro_usd) == (
        "error",
        "provider_unavailable",
        MAX_RETRIES + 1,
        0,
    )


# -- prices and keys -----------------------------------------------------------------------


def test_a_model_nobody_prices_is_recorded_as_unknown_not_free(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    model = "aifinops-made-up-model-7b"
    agent = start_agent(cloud=[{**endpoint(upstream.base_url), "models": [model]}], pricing=PRICING)

    raw = agent.client().chat.completions.with_raw_response.create(model=model, messages=QUESTION)

    assert raw.http_response.status_code == 200
    assert raw.headers["X-AIFinOps-Cost-USD"] == "unknown"
    info = (raw.parse().model_extra or {})["x_aifinops"]
    assert (info["cost_micro_usd"], info["price_source"]) == (None, "unknown")
    [row] = agent.rows()
    assert (row.status, row.input_tokens, row.output_tokens) == ("ok", 11, 7)
    assert (row.cost_micro_usd, row.price_source) == (None, "unknown")
    with agent.http() as http:
        report = http.get("/api/v1/spend", params={"by": "model"}).raise_for_status().json()
    assert report["unpriced_requests"] == 1
    [spend] = report["rows"]
    assert (spend["key"], spend["requests"], spend["unpriced_requests"]) == (model, 1, 1)


@pytest.fixture
def agent_log(hermetic_home: Path) -> Iterator[Path]:
    """The agent's logging as `aifinops agent run` sets it up, at DEBUG, in the test's home."""
    root = logging.getLogger()
    names = ("httpx", "httpcore", "openai", "uvicorn.access")
    levels = {name: logging.getLogger(name).level for name in (*names, "")}
    handlers = list(root.handlers)
    log_dir = load_settings().paths.log_dir  # where the agent started next will log
    assert log_dir.is_relative_to(hermetic_home)
    setup_logging(log_dir, "DEBUG")
    yield log_dir / "agent.log"
    for handler in root.handlers[len(handlers) :]:
        root.removeHandler(handler)
        handler.close()
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_the_api_key_reaches_upstream_and_nowhere_else(
    start_agent: Callable[..., RunningAgent],
    upstream: ScriptedUpstream,
    monkeypatch: pytest.MonkeyPatch,
    agent_log: Path,
) -> None:
    # No "sk-" prefix: the log filter's pattern would not mask this key, so it must never be logged.
    key = "scripted-secret-4f9a1c7e2b"
    monkeypatch.setenv("SCRIPTED_API_KEY", key)
    agent = start_agent(cloud=[endpoint(upstream.base_url, api_key_env="SCRIPTED_API_KEY")], pricing=PRICING)
    upstream.script.append(Behaviour(kind="status", status=429, headers=(("Retry-After", "0"),)))

    completion = agent.client().chat.completions.create(model=MODEL, messages=QUESTION)
    # The same question again would be a cache hit: skip the cache to reach the upstream.
    list(
        agent.client().chat.completions.create(model=MODEL, messages=QUESTION, stream=True, extra_body={"cache": False})
    )

    assert [h["authorization"] for h in upstream.received_headers] == [f"Bearer {key}"] * 3
    ledger = agent.thread.services.settings.paths.ledger_file
    files = [ledger, ledger.with_name(ledger.name + "-wal")]
    assert any(file_contains(f, completion.id) for f in files)  # the check reads where the rows really are
    assert not any(file_contains(f, key) for f in files)
    assert agent_log.parent == agent.thread.services.settings.paths.log_dir
    log_text = agent_log.read_text(encoding="utf-8")
    assert "retrying" in log_text  # the retry was logged, with the key nowhere in the file
    assert key not in log_text
