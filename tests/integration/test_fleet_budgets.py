"""A department budget shared by three real agents on one share: concurrent paid load on all three
against a scripted upstream, and the three ledgers together as the judge. Its alerts, judged on the
fleet's spend, reach the webhook once for the fleet, not once per agent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.benchmarks.upstream import Behaviour, ScriptedUpstream
from agent.identity import read_token_file
from agent.policy.model import parse_policy
from agent.policy.publish import Signed, publish
from agent.policy.signing import generate_keypair, sign
from agent.server import AgentThread
from agent.settings import load_settings
from tests.support.policies import department_budget
from tests.support.receiver import Receiver

MODEL = "scripted-model"
ANSWER_MICRO_USD = 11 * 10 + 7 * 30  # the scripted usage at the override's prices
BUDGET_MICRO_USD = 60 * ANSWER_MICRO_USD  # about 60 answers for the whole department
# A request holds its worst case (prompt estimate + max_tokens), under two answers here: each agent
# may end with less than one hold left of its allotment, which it cannot spend.
HOLD_BOUND_MICRO_USD = 2 * ANSWER_MICRO_USD
REQUESTS_PER_AGENT = 40


def policy(webhook_url: str) -> bytes:
    return department_budget(f"{BUDGET_MICRO_USD / 1_000_000:.6f}", webhook_url=webhook_url)


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture
def fleet(
    tmp_path: Path, upstream: ScriptedUpstream, chat_model_path: Path, hook: Receiver
) -> Iterator[list[AgentThread]]:
    share = tmp_path / "share"
    share.mkdir()
    key, public = generate_keypair()
    body = policy(f"{hook.url}/hook")
    publish(Signed(parse_policy(body), body, sign(body, key)), share)
    agents: list[AgentThread] = []
    try:
        for n in range(3):
            overrides: dict[str, Any] = {
                "agent": {"port": 0},
                "cloud": [{"name": "scripted", "base_url": upstream.base_url, "models": [MODEL], "max_retries": 0}],
                "pricing": {"overrides": {MODEL: {"input_usd_per_mtok": "10", "output_usd_per_mtok": "30"}}},
                "share": {"path": str(share), "public_keys": [public], "sync_interval_s": 5},
                "cache": {"enabled": False},
                # Small claims, and idle allotments given back after 5 s (the test's second round).
                "fleet": {"publish_interval_s": 5, "allotment_percent": 1, "allotment_idle_s": 5},
            }
            agents.append(AgentThread(load_settings(home=tmp_path / f"host-{n}", overrides=overrides)).start())
        for agent in agents:
            wait_for_policy(agent)
        yield agents
    finally:
        for agent in agents:
            agent.stop()


def token(agent: AgentThread) -> str:
    value = read_token_file(agent.services.settings.paths.token_file)
    assert value
    return value


def wait_for_policy(agent: AgentThread, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {token(agent)}"}
    while httpx.get(f"{agent.base_url}/api/v1/budgets", headers=headers).json()["policy_version"] != 1:
        assert time.monotonic() < deadline, "the policy did not come into force"
        time.sleep(0.2)


def spent(agent: AgentThread) -> int:
    rows = agent.services.db.query("SELECT coalesce(sum(cost_micro_usd), 0) AS s FROM requests")
    return int(rows[0]["s"])


def test_three_agents_sharing_a_department_budget_never_overspend_it(
    fleet: list[AgentThread], upstream: ScriptedUpstream, tmp_path: Path, hook: Receiver
) -> None:
    upstream.default = Behaviour(delay_s=0.05)  # calls overlap, on every agent

    async def load(agent: AgentThread, n: int) -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {token(agent)}"}
        limits = httpx.Limits(max_connections=REQUESTS_PER_AGENT)
        async with httpx.AsyncClient(base_url=agent.base_url, headers=headers, timeout=120, limits=limits) as c:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 7}
            return list(await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(n))))

    async def everyone(n: int) -> list[list[httpx.Response]]:
        return list(await asyncio.gather(*(load(agent, n) for agent in fleet)))

    responses = asyncio.run(everyone(REQUESTS_PER_AGENT))
    first_round = sum(spent(agent) for agent in fleet)
    assert first_round <= BUDGET_MICRO_USD  # no overrun at all while the share answers
    # An agent whose own demand ended may still hold part of the budget that others were refused;
    # idle for allotment_idle_s, it gives that back (the refresh job) and the others spend it.
    time.sleep(5.5)
    for agent in fleet:
        agent.services.enforcer.refresh_fleet()
    responses = [a + b for a, b in zip(responses, asyncio.run(everyone(REQUESTS_PER_AGENT // 2)), strict=True)]
    per_agent = [spent(agent) for agent in fleet]
    total = sum(per_agent)
    answered = [sum(r.status_code == 200 for r in rs) for rs in responses]
    print(
        f"fleet spend {total} of a {BUDGET_MICRO_USD} micro-USD budget (first round {first_round}, "
        f"overrun {max(total - BUDGET_MICRO_USD, 0)}); per agent {per_agent}, answers {answered}"
    )
    assert total <= BUDGET_MICRO_USD  # no overrun
    assert total >= BUDGET_MICRO_USD - len(fleet) * HOLD_BOUND_MICRO_USD  # and nothing stranded past a hold each
    assert all(n > 0 for n in answered)
    for rs in responses:
        for r in rs:
            assert r.status_code in (200, 402), r.text
            if r.status_code == 402:
                assert r.json()["error"]["budget"]["name"] == "eng-monthly"

    # Each agent shows its own allotment and the fleet's spend; the lease file adds up.
    leases = list((tmp_path / "share" / "fleet" / "_leases").rglob("*.json"))
    assert len(leases) == 1
    hosts = json.loads(leases[0].read_text())["hosts"]
    assert len(hosts) == 3 and sum(h["allotted"] for h in hosts.values()) <= BUDGET_MICRO_USD
    for agent in fleet:
        headers = {"Authorization": f"Bearer {token(agent)}"}
        [budget] = httpx.get(f"{agent.base_url}/api/v1/budgets", headers=headers).json()["budgets"]
        assert budget["spent_micro_usd"] == spent(agent)
        assert budget["fleet"]["allotted_micro_usd"] >= spent(agent)
        assert budget["fleet"]["hosts"] == 3 and budget["fleet"]["problem"] == ""
        # Its forecast is made from the fleet's spend on the same share (tests/integration/test_fleet_forecast.py).
        fleet_budgets = agent.services.enforcer.fleet
        assert fleet_budgets is not None and fleet_budgets.history is not None
        assert fleet_budgets.history.share_dir == tmp_path / "share"

    # The budget's alerts are about the fleet's spend: each threshold the fleet crossed reaches the
    # webhook once, posted by the agent that claimed it on the share; the others skip theirs.
    deadline = time.monotonic() + 30
    while any(a.services.db.query("SELECT 1 FROM deliveries WHERE state = 'pending'") for a in fleet):
        assert time.monotonic() < deadline, "alerts still pending"
        time.sleep(0.1)
    recorded = [dict(r) for a in fleet for r in a.services.db.query(
        "SELECT e.body, d.state, d.last_error FROM deliveries d JOIN events e ON e.id = d.event_id")]  # fmt: skip
    posted = [p.body["threshold_percent"] for p in hook.posts]
    assert sorted(posted) == sorted(set(posted)) and {50, 80} <= set(posted), posted  # each once, for the fleet
    assert len({p.headers["Idempotency-Key"] for p in hook.posts}) == len(hook.posts)
    assert sum(r["state"] == "delivered" for r in recorded) == len(hook.posts)
    skipped = [r for r in recorded if r["state"] == "skipped"]
    assert all("posted for the fleet by host" in r["last_error"] for r in skipped)
    assert all(r["state"] in ("delivered", "skipped") for r in recorded)
    print(f"fleet alerts: {len(recorded)} recorded on the three agents, {len(hook.posts)} posted ({sorted(posted)})")
    for p in hook.posts:  # the fleet's spend when it was judged, not one agent's
        assert Decimal(p.body["spent_usd"]) * 100 >= Decimal(p.body["amount_usd"]) * p.body["threshold_percent"]
