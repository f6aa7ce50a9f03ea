"""The PyInstaller bundle (dist/aifinops/) on its own: version stamp, bundled models, a real
chat answer from the bundled agent, numba's cache in the agent's folder, the frozen tray.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import sqlite3
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agent import __version__
from agent.models.catalog import CATALOG
from tests.packaging.conftest import EXE_SUFFIX, BundledAgent, bundle_env, free_port, wait_until
from tests.support.otlp import OtlpReceiver

INTERNAL = "_internal"


def run_cli(bundle: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bundle / f"aifinops{EXE_SUFFIX}"), *args],
        env=env or bundle_env(),
        cwd=bundle.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_version_names_the_build(bundle: Path) -> None:
    result = run_cli(bundle, "--version")
    assert result.returncode == 0, result.stderr
    info = json.loads((bundle / INTERNAL / "build-info.json").read_text())
    assert info["version"] == __version__
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", info["commit"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["built_at"])
    expected = f"aifinops, version {__version__} (commit {info['commit']}, built {info['built_at']})"
    assert result.stdout.strip() == expected


def test_catalogue_models_come_from_the_bundle(bundle: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = run_cli(bundle, "--home", str(home), "models", "pull", env=bundle_env(COLUMNS="400"))
    assert result.returncode == 0, result.stderr
    listing = run_cli(bundle, "--home", str(home), "models", "list", env=bundle_env(COLUMNS="400"))
    assert listing.returncode == 0, listing.stderr
    models = bundle / INTERNAL / "models"
    for asset in CATALOG:
        row = next(line for line in listing.stdout.splitlines() if line.strip("│ ").startswith(asset.name))
        assert "verified" in row
        assert str(models / asset.name / asset.filename) in row
    assert not (home / "data" / "models").exists()  # nothing fetched or copied


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 instruction check")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_llama_cpp_is_the_portable_build(bundle: Path) -> None:
    """-DGGML_NATIVE=OFF: no AVX-512 (zmm) instructions, which a -march=native build here would have."""
    libs = sorted((bundle / INTERNAL / "llama_cpp" / "lib").glob("libggml-cpu.so*"))
    assert libs, "llama.cpp's CPU backend is not in the bundle"
    disassembly = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(libs[0])], capture_output=True, text=True, check=True
    ).stdout
    assert "vfmadd" in disassembly  # the AVX2/FMA baseline is there
    assert "zmm" not in disassembly


def test_bundled_agent_answers_a_local_chat_and_stops_on_sigterm(
    start_bundled_agent: Callable[..., BundledAgent], tmp_path: Path
) -> None:
    user_home = tmp_path / "user"  # HOME: numba's fallback cache (~/.cache/numba) would land here
    user_home.mkdir()
    collector = OtlpReceiver().start()  # OpenTelemetry's entry points must work frozen too
    env = bundle_env(HOME=str(user_home), XDG_CACHE_HOME="", AIFINOPS_TELEMETRY__OTLP_ENDPOINT=collector.endpoint)
    agent = start_bundled_agent(tmp_path / "aifinops", env)
    info = httpx.get(f"{agent.base_url}/api/v1/info", timeout=10).json()
    assert (info["name"], info["version"]) == ("aifinops", __version__)

    response = httpx.post(
        f"{agent.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {agent.token}"},
        json={"model": "local", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0
    assert response.headers["X-AIFinOps-Route"] == "local"
    metrics = httpx.get(f"{agent.base_url}/metrics", headers={"Authorization": f"Bearer {agent.token}"}, timeout=10)
    assert 'aifinops_requests_total{model="local",route="local",status="ok",tier="local"} 1.0' in metrics.text

    # The agent compiles its similarity kernels at start (off the request path) into its own cache.
    numba_cache = tmp_path / "aifinops" / "cache" / "numba"  # not ~/.cache/numba, whatever the cwd
    wait_until(lambda: any(numba_cache.rglob("*.nbi")), f"numba index files under {numba_cache}")
    assert agent.terminate() == 0, agent.output()
    collector.stop()
    assert [s.name for s in collector.spans if not s.parent_id] == ["chat local"]  # flushed at the stop
    assert not (user_home / ".cache" / "numba").exists()
    assert not (tmp_path / "aifinops" / "config" / "agent.json").exists()  # discovery file removed on stop


def test_frozen_tray_starts_the_bundled_agent_and_renders(bundle: Path, tmp_path: Path) -> None:
    """The tray starts its sibling `aifinops` (not `python -m agent`), which answers the chat shown."""
    home, shots, port = tmp_path / "home", tmp_path / "shots", free_port()
    env = bundle_env(QT_QPA_PLATFORM="offscreen", AIFINOPS_AGENT__PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    tray = bundle / f"aifinops-tray{EXE_SUFFIX}"
    result = subprocess.run(
        [str(tray), "--home", str(home), "--url", url, "--screenshot", str(shots)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert png_size(shots / "chat.png") == (720, 640)
    assert png_size(shots / "dashboard.png") == (900, 760)
    assert all(n > 50 for n in png_size(shots / "tray-menu.png"))
    with sqlite3.connect(home / "data" / "ledger.db") as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone() == (1,)
    with pytest.raises(httpx.TransportError):  # the tray stopped the agent it started
        httpx.get(f"{url}/api/v1/info", timeout=5)
