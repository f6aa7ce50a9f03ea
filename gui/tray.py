"""The tray icon: the state at a glance (ok, near a budget, over a budget, agent unreachable),
the menu, and notifications from the agent's events long-poll."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Sequence

from PySide6.QtCore import QObject, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QBrush, QColor, QIcon, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from agent.api.schemas import BudgetEntry, BudgetReport, EventOut
from gui.client import AgentClient, Reply
from gui.errors import AgentError
from gui.figures import counted_spend, usd_text

log = logging.getLogger(__name__)

NEAR_BUDGET_FRACTION = (80, 100)  # spent / amount at or above 80 % is "near"


class TrayState(enum.Enum):
    OK = "ok"
    NEAR_BUDGET = "near budget"
    OVER_BUDGET = "over budget"
    UNREACHABLE = "agent unreachable"


def tray_state(budgets: Sequence[BudgetEntry] | None, reachable: bool) -> TrayState:
    """Pure: the worst state over the caller's budgets (`None`: not known yet)."""
    if not reachable:
        return TrayState.UNREACHABLE
    state = TrayState.OK
    for budget in budgets or ():
        if budget.amount_micro_usd <= 0:
            continue
        spent = counted_spend(budget)
        if spent >= budget.amount_micro_usd:
            return TrayState.OVER_BUDGET
        num, den = NEAR_BUDGET_FRACTION
        if spent * den >= budget.amount_micro_usd * num:
            state = TrayState.NEAR_BUDGET
    return state


STATE_COLOURS = {
    TrayState.OK: "#2e9d5b",
    TrayState.NEAR_BUDGET: "#e0a21b",
    TrayState.OVER_BUDGET: "#d0392b",
    TrayState.UNREACHABLE: "#8a8f98",
}


def state_pixmap(state: TrayState, size_px: int = 64) -> QPixmap:
    """A coin with a dollar sign in the state's colour; a slash across it when unreachable."""
    pixmap = QPixmap(size_px, size_px)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    margin = size_px * 0.06
    rect = QRectF(margin, margin, size_px - 2 * margin, size_px - 2 * margin)
    painter.setPen(QPen(QColor("#ffffff"), size_px * 0.05))
    painter.setBrush(QBrush(QColor(STATE_COLOURS[state])))
    painter.drawEllipse(rect)
    font = painter.font()
    font.setBold(True)
    font.setPixelSize(int(size_px * 0.55))
    painter.setFont(font)
    painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "$")
    if state is TrayState.UNREACHABLE:
        painter.setPen(QPen(QColor("#30343b"), size_px * 0.1))
        painter.drawLine(int(size_px * 0.2), int(size_px * 0.8), int(size_px * 0.8), int(size_px * 0.2))
    painter.end()
    return pixmap


def state_icon(state: TrayState) -> QIcon:
    icon = QIcon()
    for size in (16, 22, 32, 64):
        icon.addPixmap(state_pixmap(state, size))
    return icon


class EventsPoller(QObject):
    """Long-polls /api/v1/events in a daemon thread; emits `received(EventOut)` in the UI thread."""

    received = Signal(object)

    def __init__(self, client: AgentClient, wait_s: int = 25, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.wait_s = wait_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aifinops-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        since: int | None = None  # first call: skip what happened before the tray started
        while not self._stop.is_set():
            try:
                if since is None:
                    since = self.client.events(0, 0, timeout_s=10).last_id
                    continue
                batch = self.client.events(since, self.wait_s, timeout_s=self.wait_s + 10)
            except AgentError as e:
                log.debug("events: %s", e)
                self._stop.wait(3.0)
                continue
            except Exception:  # a thread boundary: log and keep polling
                log.exception("events long-poll failed")
                self._stop.wait(3.0)
                continue
            since = batch.last_id
            for event in batch.events:
                if not self._stop.is_set():
                    self.received.emit(event)


def notification_text(event: EventOut) -> tuple[str, str] | None:
    """(title, message) for the events a user should see, None for the others."""
    body = event.body
    if event.kind == "budget_alert":
        return (
            f"Budget '{body.get('budget', '')}' at {body.get('threshold_percent', '?')} %",
            f"{usd_text(body.get('spent_usd'))} of {usd_text(body.get('amount_usd'))} spent; "
            f"resets {body.get('resets_at', '')}.",
        )
    if event.kind == "budget_forecast":
        breach = str(body.get("breach_at", ""))[:16].replace("T", " ")
        return (
            f"Budget '{body.get('budget', '')}' is on course to run out",
            f"Forecast {usd_text(body.get('forecast_usd'))} (80%: {usd_text(body.get('forecast_low_usd'))} to "
            f"{usd_text(body.get('forecast_high_usd'))}) of {usd_text(body.get('amount_usd'))}; "
            f"it would run out about {breach} UTC.",
        )
    if event.kind == "budget_exhausted":
        return (
            f"Budget '{body.get('budget', '')}' used up",
            f"Paid models are {'blocked' if body.get('action') == 'block' else 'replaced by the local model'} "
            f"until {body.get('resets_at', '')}.",
        )
    if event.kind == "spend_anomaly":
        return ("Unusual spend", str(body.get("reason") or "requests far above the usual rate"))
    if event.kind == "policy_rejected":
        return ("Policy update rejected", str(body.get("reason") or body.get("error") or "see the agent log"))
    return None


class Tray(QObject):
    """The tray icon and its menu. Polls the agent every `poll_ms` for its state."""

    state_changed = Signal(object)  # TrayState
    chat_requested = Signal()
    dashboard_requested = Signal()
    settings_requested = Signal()
    log_folder_requested = Signal()
    quit_requested = Signal()
    unreachable = Signal()
    token_refused = Signal()  # the agent answered 401: the token file may have a newer token

    def __init__(self, client: AgentClient, poll_ms: int = 5_000, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.state = TrayState.UNREACHABLE
        self.budgets: list[BudgetEntry] = []
        self.icon = QSystemTrayIcon(state_icon(self.state), self)
        self.menu = QMenu()
        self.menu.addAction("Chat", self.chat_requested.emit)
        self.menu.addAction("Dashboard", self.dashboard_requested.emit)
        self.menu.addSeparator()
        self.pause_action = QAction("Pause cloud (local only)", self.menu)
        self.pause_action.setCheckable(True)
        self.pause_action.setEnabled(False)  # until the agent says whether cloud is paused
        self.pause_action.toggled.connect(self._pause_toggled)
        self.menu.addAction(self.pause_action)
        self.menu.addSeparator()
        self.menu.addAction("Settings", self.settings_requested.emit)
        self.menu.addAction("Open log folder", self.log_folder_requested.emit)
        self.menu.addSeparator()
        self.menu.addAction("Quit", self.quit_requested.emit)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self._set_state(TrayState.UNREACHABLE)
        self._timer = QTimer(self)
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self.refresh)
        self._busy = False
        self._told_token = False

    def start(self) -> None:
        self.icon.show()
        self._timer.start()
        self.refresh()
        self.client.call(self.client.me, Reply(self)).done.connect(self._me_loaded)

    def refresh(self) -> None:
        """Ask the agent for the budgets (in a worker); the state follows the answer."""
        if self._busy:
            return
        self._busy = True
        reply = self.client.call(self.client.budgets, Reply(self))
        reply.done.connect(self._budgets_loaded)
        reply.failed.connect(self._budgets_failed)

    def _budgets_loaded(self, report: BudgetReport) -> None:
        self._busy = False
        self.budgets = list(report.budgets)
        self._set_state(tray_state(self.budgets, reachable=True))

    def _budgets_failed(self, error: AgentError) -> None:
        self._busy = False
        if error.status == 0:
            self._set_state(TrayState.UNREACHABLE)
            self.unreachable.emit()
        elif error.status == 401:  # an agent answers, but not to us (a shared box's system agent)
            self._set_state(TrayState.UNREACHABLE)
            self.icon.setToolTip("aifinops: the agent does not accept your token")
            self.token_refused.emit()
            if not self._told_token:
                self._told_token = True
                self.icon.showMessage(
                    "aifinops: not signed in",
                    f"The agent at {self.client.base_url} does not accept your token. Ask your admin "
                    "for one and put it in the token file that Settings shows.",
                )
        else:
            log.warning("budgets: %s", error)

    def _set_state(self, state: TrayState) -> None:
        if state is not TrayState.UNREACHABLE:
            self._told_token = False  # signed in again: say it again if it is lost again
        changed = state is not self.state
        self.state = state
        self.icon.setIcon(state_icon(state))
        self.icon.setToolTip(f"aifinops: {state.value}")
        if changed:
            self.state_changed.emit(state)

    def _me_loaded(self, me: dict[str, object]) -> None:
        paused = me.get("cloud_paused")
        if isinstance(paused, bool):
            self.pause_action.blockSignals(True)
            self.pause_action.setChecked(paused)
            self.pause_action.blockSignals(False)
            self.pause_action.setEnabled(True)
        else:
            self.pause_action.setToolTip("This agent cannot pause cloud models yet")

    def _pause_toggled(self, paused: bool) -> None:
        reply = self.client.call(lambda: self.client.set_cloud_paused(paused), Reply(self))
        reply.done.connect(self._pause_applied)
        reply.failed.connect(self._pause_failed)

    def _pause_applied(self, paused: bool) -> None:
        self.pause_action.blockSignals(True)
        self.pause_action.setChecked(paused)
        self.pause_action.blockSignals(False)

    def _pause_failed(self, error: AgentError) -> None:
        self._pause_applied(not self.pause_action.isChecked())
        self.icon.showMessage("Pause cloud", f"Could not change it: {error.message or error.type}")

    def notify(self, event: EventOut) -> None:
        text = notification_text(event)
        if text is not None:
            icon = QSystemTrayIcon.MessageIcon.Warning
            self.icon.showMessage(*text, icon, 10_000)
        if event.kind.startswith("budget"):
            self.refresh()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason is QSystemTrayIcon.ActivationReason.Trigger:
            self.chat_requested.emit()

    def stop(self) -> None:
        self._timer.stop()
        self.icon.hide()
