"""Supervision: use an agent that answers; never stop one this tray did not start."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
from pytestqt.qtbot import QtBot

from agent.paths import Paths
from gui.supervisor import RestartLimit, Supervisor, answers, discovered_url
from tests.conftest import RunningAgent


def test_an_external_agent_is_used_and_never_stopped(qtbot: QtBot, agent: RunningAgent, hermetic_home: Path) -> None:
    paths = Paths.resolve(hermetic_home)
    (paths.config_dir / "agent.json").write_text(json.dumps({"url": agent.base_url, "pid": 1, "version": "0.1.0"}))
    assert discovered_url(paths) == agent.base_url
    supervisor = Supervisor(paths, configured_url="http://127.0.0.1:9")  # nothing listens on port 9
    assert supervisor.locate() == agent.base_url
    assert not supervisor.owns_agent
    supervisor.stop()
    assert httpx.get(f"{agent.base_url}/api/v1/info", timeout=5).status_code == 200


def test_restarts_are_limited_per_window() -> None:
    limit = RestartLimit(max_restarts=3, window_s=60)
    assert [limit.allow(t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert limit.allow(60.5)  # the first restart left the window
    assert not limit.allow(60.8)


def test_unreadable_discovery_file_is_ignored(hermetic_home: Path) -> None:
    paths = Paths.resolve(hermetic_home)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    (paths.config_dir / "agent.json").write_text("{half a file")
    assert discovered_url(paths) is None


def test_a_child_agent_is_started_restarted_after_a_crash_and_stopped(
    qtbot: QtBot, hermetic_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No agent answers: the tray starts one, starts it again when it dies, and stops it at quit."""
    monkeypatch.setenv("AIFINOPS_AGENT__PORT", "0")  # the child picks a port and advertises it
    paths = Paths.resolve(hermetic_home)
    supervisor = Supervisor(paths, configured_url="http://127.0.0.1:9", home=hermetic_home)
    try:
        with qtbot.waitSignal(supervisor.found, timeout=120_000) as first:
            supervisor.start_child()
        url, pid = first.args[0], supervisor.child_pid
        assert pid is not None and supervisor.owns_agent
        assert json.loads((paths.config_dir / "agent.json").read_text())["pid"] == pid
        assert httpx.get(f"{url}/api/v1/info", timeout=5).json()["name"] == "aifinops"

        with qtbot.waitSignal(supervisor.found, timeout=120_000) as second:
            os.kill(pid, signal.SIGKILL)  # a crash, not a clean stop
        assert supervisor.child_pid not in (None, pid)
        assert httpx.get(f"{second.args[0]}/api/v1/info", timeout=5).status_code == 200
    finally:
        restarted_url = discovered_url(paths)
        supervisor.stop()
    assert not supervisor.owns_agent
    assert restarted_url is not None and not answers(restarted_url)
    assert discovered_url(paths) is None  # a cleanly stopped agent removes its discovery file


def test_the_supervisor_gives_up_after_its_restart_limit(
    qtbot: QtBot, hermetic_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that cannot start (its config is broken) is not restarted forever."""
    paths = Paths.resolve(hermetic_home)
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text("[agent]\nport = 'not a port'\n")
    supervisor = Supervisor(paths, configured_url="http://127.0.0.1:9", home=hermetic_home, limit=RestartLimit(2, 300))
    with qtbot.waitSignal(supervisor.gave_up, timeout=60_000) as gave_up:
        supervisor.start_child()
    assert "stopped 2 times" in gave_up.args[0]
    assert not supervisor.owns_agent
    supervisor.stop()
