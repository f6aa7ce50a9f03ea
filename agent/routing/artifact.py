"""Where the router's trained difficulty model comes from, and loading it: for the agent, and for
the commands (doctor, bench) that check it without starting the agent's services."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from agent.errors import ConfigError
from agent.routing.difficulty import DifficultyModel
from agent.settings import Settings

log = logging.getLogger(__name__)


def default_router_artifact() -> Path:
    return Path(str(resources.files("agent.routing").joinpath("default_router.npz")))


def build_router_model(settings: Settings, path: Path | None = None) -> tuple[DifficultyModel | None, str]:
    """The trained difficulty model, or None and why (then the router runs on rules)."""
    if path is None:
        artifact = settings.routing.artifact
        path = Path(artifact).expanduser() if artifact else default_router_artifact()
    try:
        return DifficultyModel.load(path), ""
    except ConfigError as e:
        log.warning("%s; routing by rules until it is fixed", e.message)
        return None, "router artifact unavailable"
