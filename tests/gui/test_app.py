"""The whole tray app wired together against a real agent, as a user on a desktop meets it."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PySide6.QtWidgets import QApplication, QSystemTrayIcon
from pytestqt.qtbot import QtBot

from agent.paths import Paths
from gui.app import TrayApp
from gui.supervisor import answers, discovered_url
from gui.tray import TrayState
from tests.conftest import RunningAgent


@pytest.fixture
def tray_app(qapp: QApplication, agent: RunningAgent, hermetic_home: Path) -> Iterator[TrayApp]:
    quit_on_last_window = qapp.quitOnLastWindowClosed()  # TrayApp may change it: give it back after
    app = TrayApp(Paths.resolve(hermetic_home), agent.base_url, hermetic_home)
    yield app
    for window in (app.chat, app.dashboard):
        if window is not None:
            window.close()
    app.stop()
    # Its widgets are Python-owned: free them here, in the GUI thread. Left to the cyclic garbage
    # collector they could be freed from whichever thread it next runs in (a crash inside Qt).
    del app
    gc.collect()
    qapp.setQuitOnLastWindowClosed(quit_on_last_window)


def test_without_a_tray_host_the_chat_window_is_the_app(
    qtbot: QtBot, qapp: QApplication, tray_app: TrayApp, agent: RunningAgent, caplog: pytest.LogCaptureFixture
) -> None:
    assert not QSystemTrayIcon.isSystemTrayAvailable()  # the offscreen platform has no tray host
    caplog.set_level(logging.INFO, logger="gui.app")
    tray_app.start()
    assert tray_app.chat is not None and tray_app.chat.isVisible()
    assert qapp.quitOnLastWindowClosed()  # closing the chat window quits: nothing left hidden
    qtbot.waitUntil(lambda: tray_app.tray.state is TrayState.OK, timeout=30_000)  # found the agent
    qtbot.waitUntil(lambda: "chat window painted at" in caplog.text, timeout=10_000)

    tray_app.chat.spend_button.click()  # the way to the dashboard without a tray menu
    assert tray_app.dashboard is not None
    with qtbot.waitSignal(tray_app.dashboard.loaded, timeout=30_000):
        pass
    assert tray_app.dashboard.isVisible()
    tray_app.stop()
    assert httpx.get(f"{agent.base_url}/api/v1/info", timeout=5).status_code == 200  # not ours: still up


def test_open_names_the_window_shown_at_start(qtbot: QtBot, tray_app: TrayApp) -> None:
    tray_app.start("dashboard")
    assert tray_app.dashboard is not None and tray_app.dashboard.isVisible()
    assert tray_app.chat is None  # the named window alone, even without a tray host
    with qtbot.waitSignal(tray_app.dashboard.loaded, timeout=30_000):
        pass


def test_a_session_ending_stops_the_tray_and_the_agent_it_started(tmp_path: Path, chat_model_path: Path) -> None:
    """SIGTERM (a logout) to a tray that had to start its own agent: both exit, nothing left behind."""
    home = tmp_path / "session"
    env = {**os.environ, "AIFINOPS_AGENT__PORT": "0", "QT_QPA_PLATFORM": "offscreen"}
    tray = subprocess.Popen(
        [sys.executable, "-m", "gui.app", "--home", str(home), "--url", "http://127.0.0.1:9"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    paths = Paths.resolve(home)
    agent_pid = None
    try:
        deadline = time.monotonic() + 120
        while (url := discovered_url(paths)) is None or not answers(url):
            assert tray.poll() is None and time.monotonic() < deadline, "the tray's agent never answered"
            time.sleep(0.2)
        agent_pid = json.loads((paths.config_dir / "agent.json").read_text())["pid"]
        tray.send_signal(signal.SIGTERM)
        assert tray.wait(60) == 0
    finally:
        if tray.poll() is None:
            tray.kill()
        if agent_pid is not None and tray.returncode != 0:
            os.kill(agent_pid, signal.SIGKILL)  # the test failed: leave no agent behind
    assert not answers(url)
    assert discovered_url(paths) is None  # the agent stopped cleanly and took its discovery file
    with pytest.raises(ProcessLookupError):
        os.kill(agent_pid, 0)


def test_a_token_the_agent_refuses_is_said_and_a_new_one_in_the_file_is_picked_up(
    qtbot: QtBot, tray_app: TrayApp, agent: RunningAgent, hermetic_home: Path
) -> None:
    """A shared box: the system agent does not know this user's token until the admin issues one."""
    token_file = Paths.resolve(hermetic_home).token_file
    good = token_file.read_text()
    token_file.write_text("afo_not-a-token-this-agent-issued\n")
    tray_app.client.token = None  # as at start: read from the file
    tray_app.start()
    qtbot.waitUntil(lambda: "does not accept your token" in tray_app.tray.icon.toolTip(), timeout=20_000)
    assert tray_app.tray.state is TrayState.UNREACHABLE

    token_file.write_text(good)  # the admin's token arrives
    qtbot.waitUntil(lambda: tray_app.tray.state is TrayState.OK, timeout=20_000)
