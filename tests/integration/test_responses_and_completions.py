"""`/v1/responses` and the legacy `/v1/completions` through the `openai` SDK against a real agent
(SmolLM2 through llama.cpp locally, a scripted OpenAI-compatible server as the cloud): the same
pipeline as chat, so the cache, pricing and the ledger apply, and what is not served is a 400
naming the field, with no row written."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field

from agent.benchmarks.upstream import Behaviour, ScriptedUpstream
from tests.conftest import RunningAgent

CLOUD = "gpt-4o-mini"


@pytest.fixture
def agent(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream) -> RunningAgent:
    return start_agent(
        cloud=[{"name": "scripted", "base_url": upstream.base_url, "models": [CLOUD], "max_retries": 0}],
        tiers={"local": "local", "cheap": CLOUD},
    )


def rows_of(agent: RunningAgent, feature: str) -> list[Any]:
    return [r for r in agent.rows() if r.feature == feature]


# -- /v1/responses ------------------------------------------------------------------------------


def test_responses_local_text_answer_with_usage_on_the_ledger(agent: RunningAgent) -> None:
    response = agent.client().responses.create(
        model="local",
        instructions="Answer in one short sentence.",
        input="What colour is the sky on a clear day?",
        max_output_tokens=24,
        metadata={"feature": "resp-local"},
    )
    assert response.object == "response" and response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.instructions == "Answer in one short sentence." and response.max_output_tokens == 24
    extra = response.model_extra or {}
    [row] = rows_of(agent, "resp-local")
    assert row.route == "local" and row.status == "ok" and row.id == extra["x_aifinops"]["request_id"]
    assert response.id == f"resp_{row.id}"
    assert (row.input_tokens, row.output_tokens) == (response.usage.input_tokens, response.usage.output_tokens)


def test_responses_stream_events_add_up_to_the_completed_response(agent: RunningAgent) -> None:
    stream = agent.client().responses.create(
        model="local",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Name three fruits."}]}],
        max_output_tokens=20,
        stream=True,
        extra_headers={"X-AIFinOps-Feature": "resp-stream"},
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"
    ]  # fmt: skip
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas and final.output_text == deltas == events[-4].text  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.output_tokens > 0
    [row] = rows_of(agent, "resp-stream")
    assert row.stream and row.status == "ok" and row.output_tokens == final.usage.output_tokens


def test_responses_to_the_cloud_map_onto_chat_and_hit_the_cache(agent: RunningAgent, upstream: ScriptedUpstream) -> None:
    client = agent.client()
    upstream.default = Behaviour(text="Paris is the capital of France.")
    ask: dict[str, Any] = {
        "model": CLOUD,
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "Capital of Germany?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Berlin."}]},
            {"role": "user", "content": "And the capital of France?"},
        ],
        "max_output_tokens": 50,
        "reasoning": {"effort": "low"},
        "extra_headers": {"X-AIFinOps-Feature": "resp-cloud"},
    }
    first = client.responses.create(**ask)
    assert first.output_text == "Paris is the capital of France."
    sent = upstream.received[-1]
    assert [m["role"] for m in sent["messages"]] == ["developer", "user", "assistant", "user"]
    assert sent["messages"][2]["content"] == "Berlin." and sent["max_tokens"] == 50
    assert sent["reasoning_effort"] == "low"

    second = client.responses.create(**ask)
    assert second.output_text == first.output_text
    assert (second.model_extra or {})["x_aifinops"]["cache"] == "hit" and len(upstream.received) == 1
    rows = rows_of(agent, "resp-cloud")
    assert [r.cache_hit for r in rows] == [False, True] and (rows[0].cost_micro_usd or 0) > 0


class City(BaseModel):
    name: str = Field(max_length=30)
    population_millions: int = Field(ge=0, le=40)


def test_responses_parse_structured_output_locally(agent: RunningAgent) -> None:
    parsed = agent.client().responses.parse(
        model="local",
        input="Give a city and its population in millions as JSON.",
        text_format=City,
        max_output_tokens=60,
        temperature=0,
        extra_headers={"X-AIFinOps-Feature": "resp-parse"},
    )
    assert isinstance(parsed.output_parsed, City)
    assert parsed.text is not None and parsed.text.format is not None and parsed.text.format.type == "json_schema"
    assert rows_of(agent, "resp-parse")[0].route == "local"


# -- /v1/completions ----------------------------------------------------------------------------


def test_completions_local_plain_stream_and_logprobs(agent: RunningAgent) -> None:
    client = agent.client()
    plain = client.completions.create(model="local", prompt="Count: one, two,", max_tokens=6, temperature=0,
                                      logprobs=2, extra_headers={"X-AIFinOps-Feature": "cmpl"})  # fmt: skip
    choice = plain.choices[0]
    assert plain.object == "text_completion" and choice.text and choice.finish_reason in ("stop", "length")
    assert choice.logprobs is not None and choice.logprobs.tokens and choice.logprobs.token_logprobs
    assert "".join(choice.logprobs.tokens) == choice.text
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs or [])
    assert choice.logprobs.text_offset is not None and choice.logprobs.text_offset[0] == 0
    assert plain.usage is not None and plain.usage.completion_tokens <= 6

    chunks = list(client.completions.create(model="local", prompt="Say hello.", max_tokens=8, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_headers={"X-AIFinOps-Feature": "cmpl"}))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    rows = rows_of(agent, "cmpl")
    assert [r.stream for r in rows] == [False, True] and all(r.route == "local" and r.status == "ok" for r in rows)


def test_completions_default_to_sixteen_tokens_and_reach_the_cloud(
    agent: RunningAgent, upstream: ScriptedUpstream
) -> None:
    upstream.default = Behaviour(text="a cloud answer")
    out = agent.client().completions.create(model=CLOUD, prompt="Finish this: once upon a", presence_penalty=0.5,
                                            stop=["\n"], extra_headers={"X-AIFinOps-Feature": "cmpl-cloud"})  # fmt: skip
    assert out.choices[0].text == "a cloud answer"
    sent = upstream.received[-1]
    assert sent["messages"] == [{"role": "user", "content": "Finish this: once upon a"}]
    assert sent["max_tokens"] == 16 and sent["presence_penalty"] == 0.5 and sent["stop"] == ["\n"]
    [row] = rows_of(agent, "cmpl-cloud")
    assert row.model == CLOUD and (row.cost_micro_usd or 0) > 0


# -- bad input: a 400 naming the field, and nothing on the ledger --------------------------------

BAD_RESPONSES = [
    ({"model": "local", "input": "hi", "tools": [{"type": "function", "name": "f"}]}, "tools"),
    ({"model": "local", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "local", "input": "hi", "store": True}, "store"),
    ({"model": "local", "input": "hi", "background": True}, "background"),
    ({"model": "local", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ({"model": "local", "input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, "input"),
    ({"model": "local", "input": []}, "input"),
    ({"model": "local", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "local", "input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format"),
    ({"model": "local"}, "input"),
]
BAD_COMPLETIONS = [
    ({"model": "local", "prompt": "hi", "suffix": "end"}, "suffix"),
    ({"model": "local", "prompt": "hi", "echo": True}, "echo"),
    ({"model": "local", "prompt": "hi", "best_of": 3}, "best_of"),
    ({"model": "local", "prompt": ["one", "two"]}, "prompt"),
    ({"model": "local", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "local", "prompt": ""}, "prompt"),
    ({"model": "local", "prompt": "hi", "logprobs": 9}, "logprobs"),
    ({"model": "local", "prompt": "hi", "functions": []}, "functions"),
]


@pytest.mark.parametrize(("path", "body", "param"),
                         [("/v1/responses", b, p) for b, p in BAD_RESPONSES]
                         + [("/v1/completions", b, p) for b, p in BAD_COMPLETIONS])  # fmt: skip
def test_bad_input_gets_a_400_naming_the_field_and_no_row(
    agent: RunningAgent, path: str, body: dict[str, Any], param: str
) -> None:
    with agent.http() as http:
        response = http.post(path, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
        assert http.post(path, content=b"{not json").status_code == 400
        assert http.post(path, json=[body]).status_code == 400
    assert agent.rows() == []


def test_sdk_raises_a_bad_request_error_with_the_message(agent: RunningAgent) -> None:
    with agent.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="local", input="hi", previous_response_id="resp_x")
    assert "previous_response_id" in json.dumps(caught.value.body)
    with agent.client(token="wrong") as stranger, pytest.raises(openai.AuthenticationError):
        stranger.completions.create(model="local", prompt="hi")


def test_a_cut_cloud_stream_ends_in_error_and_failed_events(agent: RunningAgent, upstream: ScriptedUpstream) -> None:
    upstream.script.append(Behaviour(kind="stream_cut"))
    client = agent.client()
    with client.responses.create(model=CLOUD, input="Tell me a story.", stream=True,
                                 extra_headers={"X-AIFinOps-Feature": "resp-cut"}) as stream:  # fmt: skip
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    assert events[-2].code == "provider_bad_response"  # type: ignore[union-attr]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None and failed.error.message
    partial = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert partial and Behaviour().text.startswith(partial) and partial != Behaviour().text
    [row] = rows_of(agent, "resp-cut")
    assert (row.status, row.error_type, row.stream) == ("error", "provider_bad_response", True)

    upstream.script.append(Behaviour(kind="stream_cut"))
    with pytest.raises(openai.APIError), client.completions.create(model=CLOUD, prompt="Story?", stream=True) as cut:
        list(cut)  # the stream is closed however it ends: no socket left to the garbage collector
    client.close()


VALID = {
    "/v1/responses": {"model": "local", "input": "Hi", "max_output_tokens": 2, "temperature": 0, "metadata": {}},
    "/v1/completions": {"model": "local", "prompt": "Hi", "max_tokens": 2, "temperature": 0, "n": 1, "stop": "."},
}
ODD_VALUES = [None, 0, -1, 3.5, 1e308, "", "x\u0000", [], [None], {}, {"a": {"b": []}}, True]


@pytest.mark.parametrize("path", sorted(VALID))
def test_every_field_set_to_odd_values_is_an_answer_or_a_4xx_never_a_5xx(agent: RunningAgent, path: str) -> None:
    answered = 0
    with agent.http() as http:
        for field in VALID[path]:
            if field.startswith("max_"):
                continue  # keeps the answers short
            for value in ODD_VALUES:
                response = http.post(path, json=VALID[path] | {field: value})
                assert response.status_code == 200 or 400 <= response.status_code < 500, (field, value, response.text)
                if response.status_code == 200:
                    answered += 1
                else:
                    assert response.json()["error"]["message"]
    assert answered > 0 and len(agent.rows()) == answered  # a row for each answer, none for a refusal
