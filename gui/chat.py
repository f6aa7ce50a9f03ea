"""The chat window: a conversation with streamed answers, and under each answer what it cost."""

from __future__ import annotations

import logging
import re
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from agent.api.schemas import AIFinOpsInfo
from gui.client import AgentClient, Reply
from gui.errors import AgentError, plain_words
from gui.figures import usd

log = logging.getLogger(__name__)

FEATURE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")


def cost_line(info: AIFinOpsInfo) -> str:
    """'local · smollm2 · small talk -> local · < $0.01' (the tier, model, why, and the cost)."""
    who = " · ".join(part for part in (info.tier or info.route, info.model) if part)
    cost = "price unknown" if info.cost_micro_usd is None else usd(info.cost_micro_usd)
    return " · ".join(part for part in (who, info.reason, cost) if part)


class Bubble(QFrame):
    """One message. An answer grows as deltas arrive and ends with its cost line."""

    wrong_answer = Signal(int)  # the cache entry id

    def __init__(self, role: str, text: str = "") -> None:
        super().__init__()
        self.role = role
        self.setObjectName(f"bubble-{role}")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        colour = "#eef3fb" if role == "user" else "#ffffff"
        self.setStyleSheet(f"#bubble-{role} {{ background: {colour}; border: 1px solid #d5dbe3; border-radius: 6px; }}")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        who = QLabel("You" if role == "user" else "Assistant")
        who.setStyleSheet("font-weight: bold; color: #4a5260;")
        layout.addWidget(who)
        self.text = QLabel(text)
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.text)
        self.meta_row = QHBoxLayout()
        self.meta = QLabel()
        self.meta.setStyleSheet("color: #6b7280;")
        self.meta.setWordWrap(True)
        self.badge = QLabel()
        self.badge.setStyleSheet("background: #dff3e6; color: #1f6b3a; border-radius: 4px; padding: 1px 6px;")
        self.badge.hide()
        self.wrong = QPushButton("Wrong answer")
        self.wrong.setToolTip("Remove this answer from the cache so the question is asked again")
        self.wrong.hide()
        self.meta_row.addWidget(self.meta, 1)
        self.meta_row.addWidget(self.badge)
        self.meta_row.addWidget(self.wrong)
        layout.addLayout(self.meta_row)
        self._entry_id: int | None = None
        self.wrong.clicked.connect(self._wrong_clicked)

    def append(self, delta: str) -> None:
        self.text.setText(self.text.text() + delta)

    def finish(self, info: AIFinOpsInfo | None) -> None:
        if info is None:
            self.meta.setText("cost not reported")
            return
        self.meta.setText(cost_line(info))
        if info.cache == "hit":
            similarity = f" {info.cache_similarity:.2f}" if info.cache_similarity is not None else ""
            verified = f", verified {info.cache_verifier_score:.2f}" if info.cache_verifier_score is not None else ""
            self.badge.setText(f"cache hit{similarity}{verified}")
            self.badge.show()
            if info.cache_entry_id is not None:
                self._entry_id = info.cache_entry_id
                self.wrong.show()

    def fail(self, message: str) -> None:
        self.text.setText(message)
        self.text.setStyleSheet("color: #a02418;")

    def _wrong_clicked(self) -> None:
        if self._entry_id is not None:
            self.wrong_answer.emit(self._entry_id)
            self.wrong.setEnabled(False)
            self.wrong.setText("Removed from cache")


class ChatWindow(QWidget):
    """Signals `answered(AIFinOpsInfo | None)` when a streamed answer ends, `failed(AgentError)`."""

    answered = Signal(object)
    failed = Signal(object)
    streamed = Signal(str)  # each piece of an answer as it arrives
    dashboard_requested = Signal()  # the "Spend" button: the way to the dashboard without a tray

    def __init__(self, client: AgentClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.messages: list[dict[str, str]] = []
        self.bubbles: list[Bubble] = []
        self._current: Bubble | None = None
        self.setWindowTitle("aifinops chat")
        self.resize(720, 640)

        top = QHBoxLayout()
        top.addWidget(QLabel("Model"))
        self.model = QComboBox()
        self.model.addItem("auto")
        self.model.setMinimumWidth(180)
        top.addWidget(self.model)
        top.addWidget(QLabel("Feature"))
        self.feature = QLineEdit()
        self.feature.setPlaceholderText("e.g. support-replies (optional)")
        top.addWidget(self.feature, 1)
        self.new_button = QPushButton("New conversation")
        self.new_button.clicked.connect(self.new_conversation)
        top.addWidget(self.new_button)
        self.spend_button = QPushButton("Spend")
        self.spend_button.setToolTip("Your spend and budgets")
        self.spend_button.clicked.connect(self.dashboard_requested.emit)
        top.addWidget(self.spend_button)

        self.column = QVBoxLayout()
        self.column.addStretch(1)
        holder = QWidget()
        holder.setLayout(self.column)
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setWidget(holder)

        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setStyleSheet("color: #a02418;")
        self.status.hide()

        bottom = QHBoxLayout()
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("Ask something (Ctrl+Enter sends)")
        self.input.setFixedHeight(70)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self.send)
        bottom.addWidget(self.input, 1)
        bottom.addWidget(self.send_button)
        QShortcut(QKeySequence("Ctrl+Return"), self, self.send)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.scroll_area, 1)
        layout.addWidget(self.status)
        layout.addLayout(bottom)

    def load_models(self) -> None:
        reply = self.client.call(self.client.models, Reply(self))
        reply.done.connect(self._models_loaded)

    def _models_loaded(self, models: list[str]) -> None:
        current = self.model.currentText()
        self.model.clear()
        self.model.addItems(["auto", *(m for m in models if m != "auto")])
        self.model.setCurrentText(current)

    def new_conversation(self) -> None:
        self.messages.clear()
        for bubble in self.bubbles:
            bubble.deleteLater()
        self.bubbles.clear()
        self.status.hide()

    def _add(self, bubble: Bubble) -> Bubble:
        self.column.insertWidget(self.column.count() - 1, bubble)
        self.bubbles.append(bubble)
        bubble.wrong_answer.connect(self._invalidate)
        return bubble

    def send(self) -> None:
        """Send what is in the input box."""
        self.ask(self.input.toPlainText())

    def ask(self, text: str) -> None:
        question = text.strip()
        if not question or self._current is not None:
            return
        feature = self.feature.text().strip()
        if feature and not FEATURE_PATTERN.fullmatch(feature):
            self._show_status("A feature tag is 1-64 letters, digits or . _ : / - (no spaces).")
            return
        self.status.hide()
        self.input.clear()
        self._add(Bubble("user", question))
        self.messages.append({"role": "user", "content": question})
        self._current = self._add(Bubble("assistant"))
        body: dict[str, Any] = {"model": self.model.currentText() or "auto", "messages": list(self.messages)}
        if feature:
            body["metadata"] = {"feature": feature}
        self.send_button.setEnabled(False)
        reply = self.client.chat(body)
        reply.delta.connect(self._delta)
        reply.done.connect(self._done)
        reply.failed.connect(self._failed)

    def _delta(self, text: str) -> None:
        if self._current is not None:
            self._current.append(text)
            self.streamed.emit(text)
            bar = self.scroll_area.verticalScrollBar()
            bar.setValue(bar.maximum())

    def _done(self, info: AIFinOpsInfo | None) -> None:
        bubble, self._current = self._current, None
        self.send_button.setEnabled(True)
        if bubble is not None:
            bubble.finish(info)
            self.messages.append({"role": "assistant", "content": bubble.text.text()})
        self.answered.emit(info)

    def _failed(self, error: AgentError) -> None:
        bubble, self._current = self._current, None
        self.send_button.setEnabled(True)
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()  # not answered: not part of the conversation
        if bubble is not None:
            bubble.fail(plain_words(error))
        self.failed.emit(error)

    def _show_status(self, text: str) -> None:
        self.status.setText(text)
        self.status.show()

    def _invalidate(self, entry_id: int) -> None:
        reply = self.client.call(lambda: self.client.invalidate(entry_id), Reply(self))
        reply.failed.connect(self._invalidate_failed)

    def _invalidate_failed(self, error: AgentError) -> None:
        self._show_status(f"Could not remove the cached answer: {plain_words(error)}")
