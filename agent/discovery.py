"""The discovery file: how the tray (and any local tool) finds the running agent.

``<config dir>/agent.json`` holds ``{"url", "pid", "version"}``. The agent writes it (0600,
atomically) when it starts serving and removes it when it stops, if the file is still its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent import __version__
from agent.files import write_atomic
from agent.paths import Paths
from agent.settings import AgentSection, Settings

FILE_NAME = "agent.json"


def agent_url(agent: AgentSection, port: int | None = None) -> str:
    """The URL a local client uses; `port` is the bound one when the setting was 0 (any)."""
    host = "127.0.0.1" if agent.host in ("0.0.0.0", "::", "") else agent.host  # noqa: S104 - a wildcard bind
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if agent.tls_certfile else "http"
    return f"{scheme}://{host}:{port if port is not None else agent.port}"


def local_agent_url(settings: Settings) -> str:
    """Where this home's agent answers: its configured address, or with ``port = 0`` (any free
    port, chosen at start) the one its discovery file says it bound."""
    if settings.agent.port == 0:
        found = read_discovery(settings.paths)
        if found is not None and isinstance(found.get("url"), str):
            return str(found["url"])
    return agent_url(settings.agent)


def write_discovery(paths: Paths, url: str, pid: int | None = None) -> Path:
    path = paths.config_dir / FILE_NAME
    entry = {"url": url, "pid": pid or os.getpid(), "version": __version__}
    write_atomic(path, json.dumps(entry).encode("utf-8"), mode=0o600)
    return path


def read_discovery(paths: Paths) -> dict[str, Any] | None:
    """The running agent's entry, or None (no file, or not one we can read)."""
    try:
        data = json.loads((paths.config_dir / FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not isinstance(data.get("pid"), int):
        return None
    return data


def remove_discovery(paths: Paths, pid: int | None = None) -> None:
    """Remove the file if it still names this process (another agent may have replaced it)."""
    entry = read_discovery(paths)
    if entry is not None and entry["pid"] == (pid or os.getpid()):
        (paths.config_dir / FILE_NAME).unlink(missing_ok=True)
