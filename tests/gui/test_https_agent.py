"""An agent serving TLS: the command line and the tray find it at https://, from the settings they
share with it, and verify its certificate (a test CA, trusted through SSL_CERT_FILE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from agent.api.client import AgentClient as CliClient
from agent.api.schemas import AIFinOpsInfo
from agent.paths import Paths
from agent.settings import load_settings
from gui.client import AgentClient as TrayClient
from gui.client import StreamReply
from gui.errors import AgentError
from gui.supervisor import Supervisor, answers, discovered_url
from tests.conftest import RunningAgent
from tests.support.tls import make_certs

TIMEOUT_MS = 60_000


@pytest.fixture
def https_agent(
    start_agent: Callable[..., RunningAgent], hermetic_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> RunningAgent:
    """An agent whose config file (the one the CLI and the tray read too) names its certificate."""
    certs = make_certs(tmp_path / "tls")
    config = Paths.resolve(hermetic_home).config_file
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[agent]\ntls_certfile = "{certs.cert_file}"\ntls_keyfile = "{certs.key_file}"\n')
    agent = start_agent()
    monkeypatch.setenv("AIFINOPS_AGENT__PORT", str(agent.thread.port))  # the port it got (the config says 0)
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca_file))  # the clients trust the test CA, and only it
    return agent


def aifinops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_the_command_line_reaches_a_tls_agent_over_https(https_agent: RunningAgent, tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{https_agent.thread.port}"
    assert https_agent.thread.base_url == url  # what the tests' own clients are given
    client = CliClient.from_settings(load_settings())
    try:
        assert client.base_url == url
        assert client.me().admin  # the token file's user, provisioned by the agent
    finally:
        client.close()

    spend = aifinops("spend", "--json")
    assert spend.returncode == 0, spend.stderr
    assert json.loads(spend.stdout)["scope"] == "all"  # the token file's user: the admin

    chat = aifinops("chat", "Name a colour.", "--model", "local", "--max-tokens", "4")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() and "[local] cost $0.0000" in chat.stderr  # the stream, read to its end

    stranger = make_certs(tmp_path / "another-ca").ca_file  # a CA that did not sign the agent's certificate
    untrusted = aifinops("spend", env={**os.environ, "SSL_CERT_FILE": str(stranger)})
    assert untrusted.returncode == 1
    assert f"no agent answers at {url} (ConnectError)" in untrusted.stderr


def test_the_tray_finds_a_tls_agent_and_chats_over_https(
    qtbot: QtBot, https_agent: RunningAgent, hermetic_home: Path
) -> None:
    paths = Paths.resolve(hermetic_home)
    assert discovered_url(paths) is None  # an agent in a thread writes no discovery file: the settings say where
    supervisor = Supervisor(paths, home=hermetic_home)
    url = supervisor.locate()
    assert url == f"https://127.0.0.1:{https_agent.thread.port}"
    assert not supervisor.owns_agent

    client = TrayClient(url, https_agent.token)
    assert client.info().name == "aifinops"
    reply = StreamReply(client)
    deltas: list[str] = []
    reply.delta.connect(deltas.append)
    with qtbot.waitSignal(reply.done, timeout=TIMEOUT_MS) as done:
        client.call(lambda: client.stream_chat({"model": "local", "max_tokens": 4,
                                                "messages": [{"role": "user", "content": "Hi"}]}, reply), reply)  # fmt: skip
    info = done.args[0]
    assert isinstance(info, AIFinOpsInfo) and info.route == "local"
    assert "".join(deltas).strip()
    [row] = https_agent.rows()
    assert (row.id, row.stream) == (info.request_id, True)


def test_the_tray_names_a_trust_store_it_cannot_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "gone.pem"))
    with pytest.raises(AgentError, match=r"gone\.pem") as caught:
        TrayClient("https://127.0.0.1:1", "token").request("GET", "/api/v1/me")
    assert caught.value.status == 0 and caught.value.type == "unreachable"
    assert not answers("https://127.0.0.1:1")  # the supervisor's probe: no agent there, not a crash
