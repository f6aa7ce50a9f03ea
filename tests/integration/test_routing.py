"""Model routing in the running agent: "auto" picks a tier, says why, and the cascade escalates.

Three tiers: the real local SmolLM2, and "cheap"/"strong" models served by the scripted
OpenAI-compatible upstream on loopback. The router is the real one: the shipped difficulty
artifact over the real MiniLM embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.benchmarks.upstream import ScriptedUpstream
from agent.ledger.requests import RequestRecord
from tests.conftest import RunningAgent

CHEAP, STRONG = "cheap-model", "strong-model"
PRICING = {
    "overrides": {
        CHEAP: {"input_usd_per_mtok": "0.5", "output_usd_per_mtok": "1.5"},
        STRONG: {"input_usd_per_mtok": "10", "output_usd_per_mtok": "30"},
    }
}
GREETING = "Hi there, thanks for your help!"
PROOF = (
    "Prove that there are infinitely many prime numbers. Write a detailed, rigorous proof, step by "
    "step, and explain each step: first state the assumption, then derive the contradiction."
)
FACT = "Which river flows through the city of Vienna?"


def tiered(upstream: ScriptedUpstream, **routing: Any) -> dict[str, Any]:
    return {
        "cloud": [{"name": "scripted", "base_url": upstream.base_url, "models": [CHEAP, STRONG], "max_retries": 0}],
        "pricing": PRICING,
        "tiers": {"local": "local", "cheap": CHEAP, "strong": STRONG},
        "routing": routing,
    }


@pytest.fixture
def routed(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream) -> RunningAgent:
    return start_agent(**tiered(upstream))


def ask(agent: RunningAgent, prompt: str, model: str = "auto", **extra: Any) -> tuple[str, dict[str, str]]:
    raw = agent.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=24, **extra
    )
    completion = raw.parse()
    return completion.choices[0].message.content or "", dict(raw.headers)


def only_row(agent: RunningAgent) -> RequestRecord:
    [row] = agent.rows()
    return row


def test_a_greeting_stays_local_and_the_row_says_why(routed: RunningAgent, upstream: ScriptedUpstream) -> None:
    _, headers = ask(routed, GREETING)
    row = only_row(routed)
    assert headers["x-aifinops-tier"] == "local"
    assert (row.tier, row.model, row.route, row.requested_model) == ("local", "local", "local", "auto")
    assert "small talk" in row.reason and row.reason.endswith("-> local")
    assert row.route_score is not None and 0 <= row.route_score <= 1
    assert upstream.received == []


def test_a_long_proof_request_goes_to_the_strong_tier(routed: RunningAgent, upstream: ScriptedUpstream) -> None:
    text, headers = ask(routed, PROOF)
    row = only_row(routed)
    assert text == "Hello from the scripted upstream."
    assert [r["model"] for r in upstream.received] == [STRONG]
    assert headers["x-aifinops-tier"] == "strong"
    assert (row.tier, row.model, row.route) == ("strong", STRONG, "cloud")
    assert "long answer requested" in row.reason and row.reason.endswith("-> strong")
    assert row.cost_micro_usd == 11 * 10 + 7 * 30  # the strong tier's configured price


def test_an_explicit_model_name_is_honoured(routed: RunningAgent, upstream: ScriptedUpstream) -> None:
    ask(routed, PROOF, model=CHEAP)
    row = only_row(routed)
    assert [r["model"] for r in upstream.received] == [CHEAP]
    assert (row.tier, row.model, row.reason, row.route_score) == ("cheap", CHEAP, "model named by the client", None)


def test_the_decision_is_in_the_response_and_the_request_entry(routed: RunningAgent) -> None:
    completion = routed.client().chat.completions.create(
        model="auto", messages=[{"role": "user", "content": PROOF}], max_tokens=24
    )
    info = (completion.model_extra or {})["x_aifinops"]
    assert info["tier"] == "strong" and info["reason"].endswith("-> strong")
    with routed.http() as http:
        entry = http.get(f"/api/v1/requests/{completion.id}").json()
    assert entry["tier"] == "strong" and entry["reason"] == info["reason"]
    assert entry["route_score"] == info["route_score"]


@pytest.mark.parametrize("artifact", ["missing", "corrupt"])
def test_a_bad_router_artifact_falls_back_to_rules_says_so_and_stays_up(
    artifact: str, start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "router.npz"
    if artifact == "corrupt":
        path.write_bytes(b"PK\x03\x04 this is not a real archive")
    agent = start_agent(**tiered(upstream, artifact=str(path)))
    with agent.http() as http:
        router = http.get("/api/v1/info").json()["router"]
    assert router["scoring"] == "rules" and router["problem"] == "router artifact unavailable"
    ask(agent, PROOF)
    row = only_row(agent)
    assert row.tier == "strong"
    assert row.reason.startswith("rules (router artifact unavailable): ")


def test_with_routing_off_auto_means_the_default_model(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    settings = tiered(upstream, enabled=False)
    settings["agent"] = {"default_model": CHEAP}
    agent = start_agent(**settings)
    ask(agent, GREETING)
    row = only_row(agent)
    assert (row.model, row.tier) == (CHEAP, "cheap")
    assert "routing off" in row.reason
    with agent.http() as http:
        info = http.get("/api/v1/info").json()
    assert info["router"] == {
        "enabled": False,
        "tiers": {},
        "scoring": "none",
        "problem": "",
        "cascade": False,
    }


# -- cascade ---------------------------------------------------------------------------------


def cascade(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream, threshold: float) -> RunningAgent:
    return start_agent(**tiered(upstream, cascade=True, cascade_to="strong", cascade_threshold=threshold))


def ask_auto(agent: RunningAgent, prompt: str, stream: bool) -> str:
    """The answer's text as the client sees it, streamed or not."""
    client, messages = agent.client(), [{"role": "user", "content": prompt}]
    if stream:
        chunks = client.chat.completions.create(model="auto", messages=messages, max_tokens=24, stream=True)  # type: ignore[arg-type]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    completion = client.chat.completions.create(model="auto", messages=messages, max_tokens=24)  # type: ignore[arg-type]
    return completion.choices[0].message.content or ""


@pytest.mark.parametrize("stream", [False, True])
def test_a_confident_local_answer_is_kept(
    stream: bool, start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    agent = cascade(start_agent, upstream, threshold=0.0)
    text = ask_auto(agent, FACT, stream)
    row = only_row(agent)
    assert upstream.received == []
    assert (row.tier, row.model, row.parent_id) == ("local", "local", "")
    assert row.confidence is not None and 0 < row.confidence <= 1
    assert "cascade: local answers first" in row.reason and "confidence" in row.reason
    assert text and text.strip()


@pytest.mark.parametrize("stream", [False, True])
def test_an_unsure_local_answer_escalates_and_both_calls_are_recorded(
    stream: bool, start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    agent = cascade(start_agent, upstream, threshold=1.0)
    text = ask_auto(agent, FACT, stream)
    # The client sees only the final answer: not a word of the local attempt.
    assert text == "Hello from the scripted upstream."
    assert [r["model"] for r in upstream.received] == [STRONG]
    rows = {r.parent_id == "": r for r in agent.rows()}
    final, attempt = rows[True], rows[False]
    assert attempt.parent_id == final.id and attempt.id == f"{final.id}-local"
    assert (attempt.tier, attempt.model, attempt.status) == ("local", "local", "ok")
    assert attempt.confidence is not None and attempt.confidence < 1.0
    assert attempt.output_tokens > 0 and attempt.cost_micro_usd is not None
    assert (final.tier, final.model) == ("strong", STRONG)
    assert "escalated to strong" in final.reason
    assert final.cost_micro_usd == 11 * 10 + 7 * 30
    # Chargeback counts one request, and both calls' money.
    with agent.http() as http:
        spend = http.get("/api/v1/spend", params={"by": "user"}).json()
    [line] = spend["rows"]
    assert line["requests"] == 1
    assert line["cost_micro_usd"] == final.cost_micro_usd + attempt.cost_micro_usd
