"""The chat window against a real agent: a streamed answer, its cost line, cache hits, errors."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from agent.api.schemas import AIFinOpsInfo
from gui.chat import ChatWindow
from gui.client import AgentClient
from gui.errors import AgentError, plain_words
from gui.figures import usd
from tests.conftest import RunningAgent

TIMEOUT_MS = 60_000


def window(qtbot: QtBot, agent: RunningAgent) -> ChatWindow:
    chat = ChatWindow(AgentClient(agent.base_url, agent.token))
    qtbot.addWidget(chat)
    return chat


def test_streamed_answer_with_its_cost_line(qtbot: QtBot, agent: RunningAgent) -> None:
    chat = window(qtbot, agent)
    chat.feature.setText("gui-test")
    deltas: list[str] = []
    chat.streamed.connect(deltas.append)
    with qtbot.waitSignal(chat.answered, timeout=TIMEOUT_MS) as answered:
        chat.ask("Name one colour.")
        assert not chat.send_button.isEnabled()  # one question at a time
    info = answered.args[0]
    assert isinstance(info, AIFinOpsInfo), (info, answered.args)
    answer = chat.bubbles[-1].text.text()
    assert answer.strip()
    assert len(deltas) > 1 and "".join(deltas) == answer  # streamed, piece by piece
    assert chat.messages[-1] == {"role": "assistant", "content": answer}

    with agent.http() as http:
        row = http.get(f"/api/v1/requests/{info.request_id}").json()
    assert row["feature"] == "gui-test"
    assert row["cost_usd"] == info.cost_usd
    meta = chat.bubbles[-1].meta.text()
    assert usd(row["cost_micro_usd"]) in meta  # cents, or "< $0.01"
    assert row["model"] in meta
    assert chat.send_button.isEnabled()


def test_cache_hit_badge_and_wrong_answer(qtbot: QtBot, agent: RunningAgent) -> None:
    chat = window(qtbot, agent)
    question = "What is the capital of France?"
    with qtbot.waitSignal(chat.answered, timeout=TIMEOUT_MS):
        chat.ask(question)
    chat.new_conversation()
    with qtbot.waitSignal(chat.answered, timeout=TIMEOUT_MS) as answered:
        chat.ask(question)
    info = answered.args[0]
    assert info.cache == "hit"
    bubble = chat.bubbles[-1]
    assert bubble.badge.text().startswith("cache hit")
    assert not bubble.wrong.isHidden()
    with agent.http() as http:
        assert http.get("/api/v1/cache").json()["entries"] == 1
        bubble.wrong.click()
        qtbot.waitUntil(lambda: http.get("/api/v1/cache").json()["entries"] == 0, timeout=TIMEOUT_MS)
    assert not bubble.wrong.isEnabled()


def test_an_agent_error_in_plain_words(qtbot: QtBot, agent: RunningAgent) -> None:
    chat = window(qtbot, agent)
    chat.model.addItem("no-such-model")
    chat.model.setCurrentText("no-such-model")
    with qtbot.waitSignal(chat.failed, timeout=TIMEOUT_MS) as failed:
        chat.ask("Hello?")
    error = failed.args[0]
    assert isinstance(error, AgentError)
    assert error.status == 404
    shown = chat.bubbles[-1].text.text()
    assert shown == plain_words(error)
    assert "Traceback" not in shown
    assert chat.messages == []  # the unanswered question is not part of the conversation


def test_budget_and_rate_limit_errors_say_what_to_do() -> None:
    budget = {"name": "team-monthly", "resets_at": "2030-02-01T00:00:00+00:00", "action": "block"}
    body = {"error": {"type": "budget_exceeded", "code": "block", "message": "over", "budget": budget}}
    words = plain_words(AgentError.from_body(402, body))
    assert words == (
        "Your budget 'team-monthly' is used up until 2030-02-01 00:00 UTC. "
        "Ask your admin for more, or pick the local model."
    )
    limited = AgentError.from_body(429, {"error": {"type": "rate_limit_error", "message": "slow"}}, "7")
    assert "Try again in 7 s" in plain_words(limited)
    paused = AgentError.from_body(403, {"error": {"type": "permission_error", "code": "cloud_paused", "message": "x"}})
    assert "Pause cloud" in plain_words(paused)
    assert "not answering" in plain_words(AgentError.unreachable("refused"))


def test_models_fill_the_picker_with_auto_first(qtbot: QtBot, agent: RunningAgent) -> None:
    chat = window(qtbot, agent)
    chat.load_models()
    qtbot.waitUntil(lambda: chat.model.count() > 1, timeout=TIMEOUT_MS)
    assert chat.model.itemText(0) == "auto"
    assert chat.model.currentText() == "auto"
