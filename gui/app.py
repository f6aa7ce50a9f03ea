"""`aifinops-tray`: one tray per user session, a client of the agent it finds or starts."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import sys
import time
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QEvent, QLockFile, QObject, QTimer, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QSystemTrayIcon,
    QWidget,
)

from agent.identity import read_token_file
from agent.logs import SecretFilter
from agent.paths import Paths
from gui.chat import ChatWindow
from gui.client import AgentClient, Reply
from gui.dashboard import DashboardWindow
from gui.screenshots import take_screenshots, wait_for
from gui.supervisor import Supervisor
from gui.tray import EventsPoller, Tray

log = logging.getLogger(__name__)


def setup_logging(paths: Paths) -> None:
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        paths.log_dir / "tray.log", maxBytes=1_000_000, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter())  # the agent's: a token or key never reaches the file
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


class SettingsDialog(QDialog):
    def __init__(self, client: AgentClient, paths: Paths, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("aifinops settings")
        form = QFormLayout(self)
        form.addRow("Agent URL", QLabel(client.base_url))
        form.addRow("Config file", QLabel(str(paths.config_file)))
        form.addRow("Token file", QLabel(str(paths.token_file)))
        form.addRow("Log folder", QLabel(str(paths.log_dir)))
        form.addRow(QLabel("Edit the config file, then restart the agent, to change these."))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)


class FirstPaint(QObject):
    """Logs when a window is first painted: what a user sees, and what the start-up bench reads."""

    def __init__(self, window: QWidget, name: str) -> None:
        super().__init__(window)
        self.name = name
        window.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # Qt names it
        if event.type() == QEvent.Type.Paint:
            watched.removeEventFilter(self)
            log.info("%s window painted at %.3f (unix time)", self.name, time.time())
        return False


class TrayApp(QObject):
    """Wires the supervisor, the client, the tray, the windows and the events poller."""

    def __init__(self, paths: Paths, url: str | None, home: Path | None, poll_ms: int = 5_000) -> None:
        super().__init__()
        self.paths = paths
        self.supervisor = Supervisor(paths, configured_url=url, home=home, parent=self)
        self.client = AgentClient(url or self.supervisor.settings_url, read_token_file(paths.token_file), self)
        self.tray = Tray(self.client, poll_ms=poll_ms, parent=self)
        self.events = EventsPoller(self.client, parent=self)
        self.chat: ChatWindow | None = None
        self.dashboard: DashboardWindow | None = None
        self._locating = False
        self.supervisor.found.connect(self._found)
        self.supervisor.gave_up.connect(self._gave_up)
        self.tray.unreachable.connect(self.locate)
        self.tray.token_refused.connect(self._reload_token)
        self.tray.chat_requested.connect(self.show_chat)
        self.tray.dashboard_requested.connect(self.show_dashboard)
        self.tray.settings_requested.connect(self.show_settings)
        self.tray.log_folder_requested.connect(self.open_log_folder)
        self.tray.quit_requested.connect(self.quit)
        self.events.received.connect(self.tray.notify)

    def start(self, open_window: str | None = None) -> None:
        self.tray.start()
        self.events.start()
        self.locate()
        if not QSystemTrayIcon.isSystemTrayAvailable():
            # No tray host (e.g. GNOME without its extension): the chat window is the app.
            log.warning("this desktop shows no tray icons; opening the chat window instead")
            open_window = open_window or "chat"
            app = QApplication.instance()
            if isinstance(app, QApplication):
                app.setQuitOnLastWindowClosed(True)
                app.lastWindowClosed.connect(self.stop)
        if open_window == "chat":
            self.show_chat()
        elif open_window == "dashboard":
            self.show_dashboard()

    def locate(self) -> None:
        """Find an agent in a worker; start one if none answers (and none of ours is starting)."""
        if self._locating or self.supervisor.owns_agent:
            return
        self._locating = True
        reply = self.client.call(self.supervisor.locate, Reply(self))
        reply.done.connect(self._located)

    def _located(self, url: str | None) -> None:
        self._locating = False
        if url is None:
            self.supervisor.start_child()
        else:
            self._found(url)

    def _found(self, url: str) -> None:
        if url != self.client.base_url:
            log.info("agent at %s", url)
        self.client.set_base_url(url)
        self.client.token = self.client.token or read_token_file(self.paths.token_file)
        self.tray.refresh()

    def _reload_token(self) -> None:
        """An admin may have put a (new) token in the file since we read it."""
        token = read_token_file(self.paths.token_file)
        if token and token != self.client.token:
            log.info("using the token now in %s", self.paths.token_file)
            self.client.token = token
            self.tray.refresh()

    def _gave_up(self, why: str) -> None:
        self.tray.icon.showMessage("aifinops agent", f"The agent could not be started: {why}")

    def show_chat(self) -> None:
        if self.chat is None:
            self.chat = ChatWindow(self.client)
            self.chat.dashboard_requested.connect(self.show_dashboard)
            FirstPaint(self.chat, "chat")
            self.chat.load_models()
        self.chat.show()
        self.chat.raise_()

    def show_dashboard(self) -> None:
        if self.dashboard is None:
            self.dashboard = DashboardWindow(self.client)
            FirstPaint(self.dashboard, "dashboard")
        self.dashboard.refresh()
        self.dashboard.show()
        self.dashboard.raise_()

    def show_settings(self) -> None:
        SettingsDialog(self.client, self.paths).exec()

    def open_log_folder(self) -> None:
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.paths.log_dir)))

    def quit(self) -> None:
        self.stop()
        app = QApplication.instance()
        if app is not None:
            app.quit()

    def stop(self) -> None:
        self.events.stop()
        self.tray.stop()
        self.supervisor.stop()  # stops only an agent this tray started


def quit_on_signals(app: QCoreApplication) -> None:
    """SIGTERM/SIGINT quit the event loop, so `main` cleans up (the default would just die).

    Python runs signal handlers only between bytecodes; a timer lets it in every 200 ms.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: app.quit())
    timer = QTimer(app)
    timer.timeout.connect(lambda: None)
    timer.start(200)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="aifinops-tray", description="The aifinops tray: chat, spend, budgets.")
    parser.add_argument("--url", help="the agent's URL (default: the discovery file, then the settings' host and port)")
    parser.add_argument("--home", help="keep config, data and logs under this folder (like AIFINOPS_HOME)")
    parser.add_argument("--open", choices=("chat", "dashboard"), help="open this window at start")
    parser.add_argument("--screenshot", metavar="DIR", help="render the windows to PNG files in DIR and exit")
    return parser.parse_args(argv)


def screenshot(paths: Paths, url: str | None, home: Path | None, out_dir: Path) -> int:
    supervisor = Supervisor(paths, configured_url=url, home=home)
    found = supervisor.locate()
    if found is None:
        supervisor.start_child()
        urls: list[str] = []
        supervisor.found.connect(urls.append)
        if not wait_for([supervisor.found, supervisor.gave_up], 180_000) or not urls:
            supervisor.stop()
            print("aifinops-tray: no agent answered", file=sys.stderr)
            return 1
        found = urls[0]
    try:
        client = AgentClient(found, read_token_file(paths.token_file))
        for path in take_screenshots(client, out_dir):
            print(path)
    finally:
        supervisor.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home_text = args.home or os.environ.get("AIFINOPS_HOME")
    home = Path(home_text) if home_text else None
    paths = Paths.resolve(home)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    if args.screenshot:
        return screenshot(paths, args.url, home, Path(args.screenshot))
    setup_logging(paths)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    guard = QLockFile(str(paths.config_dir / "tray.lock"))
    if not guard.tryLock(0):
        print("aifinops-tray is already running in this session", file=sys.stderr)
        return 1
    if isinstance(app, QApplication):
        app.setQuitOnLastWindowClosed(False)
    tray_app = TrayApp(paths, args.url, home)
    quit_on_signals(app)  # a session ending (SIGTERM) stops the agent we started, too
    tray_app.start(args.open)
    try:
        return app.exec()
    finally:
        tray_app.stop()
        guard.unlock()


if __name__ == "__main__":
    sys.exit(main())
