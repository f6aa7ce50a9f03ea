"""The tray's API: the dashboard's figures come from the ledger, and "Pause cloud" keeps a
user's requests local."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.benchmarks.upstream import ScriptedUpstream
from tests.conftest import RunningAgent

MODEL = "scripted-model"
PRICING = {"overrides": {MODEL: {"input_usd_per_mtok": "10", "output_usd_per_mtok": "30"}}}


@pytest.fixture
def cloud_agent(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream) -> RunningAgent:
    return start_agent(
        cloud=[{"name": "scripted", "base_url": upstream.base_url, "models": [MODEL], "max_retries": 0}],
        pricing=PRICING,
        tiers={"local": "local", "cheap": MODEL},
        cache={"enabled": True},
    )


def chat(agent: RunningAgent, model: str, text: str, token: str | None = None, feature: str = "") -> int:
    with agent.http(token) as http:
        headers = {"X-AIFinOps-Feature": feature} if feature else {}
        body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 6}
        return http.post("/v1/chat/completions", json=body, headers=headers).status_code


def test_the_dashboard_adds_up_to_the_ledger(cloud_agent: RunningAgent) -> None:
    assert chat(cloud_agent, MODEL, "What is the capital of France?", feature="docs") == 200
    assert chat(cloud_agent, MODEL, "What is the capital of France?", feature="docs") == 200  # a cache hit
    assert chat(cloud_agent, "local", "Say hi.") == 200
    other = cloud_agent.add_user("olga", "sales")
    assert chat(cloud_agent, MODEL, "Name a planet.", token=other) == 200
    with cloud_agent.http() as http:
        mine = http.get("/api/v1/dashboard").json()
        everyone = http.get("/api/v1/dashboard", params={"all": "true"}).json()
    with cloud_agent.http(other) as http:
        assert http.get("/api/v1/dashboard", params={"all": "true"}).status_code == 403
    rows = cloud_agent.rows()
    own = [r for r in rows if r.user_name != "olga"]
    assert mine["totals"]["requests"] == 3 and everyone["totals"]["requests"] == 4
    assert mine["totals"]["cost_micro_usd"] == sum(r.cost_micro_usd or 0 for r in own)
    assert sum(d["cost_micro_usd"] for d in mine["daily"]) == mine["totals"]["cost_micro_usd"]
    by_model = {m["key"]: m for m in mine["by_model"]}
    assert by_model[MODEL]["requests"] == 2 and by_model["local"]["requests"] == 1
    assert {f["key"]: f["requests"] for f in mine["by_feature"]}["docs"] == 2
    hit = next(r for r in own if r.cache_hit)
    assert mine["savings"]["cache_micro_usd"] == hit.cost_saved_micro_usd > 0
    assert mine["gpu"] is None and mine["policy_version"] is None and mine["budgets"] == []


def test_pause_cloud_keeps_auto_local_and_refuses_named_cloud_models(
    cloud_agent: RunningAgent, upstream: ScriptedUpstream
) -> None:
    with cloud_agent.http() as http:
        assert http.get("/api/v1/me").json()["cloud_paused"] is False
        assert http.post("/api/v1/preferences", json={"cloud_paused": True}).json()["cloud_paused"] is True
        essay = "Write a detailed essay on loop optimisation with code examples."
        auto = http.post("/v1/chat/completions", json={"model": "auto", "max_tokens": 4,
                                                       "messages": [{"role": "user", "content": essay}]})  # fmt: skip
        named = http.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 4,
                                                        "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
        bad = http.post("/api/v1/preferences", json={"cloud_paused": "yes"})
        assert http.post("/api/v1/preferences", json={"cloud_paused": False}).json()["cloud_paused"] is False
    assert auto.status_code == 200 and auto.headers["x-aifinops-route"] == "local"
    assert named.status_code == 403 and named.json()["error"]["code"] == "cloud_paused"
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert upstream.received == []
    [row] = cloud_agent.rows()
    assert row.reason == "cloud paused by you -> local"
