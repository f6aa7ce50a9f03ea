"""The tray's state: a pure function of the budgets, and following the agent going and coming."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytestqt.qtbot import QtBot

from agent.api.schemas import BudgetEntry, EventOut
from gui.client import AgentClient
from gui.tray import STATE_COLOURS, Tray, TrayState, notification_text, state_pixmap, tray_state
from tests.conftest import RunningAgent


def budget(spent_micro_usd: int, amount_micro_usd: int = 10_000_000) -> BudgetEntry:
    remaining = amount_micro_usd - spent_micro_usd
    return BudgetEntry(
        name="team",
        scope="department",
        subject="eng",
        period="month",
        action="block",
        amount_usd="10",
        spent_usd="0",
        reserved_usd="0",
        remaining_usd="0",
        amount_micro_usd=amount_micro_usd,
        spent_micro_usd=spent_micro_usd,
        reserved_micro_usd=0,
        remaining_micro_usd=remaining,
        resets_at="2030-02-01T00:00:00+00:00",
    )


@pytest.mark.parametrize(
    ("spent", "state"),
    [
        (0, TrayState.OK),
        (7_999_999, TrayState.OK),
        (8_000_000, TrayState.NEAR_BUDGET),
        (9_999_999, TrayState.NEAR_BUDGET),
        (10_000_000, TrayState.OVER_BUDGET),
        (12_000_000, TrayState.OVER_BUDGET),
    ],
)
def test_state_follows_a_budget_crossing(spent: int, state: TrayState) -> None:
    assert tray_state([budget(spent)], reachable=True) is state
    assert tray_state([budget(0), budget(spent)], reachable=True) is state  # the worst one counts
    assert tray_state([budget(spent)], reachable=False) is TrayState.UNREACHABLE


def test_no_budgets_is_ok() -> None:
    assert tray_state([], reachable=True) is TrayState.OK
    assert tray_state(None, reachable=True) is TrayState.OK


def test_each_state_has_its_own_icon(qtbot: QtBot) -> None:
    centres = {}
    for state in TrayState:
        image = state_pixmap(state, 64).toImage()
        assert image.width() == 64
        centres[state] = image.pixelColor(12, 32).name()
    assert centres[TrayState.OK] == STATE_COLOURS[TrayState.OK]
    assert centres[TrayState.OVER_BUDGET] == STATE_COLOURS[TrayState.OVER_BUDGET]
    assert len(set(centres.values())) == len(TrayState)


def test_budget_events_become_notifications() -> None:
    body = {"budget": "team", "threshold_percent": 80, "spent_usd": "8", "amount_usd": "10", "resets_at": "soon"}
    event = EventOut(id=1, ts="t", kind="budget_alert", user_id=1, department="eng", body=body)
    title, message = notification_text(event) or ("", "")
    assert title == "Budget 'team' at 80 %"
    assert "$8.00 of $10.00" in message
    body = {"budget": "team", "amount_usd": "5.000000", "forecast_usd": "12.293382", "forecast_low_usd": "11.9",
            "forecast_high_usd": "0.004", "breach_at": "2026-12-17T08:55:00+00:00"}  # fmt: skip
    forecast = EventOut(id=3, ts="t", kind="budget_forecast", user_id=1, department="eng", body=body)
    title, message = notification_text(forecast) or ("", "")
    assert title == "Budget 'team' is on course to run out"
    assert message == "Forecast $12.29 (80%: $11.90 to < $0.01) of $5.00; it would run out about 2026-12-17 08:55 UTC."
    body = {"reason": "user:ann is calling at about 30x its usual rate for this hour (1.0 requests an hour)"}
    anomaly = EventOut(id=5, ts="t", kind="spend_anomaly", user_id=1, department="eng", body=body)
    assert notification_text(anomaly) == ("Unusual spend", body["reason"])
    odd = EventOut(id=4, ts="t", kind="budget_alert", user_id=1, department="eng", body={"spent_usd": "NaN"})
    assert "? of ? spent" in (notification_text(odd) or ("", ""))[1]  # someone else's JSON: never a crash
    unloaded = EventOut(id=2, ts="t", kind="model_unloaded", user_id=None, department=None, body={})
    assert notification_text(unloaded) is None


def test_agent_down_then_back(qtbot: QtBot, start_agent: Callable[..., RunningAgent]) -> None:
    first = start_agent()
    port = first.thread.port
    tray = Tray(AgentClient(first.base_url, first.token), poll_ms=100)
    tray.start()
    qtbot.waitUntil(lambda: tray.state is TrayState.OK, timeout=10_000)

    first.thread.stop()
    with qtbot.waitSignal(tray.unreachable, timeout=10_000):
        pass
    assert tray.state is TrayState.UNREACHABLE
    assert "unreachable" in tray.icon.toolTip()

    start_agent(agent={"port": port})  # the same home, ledger and token, on the same port
    qtbot.waitUntil(lambda: tray.state is TrayState.OK, timeout=10_000)
    tray.stop()


def test_pause_cloud_reaches_the_agent(qtbot: QtBot, agent: RunningAgent) -> None:
    tray = Tray(AgentClient(agent.base_url, agent.token), poll_ms=60_000)
    tray.start()
    qtbot.waitUntil(tray.pause_action.isEnabled, timeout=10_000)  # once the agent said it is not paused
    assert not tray.pause_action.isChecked()
    with agent.http() as http:
        tray.pause_action.trigger()
        qtbot.waitUntil(lambda: http.get("/api/v1/me").json()["cloud_paused"] is True, timeout=10_000)
        tray.pause_action.trigger()
        qtbot.waitUntil(lambda: http.get("/api/v1/me").json()["cloud_paused"] is False, timeout=10_000)
    tray.stop()
