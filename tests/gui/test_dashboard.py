"""The dashboard shows the ledger's figures, as the agent's API reports them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from PySide6.QtGui import QColor, QImage
from PySide6.QtWidgets import QLabel
from pytestqt.qtbot import QtBot

from agent.api.schemas import BudgetEntry
from agent.benchmarks.upstream import ScriptedUpstream
from agent.fleet.leases import LeaseBook, LeaseKey
from agent.policy.model import parse_policy
from agent.policy.publish import Signed, publish
from agent.policy.signing import generate_keypair, sign
from gui.client import AgentClient
from gui.dashboard import (
    FORECAST_COLOUR,
    HALO_COLOUR,
    OVERRUN_COLOUR,
    BudgetBar,
    DashboardWindow,
    budget_caption,
    forecast_fraction,
    forecast_interval,
)
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
    assert isinstance(bar, BudgetBar)
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


def entry(**forecast: object) -> BudgetEntry:
    """$0.42 of a $5.00 monthly budget spent; `forecast` sets the forecast fields."""
    return BudgetEntry(
        name="team", scope="user", subject="ann", period="month", action="block",
        amount_usd="5.000000", spent_usd="0.420106", reserved_usd="0.000000", remaining_usd="4.579894",
        amount_micro_usd=5_000_000, spent_micro_usd=420_106, reserved_micro_usd=0, remaining_micro_usd=4_579_894,
        resets_at="2026-12-31T23:00:00+00:00", **forecast,
    )  # fmt: skip


NO_FORECAST = entry(forecast_note="2 full day(s) of history; a forecast needs 3")
INSIDE = entry(
    forecast_usd="2.500000", forecast_low_usd="2.000000", forecast_high_usd="3.000000", forecast_micro_usd=2_500_000
)
BEYOND = entry(
    forecast_usd="12.293382", forecast_low_usd="10.000000", forecast_high_usd="14.500000",
    forecast_micro_usd=12_293_382, breach_at="2026-12-17T08:55:00+00:00",
)  # fmt: skip


def test_forecast_fraction_is_where_the_forecast_lands_on_the_amount() -> None:
    assert forecast_fraction(NO_FORECAST) is None
    assert forecast_fraction(INSIDE) == 0.5
    assert forecast_fraction(BEYOND) == 12_293_382 / 5_000_000 > 1  # past the bar: not clamped here
    assert forecast_fraction(INSIDE.model_copy(update={"amount_micro_usd": 0})) is None  # nothing to measure on
    assert forecast_interval(NO_FORECAST) is None
    assert forecast_interval(INSIDE) == (0.4, 0.6)  # parsed from the API's USD strings
    assert forecast_interval(BEYOND) == (2.0, 2.9)
    assert forecast_interval(INSIDE.model_copy(update={"forecast_high_usd": None})) is None


def test_the_dashboards_budget_bars_carry_the_forecast_and_the_breach_date(qtbot: QtBot) -> None:
    dashboard = DashboardWindow(AgentClient("http://127.0.0.1:9", None))  # never called: figures given
    qtbot.addWidget(dashboard)
    figures = Figures(
        since="30d", policy_version=1, budgets=(NO_FORECAST, INSIDE, BEYOND), daily=(), by_model=(), by_route=(),
        by_feature=(), by_tier=(), cache_saved_micro_usd=0, compression_saved_micro_usd=0, gpu_busy_micro_usd=None,
        gpu_idle_micro_usd=None, total_requests=0, total_cost_micro_usd=0, source="dashboard",
    )  # fmt: skip
    dashboard.show_figures(figures)
    bars = [dashboard.budget_layout.itemAt(i).widget() for i in range(dashboard.budget_layout.count())]
    assert [type(bar) for bar in bars] == [BudgetBar] * 3
    none, inside, beyond = (bar for bar in bars if isinstance(bar, BudgetBar))

    assert none.forecast is None and none.marker_x() is None and not none.overrun
    assert none.toolTip().endswith("No forecast yet: 2 full day(s) of history; a forecast needs 3.")

    assert inside.forecast == 0.5 and inside.interval == (0.4, 0.6) and not inside.overrun
    assert "Forecast for the end of the month: $2.50 (80% interval: $2.00 to $3.00), 50 % of the budget." in (
        inside.toolTip()
    )
    assert "Not expected to run out this month." in inside.toolTip()

    assert beyond.forecast == forecast_fraction(BEYOND) and beyond.overrun
    assert "runs out about 2026-12-17 08:55 UTC" in beyond.format()  # the caption says when...
    tip = beyond.toolTip()
    assert "Forecast for the end of the month: $12.29 (80% interval: $10.00 to $14.50), 246 % of the budget." in tip
    assert "At this pace it runs out about 2026-12-17 08:55 UTC." in tip  # ...and so does the tooltip
    assert "red with an arrow" in tip


def rendered(budget: BudgetEntry, qtbot: QtBot) -> tuple[BudgetBar, QImage]:
    bar = BudgetBar(budget)
    qtbot.addWidget(bar)
    bar.setTextVisible(False)  # the caption's glyphs would only add noise to the pixels checked
    bar.resize(400, 24)
    image = bar.grab().toImage()
    assert (image.width(), image.height()) == (400, 24)  # one image pixel per widget pixel
    return bar, image


def column(image: QImage, x: int) -> list[QColor]:
    return [image.pixelColor(x, y) for y in range(image.height())]


def count(image: QImage, colour: QColor) -> int:
    return sum(image.pixelColor(x, y) == colour for x in range(image.width()) for y in range(image.height()))


def test_the_bar_paints_the_forecast_mark_where_the_forecast_lands(qtbot: QtBot) -> None:
    plain, plain_image = rendered(NO_FORECAST, qtbot)
    assert plain.marker_x() is None
    assert count(plain_image, FORECAST_COLOUR) == count(plain_image, OVERRUN_COLOUR) == 0

    bar, image = rendered(INSIDE, qtbot)
    x = bar.marker_x()
    assert x is not None and abs(x - 200) <= 2  # half of a 400-pixel bar
    track = bar.track()
    assert track.height() >= 16
    for mark in (x - 1, x, x + 1):  # 3 pixels wide, top to bottom of the bar's inside
        assert column(image, mark).count(FORECAST_COLOUR) == track.height()
    assert column(image, x - 2).count(HALO_COLOUR) == track.height()
    assert count(image, FORECAST_COLOUR) == 3 * track.height()  # nowhere else
    # The 80% interval ($2.00 to $3.00: 40% to 60% of the bar) is tinted; outside it the bar is as without a forecast.
    y = track.center().y()
    band, outside = image.pixelColor(180, y), image.pixelColor(300, y)
    assert band != plain_image.pixelColor(180, y) and band.blue() > band.green()
    assert outside == plain_image.pixelColor(300, y)
    assert count(image, OVERRUN_COLOUR) == 0


def test_a_forecast_past_the_amount_is_marked_red_at_the_right_edge(qtbot: QtBot) -> None:
    bar, image = rendered(BEYOND, qtbot)
    x = bar.marker_x()
    track = bar.track()
    assert x is not None and track.right() - 2 <= x <= track.right()
    assert column(image, x).count(OVERRUN_COLOUR) == track.height()
    assert count(image, FORECAST_COLOUR) == 0
    # the arrow: red in the middle row just left of the mark, not at the top of the same column
    middle, arrow = track.center().y(), x - 5
    assert image.pixelColor(arrow, middle) == OVERRUN_COLOUR
    assert image.pixelColor(arrow, track.top()) != OVERRUN_COLOUR


def test_the_dashboard_shows_what_the_providers_prompt_cache_saved(
    qtbot: QtBot, start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    from agent.benchmarks.upstream import Behaviour

    agent = start_agent(cloud=[{"name": "scripted", "base_url": upstream.base_url, "models": ["gpt-4.1"]}],
                        cache={"enabled": False})  # fmt: skip
    cached = (("prompt_tokens_details", {"cached_tokens": 8_000}),)
    upstream.script.append(Behaviour(prompt_tokens=10_000, completion_tokens=200, usage_extra=cached))
    agent.client().chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "Again, please."}])
    dashboard = DashboardWindow(AgentClient(agent.base_url, agent.token))
    qtbot.addWidget(dashboard)
    with qtbot.waitSignal(dashboard.loaded, timeout=30_000) as loaded:
        dashboard.refresh()
    figures = loaded.args[0]
    # 8,000 cached tokens of gpt-4.1 at $0.50 instead of $2 per million: 12,000 micro-USD off the bill.
    assert figures.provider_cache_saved_micro_usd == 12_000 and figures.total_cost_micro_usd == 9_600
    assert dashboard.savings.text().endswith(f"; {usd(12_000)} by the providers' prompt caches")
