"""Supervision: use an agent that answers; never stop one this tray did not start."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from pytestqt.qtbot import QtBot

from agent.paths import Paths
from gui.supervisor import RestartLimit, Supervisor, discovered_url
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
