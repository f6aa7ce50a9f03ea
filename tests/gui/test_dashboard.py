"""The dashboard shows the ledger's figures, as the agent's API reports them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from PySide6.QtWidgets import QLabel, QProgressBar
from pytestqt.qtbot import QtBot

from agent.api.schemas import BudgetEntry
from agent.benchmarks.upstream import ScriptedUpstream
from agent.fleet.leases import LeaseBook, LeaseKey
from agent.policy.model import parse_policy
from agent.policy.publish import Signed, publish
from agent.policy.signing import generate_keypair, sign
from gui.client import AgentClient
from gui.dashboard import DashboardWindow, budget_caption
from gui.figures import Figures, usd
from tests.conftest import RunningAgent
from tests.support.policies import department_budget


def test_dashboard_figures_equal_the_ledger(qtbot: QtBot, agent: RunningAgent) -> None:
    client = agent.client()
    for feature, question in (("alpha", "Say yes."), ("beta", "Say no.")):
        client.chat.completions.create(
            model="auto",
            max_tokens=16,
            messages=[{"role": "user", "content": question}],
            extra_headers={"X-AIFinOps-Feature": feature},
        )
    dashboard = DashboardWindow(AgentClient(agent.base_url, agent.token))
    qtbot.addWidget(dashboard)
    with qtbot.waitSignal(dashboard.loaded, timeout=30_000) as loaded:
        dashboard.refresh()
    figures = loaded.args[0]
    assert isinstance(figures, Figures)

    with agent.http() as http:
        by_feature = http.get("/api/v1/spend", params={"by": "feature", "since": "30d"}).json()
        by_model = http.get("/api/v1/spend", params={"by": "model", "since": "30d"}).json()
    ledger_total = sum(r.cost_micro_usd or 0 for r in agent.rows())
    assert figures.total_cost_micro_usd == by_feature["total_cost_micro_usd"] == ledger_total > 0
    assert figures.total_requests == len(agent.rows()) == 2
    assert {(s.key, s.requests, s.cost_micro_usd) for s in figures.by_feature} == {
        (r["key"], r["requests"], r["cost_micro_usd"]) for r in by_feature["rows"]
    }
    assert {(s.key, s.cost_micro_usd) for s in figures.by_model} == {
        (r["key"], r["cost_micro_usd"]) for r in by_model["rows"]
    }
    # ...and the widgets show them
    assert dashboard.total.text().startswith(usd(ledger_total))
    table = dashboard.tables["feature"]
    shown = {(table.item(i, 0).text(), table.item(i, 2).text()) for i in range(table.rowCount())}
    assert shown == {(r["key"], usd(r["cost_micro_usd"])) for r in by_feature["rows"]}
    assert dashboard.budget_layout.count() == 1  # "no policy received yet"


def test_usd_is_exact() -> None:
    assert usd(0) == "$0.00"
    assert usd(12) == "< $0.01"  # under a cent, said so rather than $0.00
    assert usd(9_999) == "< $0.01" and usd(10_000) == "$0.01"
    assert usd(420_106) == "$0.42" and usd(425_000) == "$0.43"  # cents, half up
    assert usd(1_234_567_891) == "$1,234.57"
    assert usd(-5_000_000) == "-$5.00"


def test_a_fleet_wide_budget_shows_the_fleets_spend_and_this_boxs_part(
    qtbot: QtBot,
    start_agent: Callable[..., RunningAgent],
    upstream: ScriptedUpstream,
    tmp_path: Path,
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    key, public = generate_keypair()
    body = department_budget("0.010000")
    publish(Signed(parse_policy(body), body, sign(body, key)), share)
    # Another host of the fleet already recorded spend against the same budget on the share.
    other = LeaseBook(share, "f" * 32)
    month = datetime.now(UTC).strftime("%Y-%m")
    other.claim(LeaseKey("eng-monthly", "department", "eng", "month", month, 10_000), spent=4_000, need=1_000, chunk=0)
    agent = start_agent(
        cloud=[{"name": "scripted", "base_url": upstream.base_url, "models": ["scripted-model"], "max_retries": 0}],
        pricing={"overrides": {"scripted-model": {"input_usd_per_mtok": "10", "output_usd_per_mtok": "30"}}},
        share={"path": str(share), "public_keys": [public], "sync_interval_s": 5},
        cache={"enabled": False},
    )
    with agent.http() as http:
        for _ in range(100):
            if http.get("/api/v1/budgets").json()["policy_version"] == 1:
                break
            time.sleep(0.2)
        reply = http.post(
            "/v1/chat/completions",
            json={"model": "scripted-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 7},
        )
        assert reply.status_code == 200, reply.text
    own = sum(r.cost_micro_usd or 0 for r in agent.rows())
    assert own > 0

    dashboard = DashboardWindow(AgentClient(agent.base_url, agent.token))
    qtbot.addWidget(dashboard)
    with qtbot.waitSignal(dashboard.loaded, timeout=30_000) as loaded:
        dashboard.refresh()
    [budget] = loaded.args[0].budgets
    assert budget.fleet is not None and budget.fleet.hosts == 2
    assert budget.fleet.fleet_spent_micro_usd == 4_000 + own  # the other host recorded 4,000; this box its own
    bar = dashboard.budget_layout.itemAt(0).widget()
    assert isinstance(bar, QProgressBar)
    assert bar.value() == (4_000 + own) * 100 // 10_000
    assert bar.format().startswith(f"eng-monthly (month, fleet of 2 host(s)): {usd(4_000 + own)} of $0.01")
    label = dashboard.budget_layout.itemAt(1).widget()
    assert isinstance(label, QLabel)
    assert label.text() == f"This box: {usd(own)} spent of the {usd(budget.fleet.allotted_micro_usd)} it may spend"


def test_a_budget_caption_shows_the_forecast_and_when_it_runs_out() -> None:
    entry = BudgetEntry(
        name="team", scope="user", subject="ann", period="month", action="block",
        amount_usd="5.000000", spent_usd="0.420106", reserved_usd="0.000000", remaining_usd="4.579894",
        amount_micro_usd=5_000_000, spent_micro_usd=420_106, reserved_micro_usd=0, remaining_micro_usd=4_579_894,
        resets_at="2026-12-31T23:00:00+00:00",
    )  # fmt: skip
    assert "forecast" not in budget_caption(entry)  # too little history: nothing promised
    entry = entry.model_copy(update={"forecast_micro_usd": 12_293_382, "breach_at": "2026-12-17T08:55:00+00:00"})
    caption = budget_caption(entry)
    assert caption.startswith("team (month): $0.42 of $5.00, $4.58 left, resets 2026-12-31 23:00")
    assert caption.endswith("; forecast $12.29, runs out about 2026-12-17 08:55 UTC")
