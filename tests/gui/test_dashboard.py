"""The dashboard shows the ledger's figures, as the agent's API reports them."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from gui.client import AgentClient
from gui.dashboard import DashboardWindow
from gui.figures import Figures, usd
from tests.conftest import RunningAgent


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
    assert usd(0) == "$0.000000"
    assert usd(12) == "$0.000012"
    assert usd(1_234_567_891) == "$1,234.567891"
