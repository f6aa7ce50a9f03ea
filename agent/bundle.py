"""What running from the PyInstaller bundle (``make bundle``: dist/aifinops/) changes.

The bundle's data folder (``sys._MEIPASS``; ``_internal/`` beside the executables) holds
``build-info.json`` (version, git commit, build time, written by build.spec) and
``models/`` (the catalogue's default model files and their ``manifest.json``). It may be
read-only (a service user, a system package): nothing here writes to it.
Outside a bundle every function returns None.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__

BUILD_INFO_FILE = "build-info.json"
MODELS_FOLDER = "models"
MODELS_MANIFEST = "manifest.json"
# numba's own locators after ours (bare names are looked up in numba.core.caching).
FROZEN_NUMBA_LOCATORS = (
    "native.numba_cache.FrozenCacheLocator,UserProvidedCacheLocator,InTreeCacheLocator,UserWideCacheLocator"
)


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str  # short git commit, "" when built outside a git checkout
    built_at: str  # UTC, ISO 8601


def bundle_dir() -> Path | None:
    """The bundle's data folder when running frozen, else None."""
    folder = getattr(sys, "_MEIPASS", None)
    return Path(folder) if getattr(sys, "frozen", False) and folder else None


def build_info() -> BuildInfo | None:
    folder = bundle_dir()
    if folder is None:
        return None
    try:
        data = json.loads((folder / BUILD_INFO_FILE).read_text(encoding="utf-8"))
        return BuildInfo(str(data["version"]), str(data.get("commit", "")), str(data["built_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def version_line() -> str:
    """What ``aifinops --version`` prints: the version, and the commit and date of a bundle."""
    info = build_info()
    if info is None:
        return f"aifinops, version {__version__}"
    commit = f"commit {info.commit}, " if info.commit else ""
    return f"aifinops, version {info.version} ({commit}built {info.built_at})"


def bundled_models_dir() -> Path | None:
    """The bundle's read-only models folder (with its manifest), else None."""
    folder = bundle_dir()
    if folder is None or not (folder / MODELS_FOLDER / MODELS_MANIFEST).is_file():
        return None
    return folder / MODELS_FOLDER


def direct_numba_cache(folder: Path) -> None:
    """Compiled numba kernels go to `folder` (unless NUMBA_CACHE_DIR says otherwise), frozen or not.

    Call before the kernels are imported. In a bundle numba would otherwise use ~/.cache/numba
    (see native/numba_cache.py). numba reads these variables when it is first imported; if it
    already is, its config is updated too.
    """
    cache_dir = os.environ.setdefault("NUMBA_CACHE_DIR", str(folder))
    locators = os.environ.setdefault("NUMBA_CACHE_LOCATOR_CLASSES", FROZEN_NUMBA_LOCATORS) if bundle_dir() else ""
    config: Any = sys.modules.get("numba.core.config")
    if config is not None:
        config.CACHE_DIR = cache_dir
        if locators:
            config.CACHE_LOCATOR_CLASSES = locators
