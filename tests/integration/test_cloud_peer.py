"""A real llama.cpp OpenAI-compatible server as the agent's cloud peer, through the openai SDK.

``python -m llama_cpp.server`` answers for any model name it is sent and reports usage on plain
answers, but sends no usage chunk in a stream: there the agent must estimate, and say so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.pricing.tokens import count_text_tokens
from tests.conftest import RunningAgent
from tests.support.llama_server import llama_cpp_server

MODEL = "peer-smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# 3 USD / 15 USD per million tokens, so every token moves the cost.
PRICING = {"overrides": {MODEL: {"input_usd_per_mtok": "3", "output_usd_per_mtok": "15"}}}


def micro_usd(input_tokens: int, output_tokens: int) -> int:
    return input_tokens * 3 + output_tokens * 15


@pytest.fixture(scope="module")
def peer(chat_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a llama.cpp server on a free loopback port; stopped after the module."""
    with llama_cpp_server(chat_model_path, tmp_path_factory.mktemp("peer") / "llama_cpp_server.log") as base_url:
        yield base_url


@pytest.fixture
def peer_agent(start_agent: Callable[..., RunningAgent], peer: str) -> RunningAgent:
    endpoint = {"name": "peer", "base_url": peer, "models": [MODEL], "timeout_s": 60}
    return start_agent(cloud=[endpoint], pricing=PRICING)


def test_answer_is_priced_from_the_peers_own_usage(peer_agent: RunningAgent) -> None:
    raw = peer_agent.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=12, temperature=0
    )
    completion = raw.parse()

    assert completion.choices[0].message.content
    assert completion.model == MODEL
    usage = completion.usage
    # The chat template wraps the question: llama.cpp counts more than the question's words.
    assert usage is not None and usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 12
    assert raw.headers["X-AIFinOps-Route"] == "cloud"
    cost = micro_usd(usage.prompt_tokens, usage.completion_tokens)
    assert raw.headers["X-AIFinOps-Cost-USD"] == f"{cost / 1_000_000:.6f}"

    [row] = peer_agent.rows()
    assert (row.status, row.route, row.provider, row.model, row.stream) == (
        "ok",
        "cloud",
        "peer",
        MODEL,
        False,
    )
    assert (row.input_tokens, row.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert row.tokens_estimated is False
    assert (row.cost_micro_usd, row.price_source, row.attempts) == (cost, "override", 1)


def test_stream_without_upstream_usage_is_estimated(peer_agent: RunningAgent) -> None:
    stream = peer_agent.client().chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, info, finish = "", None, None, None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
            info = (chunk.model_extra or {})["x_aifinops"]

    assert text
    assert finish in {"stop", "length"}
    assert usage is not None and info is not None
    assert info["tokens_estimated"] is True

    [row] = peer_agent.rows()
    assert (row.status, row.stream, row.tokens_estimated) == ("ok", True, True)
    assert row.output_tokens == usage.completion_tokens == count_text_tokens(text) > 0
    assert row.input_tokens == usage.prompt_tokens > 0
    assert (row.cost_micro_usd, row.price_source) == (
        micro_usd(row.input_tokens, row.output_tokens),
        "override",
    )
    assert info["cost_micro_usd"] == row.cost_micro_usd
