"""A local inference engine (`[[local_engines]]`) as the local tier: a real llama.cpp
OpenAI-compatible server on loopback (``python -m llama_cpp.server`` with the bundled SmolLM2)
behind a real agent. Its models are listed, its answers are local ones (route ``local``, priced
by the engine's time at its hourly rate over its slots, not by tokens, and not stopped by
"Pause cloud"), and ``doctor`` says whether it answers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from agent.doctor import _local_engines
from agent.settings import load_settings
from tests.conftest import RunningAgent
from tests.support.llama_server import free_port, llama_cpp_server

MODEL = "engine-smollm2"
QUESTION = [{"role": "user", "content": "Name a colour."}]
# 3.6 USD an hour over 2 slots: 1.8 USD an hour per request, 500 micro-USD per second.
ENGINE = {"name": "engine", "models": [MODEL], "usd_per_hour": "3.6", "parallel": 2, "timeout_s": 60}
MICRO_USD_PER_S = 500


@pytest.fixture(scope="module")
def engine_url(chat_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with llama_cpp_server(chat_model_path, tmp_path_factory.mktemp("engine") / "server.log") as base_url:
        yield base_url


@pytest.fixture
def agent(start_agent: Callable[..., RunningAgent], engine_url: str) -> RunningAgent:
    return start_agent(local_engines=[ENGINE | {"base_url": engine_url}], tiers={"local": MODEL})


def test_engine_models_are_listed_and_answer_as_local_priced_by_time(agent: RunningAgent) -> None:
    client = agent.client()
    listed = {m.id: m.owned_by for m in client.models.list().data}
    assert listed[MODEL] == "engine" and "local" in listed

    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0,
                                            extra_headers={"X-AIFinOps-Feature": "engine"})  # fmt: skip
    assert answer.choices[0].message.content
    info = (answer.model_extra or {})["x_aifinops"]
    assert (info["route"], info["price_source"]) == ("local", "local-compute")
    [row] = agent.rows()
    assert (row.provider, row.model, row.route, row.feature, row.status) == ("engine", MODEL, "local", "engine", "ok")
    assert row.price_source == "local-compute" and row.cost_micro_usd == info["cost_micro_usd"]
    # The engine's time at one slot's rate: more than nothing, never more than the whole latency.
    assert 0 < (row.cost_micro_usd or 0) <= MICRO_USD_PER_S * row.latency_ms / 1000 + 1
    assert row.input_tokens > 0 and row.output_tokens > 0  # the engine's own usage, for the record


def test_streams_auto_routing_and_pause_cloud(agent: RunningAgent) -> None:
    client = agent.client()
    with agent.http() as http:  # "Pause cloud" in the tray: the engine is local, so it still answers
        assert http.post("/api/v1/preferences", json={"cloud_paused": True}).json()["cloud_paused"] is True
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    routed = client.chat.completions.create(
        model="auto", messages=QUESTION, max_tokens=8, extra_body={"cache": False}
    )
    info = (routed.model_extra or {})["x_aifinops"]
    assert (info["model"], info["tier"], info["route"]) == (MODEL, "local", "local")
    rows = agent.rows()
    assert [r.stream for r in rows] == [True, False] and all(r.provider == "engine" for r in rows)
    assert all(r.price_source == "local-compute" and (r.cost_micro_usd or 0) > 0 for r in rows)


def test_an_engine_that_is_down_is_a_503_and_an_error_row(start_agent: Callable[..., RunningAgent]) -> None:
    down = ENGINE | {"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0}
    agent = start_agent(local_engines=[down])
    with agent.client() as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
    assert caught.value.status_code == 503
    [row] = agent.rows()
    assert (row.status, row.error_type, row.provider) == ("error", "provider_unavailable", "engine")
    assert row.cost_micro_usd == 0


def test_doctor_checks_each_engine(engine_url: str) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    engines = [
        ENGINE | {"name": "up", "base_url": engine_url, "models": [str(p) for p in _served(engine_url)]},
        ENGINE | {"name": "unlisted", "base_url": engine_url, "models": ["not-there"]},
        ENGINE | {"name": "down", "base_url": down},
    ]
    checks = _local_engines(load_settings(overrides={"local_engines": engines}))
    assert [c.level for c in checks] == ["ok", "warn", "fail"]
    assert "not-there" in checks[1].detail and "does not answer" in checks[2].detail


def test_engine_settings_are_validated() -> None:
    from agent.errors import ConfigError

    for bad in ({"parallel": 0}, {"usd_per_hour": "-1"}, {"models": []}, {"base_url": "ftp://x"}, {"other": 1}):
        with pytest.raises(ConfigError):
            load_settings(overrides={"local_engines": [ENGINE | {"base_url": "http://127.0.0.1:1/v1"} | bad]})
    settings = load_settings(overrides={"local_engines": [ENGINE | {"base_url": "http://127.0.0.1:1/v1"}]})
    assert settings.local_engines[0].usd_per_hour == Decimal("3.6")


def _served(base_url: str) -> list[str]:
    import httpx

    return [m["id"] for m in httpx.get(f"{base_url}/models", timeout=5).json()["data"]]
