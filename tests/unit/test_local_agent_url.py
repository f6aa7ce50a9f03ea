"""The CLI finds this home's agent: at its configured port, or with port 0 where it says it bound."""

from __future__ import annotations

from pathlib import Path

from agent.api.client import AgentClient
from agent.discovery import write_discovery
from agent.settings import load_settings


def test_with_port_0_the_client_goes_where_the_discovery_file_says(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, overrides={"agent": {"port": 0}})
    assert AgentClient.from_settings(settings, "t").base_url == "http://127.0.0.1:0"  # no agent has said yet
    write_discovery(settings.paths, "http://127.0.0.1:41234", pid=1)
    assert AgentClient.from_settings(settings, "t").base_url == "http://127.0.0.1:41234"


def test_a_configured_port_wins_over_a_discovery_file(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, overrides={"agent": {"port": 8799}})
    write_discovery(settings.paths, "http://127.0.0.1:41234", pid=1)
    assert AgentClient.from_settings(settings, "t").base_url == "http://127.0.0.1:8799"
