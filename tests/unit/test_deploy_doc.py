"""docs/DEPLOY.md documents every key of the default config, and the installers' assumptions hold.

The Windows installer and the macOS postinstall script write the company config by replacing two
exact lines of agent/default_config.toml; the Windows one reads it as ASCII.
"""

from __future__ import annotations

import plistlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "agent" / "default_config.toml"
DEPLOY = ROOT / "docs" / "DEPLOY.md"
MACOS = ROOT / "packaging" / "macos"


def config_keys() -> set[tuple[str, str]]:
    """(section, key) for every key the default config sets, [[tables]] included."""
    keys = set()
    for section, value in tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8")).items():
        tables = value if isinstance(value, list) else [value]
        for table in tables:
            keys.update((section, key) for key in table)
    return keys


def documented_keys() -> set[tuple[str, str]]:
    """(section, key) for each first-column `key` of the tables under "### `[section]`" headings."""
    found = set()
    section = None
    for line in DEPLOY.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^### `\[\[?([a-z_]+)\]\]?`", line)
        if heading:
            section = heading.group(1)
        elif line.startswith("#"):
            section = None
        elif section and line.startswith("| `"):
            first_cell = line.split("|")[1]
            found.update((section, key.split(".")[0]) for key in re.findall(r"`([a-z_0-9.\"-]+)`", first_cell))
    return found


def test_every_default_config_key_is_documented() -> None:
    keys = config_keys()
    assert ("share", "public_keys") in keys and ("local_models", "idle_unload_s") in keys
    missing = sorted(f"{section}.{key}" for section, key in keys - documented_keys())
    assert not missing, f"docs/DEPLOY.md lacks these keys of agent/default_config.toml: {missing}"


def test_documented_keys_exist_in_the_settings() -> None:
    """A key documented under a section the settings know must be one the settings accept."""
    from agent.settings import Settings

    fields = {name: info.annotation for name, info in Settings.model_fields.items()}
    stale = []
    for section, key in documented_keys():
        model = fields.get(section)
        inner = getattr(model, "__args__", (model,))[0] if section in ("local_models", "cloud") else model
        if inner is not None and hasattr(inner, "model_fields") and key not in inner.model_fields:
            stale.append(f"{section}.{key}")
    assert not stale, f"docs/DEPLOY.md documents keys the agent does not have: {stale}"


def test_default_config_fits_the_installers() -> None:
    raw = DEFAULT_CONFIG.read_bytes()
    raw.decode("ascii")  # the Windows installer loads it as an ANSI string
    lines = raw.decode("ascii").splitlines()
    assert lines.count('path = ""') == 1
    assert lines.count("public_keys = []") == 1
    assert lines.index('path = ""') > lines.index("[share]")


@pytest.mark.parametrize(
    ("plist", "label", "environment"),
    [
        ("com.aifinops.agent.plist", "com.aifinops.agent", {"AIFINOPS_HOME", "AIFINOPS_CONFIG"}),
        ("com.aifinops.agent.user.plist", "com.aifinops.agent.user", {"AIFINOPS_CONFIG"}),
        ("com.aifinops.tray.plist", "com.aifinops.tray", {"AIFINOPS_CONFIG"}),
    ],
)
def test_launchd_jobs(plist: str, label: str, environment: set[str]) -> None:
    job = plistlib.loads((MACOS / plist).read_bytes())
    assert job["Label"] == label
    assert set(job["EnvironmentVariables"]) == environment
    assert job["EnvironmentVariables"]["AIFINOPS_CONFIG"] == "/Library/Preferences/aifinops/config.toml"
    assert job["ProgramArguments"][0].startswith("/Applications/aifinops.app/Contents/MacOS/")
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["ThrottleInterval"] >= 10
    assert f"`{label}`" in DEPLOY.read_text(encoding="utf-8")


def test_app_info_plist_is_a_menu_bar_app() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("app_info", MACOS / "app_info.py")
    assert spec and spec.loader
    app_info = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_info)
    info = app_info.info_plist("1.2.3")
    assert info["LSUIElement"] is True
    assert info["CFBundleIdentifier"] == "com.aifinops.tray"
    assert info["CFBundleShortVersionString"] == "1.2.3"
    assert plistlib.loads(plistlib.dumps(info)) == info
