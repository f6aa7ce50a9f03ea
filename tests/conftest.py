"""Fixtures: every user path under tmp_path, real agents and real upstreams on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import settings

from agent.benchmarks.upstream import ScriptedUpstream
from agent.identity import read_token_file
from agent.ledger.requests import RequestRecord
from agent.models.catalog import find_asset
from agent.models.store import ModelStore
from agent.server import AgentThread
from agent.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
# `make test` pulls the default models here once; tests read them from this shared folder.
MODELS_DIR = Path(os.environ.get("AIFINOPS_MODELS__DIR") or REPO / ".cache" / "models")
# Hypothesis' per-example deadline (200 ms) is a timing assertion: a disk that stalls on fsync
# failed a trace round trip once. Timings belong in bench/, so the tests have none.
settings.register_profile("aifinops", deadline=None)
settings.load_profile("aifinops")
# Compiled numba kernels are kept between runs too (the agent would use each test's own home).
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))


@pytest.fixture(autouse=True)
def hermetic_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("AIFINOPS_") or key.endswith("_API_KEY"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("AIFINOPS_HOME", str(home))
    monkeypatch.setenv("AIFINOPS_MODELS__DIR", str(MODELS_DIR))
    return home


@pytest.fixture(scope="session")
def chat_model_path() -> Path:
    asset = find_asset("smollm2-135m-instruct")
    assert asset is not None
    return ModelStore(MODELS_DIR).pull(asset)


@dataclass
class RunningAgent:
    thread: AgentThread
    token: str  # the OS user's token (admin of a fresh ledger)
    # SDK clients handed out, closed when the agent stops: one left to the garbage collector
    # warns of its open socket during some later test, and the warning fails that test.
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.thread.base_url

    def client(self, token: str | None = None) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=token or self.token, max_retries=0)
        self.clients.append(client)
        return client

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)

    def add_user(self, name: str, department: str, admin: bool = False) -> str:
        return self.thread.services.identity.add_user(name, department, admin=admin)

    def rows(self) -> list[RequestRecord]:
        db = self.thread.services.db
        ids = [r["id"] for r in db.query("SELECT id FROM requests ORDER BY ts")]
        return [r for r in map(self.thread.services.requests.get, ids) if r is not None]


@pytest.fixture
def start_agent(chat_model_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """Start a real agent (real ledger, real SmolLM2) with extra settings; stopped after."""
    started: list[RunningAgent] = []

    def start(**overrides: Any) -> RunningAgent:
        overrides.setdefault("agent", {}).setdefault("port", 0)
        settings = load_settings(overrides=overrides)
        agent = RunningAgent(AgentThread(settings).start(), "")
        started.append(agent)  # stopped after the test, whatever happens next
        agent.token = read_token_file(settings.paths.token_file) or ""
        assert agent.token
        return agent

    yield start
    for agent in started:
        for client in agent.clients:
            client.close()
        agent.thread.stop()


@pytest.fixture
def agent(start_agent: Callable[..., RunningAgent]) -> RunningAgent:
    return start_agent()


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()
