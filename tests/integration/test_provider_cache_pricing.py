"""Usage in full: a real agent, a scripted OpenAI-compatible upstream that reports cached prompt
tokens (OpenAI's and Anthropic's fields), and the ledger, the API and the SDK as the judges."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from genai_prices import Usage, calc_price

from agent.benchmarks.upstream import Behaviour, ScriptedUpstream
from agent.money import usd_to_micros
from tests.conftest import RunningAgent

QUESTION = [{"role": "user", "content": "Summarise our long shared context again."}]
OPENAI_CACHED = Behaviour(
    prompt_tokens=10_000,
    completion_tokens=200,
    usage_extra=(
        ("prompt_tokens_details", {"cached_tokens": 8_000, "audio_tokens": 0}),
        ("completion_tokens_details", {"reasoning_tokens": 64}),
    ),
)
# A gateway passing Anthropic's counts through: the cache tokens beside prompt_tokens, not in it.
ANTHROPIC_CACHED = Behaviour(
    prompt_tokens=1_000,
    completion_tokens=100,
    usage_extra=(("cache_read_input_tokens", 6_000), ("cache_creation_input_tokens", 3_000)),
)


def _agent(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream) -> RunningAgent:
    models = ["gpt-4.1", "claude-sonnet-4-5"]
    return start_agent(cloud=[{"name": "scripted", "base_url": upstream.base_url, "models": models, "max_retries": 0}],
                       cache={"enabled": False})  # fmt: skip


def _table_micros(model: str, **usage: Any) -> int:
    return usd_to_micros(Decimal(calc_price(Usage(**usage), model_ref=model).total_price))


def test_cached_prompt_tokens_cost_on_the_ledger_what_genai_prices_says(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    agent = _agent(start_agent, upstream)
    upstream.script.extend([OPENAI_CACHED, OPENAI_CACHED])
    client = agent.client()
    answer = client.chat.completions.create(model="gpt-4.1", messages=QUESTION)  # type: ignore[arg-type]
    assert answer.usage is not None and answer.usage.prompt_tokens == 10_000
    assert answer.usage.prompt_tokens_details is not None and answer.usage.prompt_tokens_details.cached_tokens == 8_000
    assert answer.usage.completion_tokens_details is not None
    assert answer.usage.completion_tokens_details.reasoning_tokens == 64
    stream = client.chat.completions.create(model="gpt-4.1", messages=QUESTION, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    [final] = [c for c in chunks if c.usage is not None]
    assert final.usage is not None and final.usage.prompt_tokens_details is not None
    assert final.usage.prompt_tokens_details.cached_tokens == 8_000

    expected = _table_micros("gpt-4.1", input_tokens=10_000, cache_read_tokens=8_000, output_tokens=200)
    assert expected == 9_600  # 2,000 x $2 + 8,000 x $0.50 + 200 x $8 per million; at full price 21,600
    rows = agent.rows()
    assert [(r.cost_micro_usd, r.cache_read_tokens, r.reasoning_tokens, r.provider_cache_saved_micro_usd, r.stream)
            for r in rows] == [(9_600, 8_000, 64, 12_000, False), (9_600, 8_000, 64, 12_000, True)]  # fmt: skip
    assert all(r.price_source == "genai-prices" and not r.tokens_estimated for r in rows)

    with agent.http() as http:
        [by_model] = http.get("/api/v1/spend", params={"by": "model"}).json()["rows"]
        dashboard = http.get("/api/v1/dashboard").json()
    assert (by_model["cost_micro_usd"], by_model["cache_read_tokens"]) == (19_200, 16_000)
    assert by_model["provider_cache_saved_usd"] == "0.024000"
    assert dashboard["savings"]["provider_cache_micro_usd"] == 24_000


def test_anthropic_style_cache_writes_and_reads_are_priced_at_their_own_rates(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    agent = _agent(start_agent, upstream)
    upstream.script.append(ANTHROPIC_CACHED)
    with agent.http() as http:
        body = {"model": "claude-sonnet-4-5", "messages": QUESTION}
        answered = http.post("/v1/chat/completions", json=body)
    assert answered.status_code == 200, answered.text
    usage = answered.json()["usage"]
    # prompt_tokens is every input token, as OpenAI counts: the uncached 1,000 and the 9,000 cached.
    assert (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]) == (10_000, 6_000)
    [row] = agent.rows()
    expected = _table_micros("claude-sonnet-4-5", input_tokens=10_000, cache_read_tokens=6_000,
                             cache_write_tokens=3_000, output_tokens=100)  # fmt: skip
    full = _table_micros("claude-sonnet-4-5", input_tokens=10_000, output_tokens=100)
    assert (row.cost_micro_usd, row.cache_read_tokens, row.cache_write_tokens) == (expected, 6_000, 3_000)
    assert row.provider_cache_saved_micro_usd == full - expected
