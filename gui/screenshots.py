"""`aifinops-tray --screenshot DIR`: render the chat window after a streamed answer, the dashboard
with the agent's figures, and the tray menu to PNG files, then exit."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QEventLoop, QObject, QTimer, SignalInstance
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QMenu, QWidget

from gui.chat import ChatWindow
from gui.client import AgentClient
from gui.dashboard import DashboardWindow
from gui.tray import Tray

log = logging.getLogger(__name__)

QUESTION = "In one sentence: what is a token budget?"
FILES = ("chat.png", "dashboard.png", "tray-menu.png")


def wait_for(signals: list[SignalInstance], timeout_ms: int) -> bool:
    """Run a local event loop until one of `signals` fires; False on timeout."""
    loop = QEventLoop()
    fired: list[bool] = []

    def stop(*_args: object) -> None:
        fired.append(True)
        loop.quit()

    anchor = QObject()  # the connections live as long as this loop
    for signal in signals:
        signal.connect(stop)
    QTimer.singleShot(timeout_ms, anchor, loop.quit)
    loop.exec()
    for signal in signals:
        signal.disconnect(stop)
    return bool(fired)


def grab(widget: QWidget, path: Path) -> None:
    widget.ensurePolished()
    if isinstance(widget, QMenu):
        widget.adjustSize()  # a menu is sized by its actions, not by resize()
    pixmap: QPixmap = widget.grab()
    if not pixmap.save(str(path), "PNG"):
        raise OSError(f"could not write {path}")
    log.info("wrote %s (%dx%d)", path, pixmap.width(), pixmap.height())


def take_screenshots(client: AgentClient, out_dir: Path, timeout_ms: int = 120_000) -> list[Path]:
    """Ask one real question, load the real dashboard, and write the three PNG files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in FILES]

    chat = ChatWindow(client)
    chat.feature.setText("docs-screenshots")
    chat.load_models()
    chat.input.setPlainText(QUESTION)
    chat.send()
    if not wait_for([chat.answered, chat.failed], timeout_ms):
        raise TimeoutError("no answer from the agent")
    grab(chat, paths[0])

    dashboard = DashboardWindow(client)
    dashboard.refresh()
    if not wait_for([dashboard.loaded, dashboard.failed], timeout_ms):
        raise TimeoutError("the dashboard did not load")
    grab(dashboard, paths[1])

    tray = Tray(client)
    tray.refresh()
    wait_for([tray.state_changed], 5_000)
    grab(tray.menu, paths[2])
    tray.stop()
    for widget in (chat, dashboard):
        widget.deleteLater()
    return paths
