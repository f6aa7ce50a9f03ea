"""Chat with the real SmolLM2 through the agent, with the official openai SDK."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import RunningAgent

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_prices_and_records_one_row(agent: RunningAgent) -> None:
    raw = agent.client().chat.completions.with_raw_response.create(
        model="local",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        extra_headers={"X-AIFinOps-Feature": "faq"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 10
    assert raw.headers["X-AIFinOps-Route"] == "local"

    [row] = agent.rows()
    assert row.id == completion.id == raw.headers["X-AIFinOps-Request-Id"]
    assert (row.user_name, row.feature, row.status, row.stream) == (
        agent.thread.services.identity.list_users()[0].name,
        "faq",
        "ok",
        False,
    )
    assert (row.input_tokens, row.output_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert row.price_source == "local-compute"
    assert row.cost_micro_usd is not None and row.cost_micro_usd > 0
    assert raw.headers["X-AIFinOps-Cost-USD"] == f"{row.cost_micro_usd / 1_000_000:.6f}"


def test_stream_sends_usage_and_cost_that_match_the_ledger(agent: RunningAgent) -> None:
    stream = agent.client().chat.completions.create(
        model="auto",
        messages=QUESTION,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        metadata={"feature": "chat-ui"},
    )
    text, usage, info = "", None, None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
            info = (chunk.model_extra or {})["x_aifinops"]
    assert text
    assert usage is not None and info is not None
    [row] = agent.rows()
    assert (row.status, row.stream, row.feature, row.requested_model) == ("ok", True, "chat-ui", "auto")
    assert row.output_tokens == usage.completion_tokens > 0
    assert row.input_tokens == usage.prompt_tokens
    assert info["cost_micro_usd"] == row.cost_micro_usd
    assert info["request_id"] == row.id


def test_stream_without_usage_option_sends_no_usage_chunk(agent: RunningAgent) -> None:
    chunks = list(agent.client().chat.completions.create(model="local", messages=QUESTION, max_tokens=8, stream=True))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert len(agent.rows()) == 1


def test_concurrent_requests_to_one_local_model_are_serialised(agent: RunningAgent) -> None:
    client = agent.client()

    def ask(i: int) -> str:
        r = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": f"Say the number {i}."}], max_tokens=8
        )
        return r.id

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(ask, range(6)))
    rows = agent.rows()
    assert sorted(r.id for r in rows) == sorted(ids)
    assert all(r.status == "ok" and r.output_tokens > 0 for r in rows)


def test_models_lists_auto_and_local(agent: RunningAgent) -> None:
    ids = [m.id for m in agent.client().models.list()]
    assert ids[:2] == ["auto", "local"]
