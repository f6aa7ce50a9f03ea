"""Real OpenAI clients against a real agent: the `openai` SDK (sync, async, streamed tools,
structured output parsed into Pydantic models), `langchain-openai` with a tool round trip and the
`llm` CLI. The local tier is SmolLM2 through llama.cpp; the cloud is a scripted
OpenAI-compatible server on 127.0.0.1. Each call must land on the ledger under its user and
feature."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from agent.benchmarks.upstream import Behaviour, ScriptedUpstream
from tests.conftest import RunningAgent

CLOUD = "gpt-4o-mini"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}


@pytest.fixture
def agent(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream) -> RunningAgent:
    return start_agent(
        cloud=[{"name": "scripted", "base_url": upstream.base_url, "models": [CLOUD], "max_retries": 0}],
        tiers={"local": "local", "cheap": CLOUD},
        cache={"enabled": False},
    )


def rows_of(agent: RunningAgent, feature: str) -> list[Any]:
    return [r for r in agent.rows() if r.feature == feature]


def test_sdk_tool_round_trip_through_the_cloud(agent: RunningAgent, upstream: ScriptedUpstream) -> None:
    client = agent.client()
    headers = {"X-AIFinOps-Feature": "tools-sync"}
    question = {"role": "user", "content": "What is the weather in Paris?"}
    upstream.script.append(Behaviour(tool_calls=(("get_weather", '{"city": "Paris"}'),)))
    first = client.chat.completions.create(
        model=CLOUD, messages=[question], tools=[WEATHER], tool_choice="auto", parallel_tool_calls=False,
        extra_headers=headers,
    )  # fmt: skip
    [call] = first.choices[0].message.tool_calls or []
    assert first.choices[0].finish_reason == "tool_calls" and first.choices[0].message.content is None
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    sent = upstream.received[-1]
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is False

    upstream.script.append(Behaviour(text="It is sunny in Paris."))
    answer = client.chat.completions.create(
        model=CLOUD,
        messages=[
            question,
            first.choices[0].message.model_dump(exclude_none=True),  # sent back as the SDK gave it
            {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
        ],
        tools=[WEATHER],
        extra_headers=headers,
    )
    assert answer.choices[0].message.content == "It is sunny in Paris."
    sent = upstream.received[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id and sent[2] == {
        "role": "tool", "content": '{"sky": "sunny"}', "tool_call_id": call.id
    }  # fmt: skip
    rows = rows_of(agent, "tools-sync")
    assert len(rows) == 2 and all(r.user_name == rows[0].user_name and r.status == "ok" for r in rows)
    assert all(r.model == CLOUD and (r.cost_micro_usd or 0) > 0 for r in rows)


def test_async_streamed_tool_calls_are_relayed_piece_by_piece(agent: RunningAgent, upstream: ScriptedUpstream) -> None:
    upstream.default = Behaviour(tool_calls=(("get_weather", '{"city": "Oslo"}'), ("get_time", '{"zone": "CET"}')))

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=f"{agent.base_url}/v1", api_key=agent.token, max_retries=0)
        stream = await client.chat.completions.create(
            model=CLOUD,
            messages=[{"role": "user", "content": "Weather and time in Oslo?"}],
            tools=[WEATHER, TIME],
            stream=True,
            extra_headers={"X-AIFinOps-Feature": "tools-stream"},
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
        return chunks

    chunks = asyncio.run(run())
    pieces = [(d.index, d.id, d.function.name if d.function else None, d.function.arguments if d.function else None)
              for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]  # fmt: skip
    assert len(pieces) == 6  # per call: its id and name, then the arguments in two pieces, as they came
    calls: dict[int, dict[str, str]] = {}
    for index, call_id, name, arguments in pieces:
        entry = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        entry["id"] += call_id or ""
        entry["name"] += name or ""
        entry["arguments"] += arguments or ""
    assert calls == {
        0: {"id": "call_0", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        1: {"id": "call_1", "name": "get_time", "arguments": '{"zone": "CET"}'},
    }
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    [row] = rows_of(agent, "tools-stream")
    assert row.stream and row.status == "ok" and row.model == CLOUD


class City(BaseModel):
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)
    population_millions: int = Field(ge=0, le=50)


def test_sdk_parse_into_a_pydantic_model_with_the_local_model(agent: RunningAgent) -> None:
    client = agent.client()
    completions = client.chat.completions
    parse = completions.parse if hasattr(completions, "parse") else client.beta.chat.completions.parse
    result = parse(
        model="local",
        messages=[{"role": "user", "content": "Describe the city of Paris."}],
        response_format=City,
        max_tokens=120,
        extra_headers={"X-AIFinOps-Feature": "parse"},
    )
    city = result.choices[0].message.parsed
    assert isinstance(city, City) and city.name and 0 <= city.population_millions <= 50
    [row] = rows_of(agent, "parse")
    assert row.route == "local" and row.status == "ok" and (row.cost_micro_usd or 0) > 0


class Colour(BaseModel):
    name: Literal["red", "green", "blue"]


class Flag(BaseModel):
    ok: bool


class Score(BaseModel):
    score: int = Field(ge=1, le=10)


class Tags(BaseModel):
    tags: list[str] = Field(min_length=1, max_length=3)


class Point(BaseModel):
    x: int = Field(ge=-100, le=100)
    y: int = Field(ge=-100, le=100)


class Line(BaseModel):
    start: Point
    end: Point


class Book(BaseModel):
    title: str = Field(max_length=40)
    year: int = Field(ge=1450, le=2026)


class Shelf(BaseModel):
    books: list[Book] = Field(min_length=1, max_length=2)


class Maybe(BaseModel):
    note: str | None = Field(max_length=20)


class Temperature(BaseModel):
    celsius: int = Field(ge=-90, le=60)


class Answer(BaseModel):
    answer: Literal["yes", "no", "maybe"]
    confidence: int = Field(ge=0, le=100)


class Word(BaseModel):
    word: str = Field(min_length=1, max_length=12)


class Pair(BaseModel):
    key: str = Field(max_length=10)
    value: int = Field(ge=0, le=1000)


class Pairs(BaseModel):
    pairs: list[Pair] = Field(min_length=1, max_length=3)


class Person(BaseModel):
    first_name: str = Field(max_length=20)
    last_name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


class Team(BaseModel):
    lead: Person
    size: int = Field(ge=1, le=50)


class Weekday(BaseModel):
    day: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


class Numbers(BaseModel):
    values: list[int] = Field(min_length=2, max_length=4)


class Summary(BaseModel):
    headline: str = Field(max_length=50)
    urgent: bool


class Invoice(BaseModel):
    number: str = Field(pattern=r"^INV-[0-9]{4}$")
    total_cents: int = Field(ge=0, le=1999)


SCHEMAS: list[tuple[type[BaseModel], str]] = [
    (Colour, "Pick a colour."),
    (Flag, "Is water wet?"),
    (Score, "Rate pizza from 1 to 10."),
    (Tags, "Give tags for a cooking blog."),
    (Point, "A point on a grid."),
    (Line, "A line between two points."),
    (Book, "A famous book."),
    (Shelf, "A shelf of books."),
    (Maybe, "An optional note."),
    (Temperature, "The temperature in Rome today."),
    (Answer, "Will it rain tomorrow?"),
    (Word, "One word for happy."),
    (Pair, "A key and a count."),
    (Pairs, "Some keys and counts."),
    (Person, "A person."),
    (Team, "A small team and its lead."),
    (Weekday, "The first day of the week."),
    (Numbers, "A few small numbers."),
    (Summary, "Summarise: the server is down."),
    (Invoice, "An invoice."),
]


def test_twenty_json_schemas_are_followed_by_the_local_model(agent: RunningAgent) -> None:
    client = agent.client()
    failures = []
    for model, question in SCHEMAS:
        response = client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": question}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": model.__name__, "schema": model.model_json_schema(), "strict": True},
            },
            max_tokens=160,
            extra_headers={"X-AIFinOps-Feature": "schemas"},
        )
        text = response.choices[0].message.content or ""
        try:
            model.model_validate_json(text)
        except ValueError as e:
            failures.append((model.__name__, response.choices[0].finish_reason, text, str(e)[:200]))
    assert failures == []
    assert len(rows_of(agent, "schemas")) == len(SCHEMAS)


def test_json_mode_answers_a_json_object_locally(agent: RunningAgent) -> None:
    response = agent.client().chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": 'Reply in JSON: {"greeting": "..."}'}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    assert response.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(response.choices[0].message.content or ""), dict)


def test_the_local_model_calls_a_tool_with_arguments_that_fit_its_schema(agent: RunningAgent) -> None:
    response = agent.client().chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",  # one tool: the local model must call it
        max_tokens=60,
        extra_headers={"X-AIFinOps-Feature": "local-tools"},
    )
    [call] = response.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert response.choices[0].finish_reason == "tool_calls"
    [row] = rows_of(agent, "local-tools")
    assert row.route == "local" and row.output_tokens > 0


def test_what_the_local_model_cannot_do_goes_to_the_cloud_on_auto_and_is_refused_on_local(
    agent: RunningAgent, upstream: ScriptedUpstream
) -> None:
    client = agent.client()
    ask: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Hi"}],
        "tools": [WEATHER, TIME],
        "tool_choice": "required",  # of several tools: llama.cpp's function calling has no such mode
    }
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="local", **ask)
    assert refused.value.code == "unsupported_parameter" and "required" in refused.value.message
    upstream.default = Behaviour(tool_calls=(("get_time", "{}"),))
    raw = client.chat.completions.with_raw_response.create(model="auto", **ask)
    assert raw.headers["X-AIFinOps-Route"] == "cloud"
    assert raw.parse().choices[0].message.tool_calls
    assert len(agent.rows()) == 1  # the refusal left no row


def test_n_and_logprobs_locally_and_through_the_cloud(agent: RunningAgent, upstream: ScriptedUpstream) -> None:
    client = agent.client()
    local = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Say hi"}], n=2, max_tokens=8,
        logprobs=True, top_logprobs=2, seed=7,
    )  # fmt: skip
    assert [c.index for c in local.choices] == [0, 1]
    for choice in local.choices:
        content = choice.logprobs.content if choice.logprobs else []
        assert content and "".join(t.token for t in content) == choice.message.content
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
        assert all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    assert local.usage is not None and local.usage.completion_tokens >= 2  # both choices counted
    cloud = client.chat.completions.create(model=CLOUD, messages=[{"role": "user", "content": "Hi"}], n=2, logprobs=True)
    assert [c.index for c in cloud.choices] == [0, 1] and all(c.logprobs for c in cloud.choices)
    assert upstream.received[-1]["n"] == 2 and upstream.received[-1]["logprobs"] is True


def test_langchain_bind_tools_round_trip(agent: RunningAgent, upstream: ScriptedUpstream) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(
        model=CLOUD, base_url=f"{agent.base_url}/v1", api_key=agent.token,  # type: ignore[arg-type]
        max_retries=0, default_headers={"X-AIFinOps-Feature": "langchain"},
    ).bind_tools([get_weather])  # fmt: skip
    upstream.script.append(Behaviour(tool_calls=(("get_weather", '{"city": "Lyon"}'),)))
    messages: list[Any] = [HumanMessage("What is the weather in Lyon?")]
    first = llm.invoke(messages)
    [call] = first.tool_calls  # type: ignore[attr-defined]
    assert call["name"] == "get_weather" and call["args"] == {"city": "Lyon"}
    assert upstream.received[-1]["tools"][0]["function"]["name"] == "get_weather"
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    upstream.script.append(Behaviour(text="It is sunny in Lyon."))
    second = llm.invoke(messages)
    assert second.content == "It is sunny in Lyon."
    assert upstream.received[-1]["messages"][-1] == {
        "role": "tool", "content": "sunny in Lyon", "tool_call_id": call["id"]
    }  # fmt: skip
    rows = rows_of(agent, "langchain")
    assert len(rows) == 2 and all(r.status == "ok" and r.model == CLOUD for r in rows)


def test_the_llm_cli_as_an_openai_compatible_model(agent: RunningAgent, tmp_path: Path) -> None:
    home = tmp_path / "llm"
    home.mkdir()
    (home / "extra-openai-models.yaml").write_text(
        "- model_id: aifinops-local\n"
        "  model_name: local\n"
        f"  api_base: {agent.base_url}/v1\n"
        "  api_key_name: aifinops\n"
        "  headers:\n"
        "    X-AIFinOps-Feature: llm-cli\n"
    )
    (home / "keys.json").write_text(json.dumps({"aifinops": agent.token}))
    cli = Path(sys.executable).parent / "llm"
    env = {**os.environ, "LLM_USER_PATH": str(home)}
    run = subprocess.run(
        [str(cli), "-m", "aifinops-local", "-o", "max_tokens", "12", "--no-log", "Say hello"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()
    [row] = rows_of(agent, "llm-cli")
    assert row.route == "local" and row.status == "ok" and row.stream  # llm streams by default
