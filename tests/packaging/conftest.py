"""Tests of what ships. They run the built bundle named by AIFINOPS_BUNDLE (`make package-test`
sets it to dist/aifinops after `make bundle`) and skip without it.

Helpers for every packaging test: `bundle` (the folder), `bundle_env()` (an environment without
this test run's AIFINOPS_*/NUMBA_* settings, so the bundle finds its own models and folders),
`free_port()`, `wait_until()` and `BundledAgent` (a bundled agent process on 127.0.0.1).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.identity import read_token_file

# Read when collected: the root conftest's autouse fixture clears AIFINOPS_* for each test.
BUNDLE = os.environ.get("AIFINOPS_BUNDLE", "")
EXE_SUFFIX = ".exe" if sys.platform == "win32" else ""
START_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def bundle() -> Path:
    if not BUNDLE:
        pytest.skip("AIFINOPS_BUNDLE is not set: `make package-test` builds dist/aifinops and runs these tests")
    folder = Path(BUNDLE).resolve()
    assert (folder / f"aifinops{EXE_SUFFIX}").is_file(), f"no aifinops executable in {folder}: run `make bundle`"
    return folder


def bundle_env(**extra: str) -> dict[str, str]:
    """This process's environment without our test settings (the bundle must stand on its own)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIFINOPS_", "NUMBA_")) and not key.endswith("_API_KEY")
    }
    return env | extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll `condition` until it holds; fail saying `what` was awaited (a deadline, not a timing)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class BundledAgent:
    """`aifinops --home HOME agent run --port PORT` from the bundle; its output goes to HOME/agent.out."""

    process: subprocess.Popen[bytes]
    home: Path
    base_url: str

    @classmethod
    def start(cls, bundle: Path, home: Path, env: dict[str, str] | None = None) -> BundledAgent:
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        cmd = [str(bundle / f"aifinops{EXE_SUFFIX}"), "--home", str(home), "agent", "run", "--port", str(port)]
        with (home / "agent.out").open("wb") as out:
            # cwd: not the checkout, whose source files a frozen program must not depend on
            process = subprocess.Popen(cmd, env=env or bundle_env(), cwd=home, stdout=out, stderr=subprocess.STDOUT)
        agent = cls(process, home, f"http://127.0.0.1:{port}")
        try:
            wait_until(agent.answers, f"{agent.base_url}/api/v1/info")
        except AssertionError:
            agent.kill()
            raise
        return agent

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the bundled agent exited with {self.process.returncode}:\n{self.output()}")
        try:
            return httpx.get(f"{self.base_url}/api/v1/info", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def token(self) -> str:
        token = read_token_file(self.home / "config" / "token")
        assert token, "the agent wrote no token file"
        return token

    def output(self) -> str:
        return (self.home / "agent.out").read_text(errors="replace")[-4000:]

    def terminate(self, timeout_s: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start_bundled_agent(bundle: Path) -> Iterator[Callable[..., BundledAgent]]:
    started: list[BundledAgent] = []

    def start(home: Path, env: dict[str, str] | None = None) -> BundledAgent:
        agent = BundledAgent.start(bundle, home, env)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()
