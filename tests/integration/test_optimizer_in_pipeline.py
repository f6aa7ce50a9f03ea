"""The prompt optimiser inside the running agent: what is sent, and what the ledger says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.benchmarks.upstream import ScriptedUpstream
from agent.pricing.tokens import count_message_tokens
from tests.conftest import RunningAgent

MODEL = "scripted-model"
PRICING = {"overrides": {MODEL: {"input_usd_per_mtok": "10", "output_usd_per_mtok": "30"}}}
DOCUMENT = (
    "Quarterly report for the Lisbon office. Revenue grew 12.5% to EUR 4,210,000 while costs "
    "stayed at EUR 3,900,000. Headcount rose from 41 to 47 people, mostly in support. The board "
    "approved a budget of EUR 250,000 for the new data centre in Porto, due in March 2027."
)


def start_cloud(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream, **extra: Any) -> RunningAgent:
    upstream.count_usage = True
    return start_agent(
        cloud=[{"name": "scripted", "base_url": upstream.base_url, "models": [MODEL], "max_retries": 0}],
        pricing=PRICING,
        **extra,
    )


def test_a_repeated_document_is_sent_once_and_the_saving_is_recorded(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    agent = start_cloud(start_agent, upstream)
    messages = [
        {"role": "system", "content": "You answer questions about documents."},
        {"role": "user", "content": f"{DOCUMENT}\n\nWhat was the revenue growth?"},
        {"role": "assistant", "content": "Revenue grew 12.5%."},
        {"role": "user", "content": f"{DOCUMENT}\n\nHow many people work there now?"},
    ]
    agent.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=16)  # type: ignore[arg-type]
    [sent] = upstream.received
    sent_text = "\n".join(m["content"] for m in sent["messages"])
    assert sent_text.count("EUR 4,210,000") == 1  # the second copy was replaced by a reference
    assert sent["messages"][-1]["content"].endswith("How many people work there now?")
    assert sent["messages"][0] == messages[0]
    [row] = agent.rows()
    assert row.prompt_tokens_before is not None and row.prompt_tokens_after is not None
    assert row.prompt_tokens_after < row.prompt_tokens_before
    assert "repeated block" in row.optimizer_note
    saved_tokens = row.prompt_tokens_before - row.prompt_tokens_after
    assert row.cost_saved_micro_usd == saved_tokens * 10  # 10 USD per million input tokens
    assert row.input_tokens == count_message_tokens(m["content"] for m in sent["messages"])


def test_a_long_conversation_is_trimmed_to_fit_the_local_model_keeping_the_system_prompt(
    start_agent: Callable[..., RunningAgent],
) -> None:
    agent = start_agent()
    system = {"role": "system", "content": "You are a terse assistant. Answer in one sentence."}
    history: list[dict[str, str]] = []
    for i in range(40):  # far more than the local model's 2,048-token context
        history.append({"role": "user", "content": f"Tell me fact number {i} about the ocean. " + "Please. " * 20})
        history.append({"role": "assistant", "content": f"Fact {i}: the ocean is large and deep. " * 5})
    messages = [system, *history, {"role": "user", "content": "What is the capital of France?"}]
    completion = agent.client().chat.completions.create(model="local", messages=messages, max_tokens=8)  # type: ignore[arg-type]
    assert completion.choices[0].message.content
    [row] = agent.rows()
    assert row.status == "ok"
    assert row.prompt_tokens_before is not None and row.prompt_tokens_after is not None
    assert row.prompt_tokens_after < 2048 < row.prompt_tokens_before
    assert "dropped" in row.optimizer_note and "oldest turns" in row.optimizer_note
    assert row.input_tokens < 2048  # what llama.cpp actually read


def test_with_the_optimiser_off_the_prompt_goes_as_it_came(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    agent = start_cloud(start_agent, upstream, optimizer={"enabled": False})
    content = f"{DOCUMENT}\n\n\n\n   {DOCUMENT}   \n\nSummarise."
    agent.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=16)
    [sent] = upstream.received
    assert sent["messages"][0]["content"] == content
    [row] = agent.rows()
    assert row.prompt_tokens_before == row.prompt_tokens_after
    assert row.optimizer_note == "" and row.cost_saved_micro_usd == 0


def test_an_unusable_lossy_scoring_model_costs_the_compression_not_the_answer(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    missing = tmp_path / "absent.gguf"
    agent = start_cloud(
        start_agent, upstream, optimizer={"lossy": True, "lossy_min_tokens": 32, "scoring_model": str(missing)}
    )
    content = f"{DOCUMENT}   {DOCUMENT}\n\n\n\nWhat   was the headcount?"
    completion = agent.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=16
    )
    assert completion.choices[0].message.content == "Hello from the scripted upstream."
    [sent] = upstream.received
    assert sent["messages"][0]["content"].endswith("What was the headcount?")  # lossless still ran
    [row] = agent.rows()
    assert row.status == "ok" and "lossy" not in row.optimizer_note
