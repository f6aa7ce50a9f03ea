"""`GET /metrics` read by Prometheus' own parser after a mixed run on a real agent (local answer,
cloud answer, cache hit, stream, rate-limit refusal, bad body), every counter checked against
the ledger rows the same run wrote."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningAgent
from tests.integration.test_gpu_in_agent import busy_trace
from tests.support.governed import MODEL, QUESTION, Governed, policy_text

LIMITS = '\n[[rate_limits]]\nscope = "user"\nmatch = "*"\nrequests_per_minute = 4\n'


def scrape(agent: RunningAgent, token: str | None = None) -> dict[str, list[tuple[dict[str, str], float]]]:
    with agent.http(token) as http:
        response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for found, v in metrics.get(name, []) if all(found.get(k) == x for k, x in labels.items()))


def test_counters_agree_with_the_ledger_after_a_mixed_run(governed: Callable[..., Governed]) -> None:
    g = governed(policy_text(1, "1", extra=LIMITS), cache={"enabled": True})
    agent = g.agent
    with agent.http() as http:
        local = http.post("/v1/chat/completions", json={"model": "local", "messages": QUESTION, "max_tokens": 4})
        cloud = g.ask(http)
        hit = g.ask(http)
        other = [{"role": "user", "content": "Name a large river in Africa."}]
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": MODEL, "messages": other, "max_tokens": 7, "stream": True}) as stream:  # fmt: skip
            assert stream.status_code == 200 and "[DONE]" in "".join(stream.iter_text())
        limited = g.ask(http)
        bad = http.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert [r.status_code for r in (local, cloud, hit, limited, bad)] == [200, 200, 200, 429, 400]
    assert hit.headers["x-aifinops-cache"] == "hit"

    rows = agent.rows()
    m = scrape(agent)
    assert total(m, "aifinops_requests_total") == len(rows) == 4
    for route in ("local", "cloud", "cache"):
        assert total(m, "aifinops_requests_total", route=route, status="ok") == sum(r.route == route for r in rows)
    assert total(m, "aifinops_tokens_total", direction="input") == sum(r.input_tokens for r in rows)
    assert total(m, "aifinops_tokens_total", direction="output") == sum(r.output_tokens for r in rows)
    spent = sum(r.cost_micro_usd or 0 for r in rows)
    assert total(m, "aifinops_spend_usd_total") == pytest.approx(spent / 1e6)
    assert total(m, "aifinops_spend_usd_total", model=MODEL) == pytest.approx(
        sum(r.cost_micro_usd or 0 for r in rows if r.model == MODEL and not r.cache_hit) / 1e6
    )
    assert all("user" not in labels for labels, _ in m["aifinops_spend_usd_total"])  # bounded by default
    saved = sum(r.cost_saved_micro_usd for r in rows if r.cache_hit)
    assert saved > 0 and total(m, "aifinops_savings_usd_total", kind="cache") == pytest.approx(saved / 1e6)
    assert total(m, "aifinops_cache_lookups_total", result="hit") == 1
    assert total(m, "aifinops_cache_lookups_total") == len(rows)
    assert total(m, "aifinops_refused_requests_total", reason="rate_limit_error") == 1
    assert total(m, "aifinops_refused_requests_total", reason="invalid_request_error") == 1
    assert total(m, "aifinops_request_duration_seconds_count") == len(rows)
    assert total(m, "aifinops_time_to_first_token_seconds_count", route="cloud") == 1
    budget = {"budget": "user-daily", "scope": "user"}
    mine = sum(r.cost_micro_usd or 0 for r in rows)
    assert total(m, "aifinops_budget_spent_usd", **budget) == pytest.approx(mine / 1e6)
    assert total(m, "aifinops_budget_remaining_usd", **budget) == pytest.approx(1 - mine / 1e6)
    assert total(m, "aifinops_policy_version") == 1 and total(m, "aifinops_policy_last_sync_timestamp_seconds") > 0
    assert total(m, "aifinops_model_loads_total", model="local") == 1
    assert total(m, "aifinops_model_loaded", model="local") == 1


def test_metrics_need_an_admin_token(start_agent: Callable[..., RunningAgent]) -> None:
    agent = start_agent()
    alice = agent.add_user("alice", "eng")
    with agent.http(alice) as http:
        denied = http.get("/metrics")
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
    assert httpx.get(f"{agent.base_url}/metrics").status_code == 401
    assert "aifinops_requests_total" not in scrape(agent)  # no request yet: no series


def test_user_label_and_metrics_off(start_agent: Callable[..., RunningAgent]) -> None:
    labelled = start_agent(metrics={"user_label": True})
    client: Any = labelled.client()
    client.chat.completions.create(model="local", messages=QUESTION, max_tokens=2)
    users = {labels.get("user") for labels, _ in scrape(labelled)["aifinops_spend_usd_total"]}
    assert users == {labelled.rows()[0].user_name}
    off = start_agent(metrics={"enabled": False})
    with off.http() as http:
        assert http.get("/metrics").status_code == 404


def test_gpu_time_and_model_unloads_are_counted(start_agent: Callable[..., RunningAgent], tmp_path: Path) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=6)
    trace = busy_trace(tmp_path / "trace.csv", start, 150, 60.0)
    agent = start_agent(gpu={"trace": str(trace), "usd_per_hour": {"H200": "3.60"}})
    agent.client().chat.completions.create(model="local", messages=QUESTION, max_tokens=2)  # the model is in use
    services = agent.thread.services
    sampler = services.gpu_sampler
    assert sampler is not None
    for _ in range(200):  # the rest of the trace, as the scheduler would replay it
        sampler.tick()
    sampler.flush()
    [local] = services.registry.local()
    services._unload_if_idle(local, 0)  # the scheduler's idle check, with nothing in use
    m = scrape(agent)
    [minutes] = services.db.query("SELECT sum(busy_s) busy, sum(idle_s) idle FROM gpu_minutes")
    assert minutes["busy"] > 0
    assert total(m, "aifinops_gpu_seconds_total", gpu="0", state="busy") == pytest.approx(minutes["busy"])
    assert total(m, "aifinops_gpu_seconds_total", gpu="0", state="idle") == pytest.approx(minutes["idle"])
    [charged] = services.db.query("SELECT sum(cost_micro_usd) c FROM gpu_charges")
    assert charged["c"] > 0 and total(m, "aifinops_gpu_cost_usd_total") == pytest.approx(charged["c"] / 1e6)
    assert total(m, "aifinops_model_unloads_total", model="local") == 1
    assert total(m, "aifinops_model_loaded", model="local") == 0
