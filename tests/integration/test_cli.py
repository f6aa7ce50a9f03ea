"""The `aifinops` command as a user runs it, against a real agent on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningAgent
from tests.support.files import file_contains


def aifinops(
    *args: str, port: int | None = None, token: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    if port is not None:
        env["AIFINOPS_PORT"] = str(port)
    if token is not None:
        env["AIFINOPS_TOKEN"] = token
    result = subprocess.run(
        [sys.executable, "-m", "agent", *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_users_chat_and_spend_end_to_end(agent: RunningAgent) -> None:
    port = agent.thread.port
    added = aifinops("users", "add", "dana", "--department", "legal")
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("afo_")
    assert not file_contains(agent.thread.services.db.path, token)

    chat = aifinops("chat", "Name a colour.", "--model", "local", "--max-tokens", "8", port=port, token=token)
    assert chat.stdout.strip()
    assert "[local] cost $0.0000" in chat.stderr

    [row] = agent.rows()
    assert (row.user_name, row.department, row.feature, row.stream) == ("dana", "legal", "cli-chat", True)

    mine = json.loads(aifinops("spend", "--by", "user", "--json", port=port, token=token).stdout)
    assert mine["scope"] == "own"
    assert [(r["key"], r["requests"], r["cost_micro_usd"]) for r in mine["rows"]] == [("dana", 1, row.cost_micro_usd)]

    table = aifinops("spend", "--by", "department", "--since", "1d", port=port).stdout  # token file: admin
    assert "legal" in table and "everyone" in table

    listed = aifinops("users", "list").stdout
    assert "dana" in listed and "legal" in listed
    aifinops("users", "revoke", "dana")
    refused = aifinops("spend", port=port, token=token, check=False)
    assert refused.returncode == 1 and "invalid or revoked token" in refused.stderr


def test_commands_explain_themselves() -> None:
    for command in (
        ["--help"],
        ["agent", "run", "--help"],
        ["users", "add", "--help"],
        ["spend", "--help"],
        ["chat", "--help"],
        ["models", "pull", "--help"],
        ["doctor", "--help"],
    ):
        assert "Usage: aifinops" in aifinops(*command).stdout
    assert aifinops("--version").stdout.strip() == "aifinops, version 0.1.0"


def test_chat_and_spend_without_an_agent_say_how_to_start_it() -> None:
    for command in (["chat", "hi"], ["spend"]):
        result = aifinops(*command, port=1, token="afo_x", check=False)
        assert result.returncode == 1
        assert "aifinops agent run" in result.stderr
        assert "Traceback" not in result.stderr


def test_bad_config_is_one_clear_line(hermetic_home) -> None:  # type: ignore[no-untyped-def]
    config = hermetic_home / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[agent]\nport = "eighty"\n')
    result = aifinops("doctor", check=False)
    assert result.returncode == 1
    assert "agent.port" in result.stderr and "Traceback" not in result.stderr


def test_doctor_and_models_list_report_the_models(agent: RunningAgent) -> None:
    listed = aifinops("models", "list").stdout
    assert "smollm2-135m-instruct" in listed and "verified" in listed
    doctor = aifinops("doctor", port=agent.thread.port, check=False).stdout
    assert "llama-cpp-python" in doctor and "running: aifinops" in doctor and "no NVIDIA GPU" in doctor
    assert "difficulty model loaded" in doctor
    assert "answering you as" in doctor and "in force at the running agent: none yet" in " ".join(doctor.split())


def test_doctor_says_when_the_agent_refuses_the_token(agent: RunningAgent) -> None:
    """A shared box's user whose token the system agent does not know: a failed check saying what to do."""
    result = aifinops("doctor", port=agent.thread.port, token="afo_not-issued-by-this-agent", check=False)
    assert result.returncode == 1
    text = " ".join(result.stdout.split())
    assert "does not answer for your token" in text and "ask an admin for a token" in text


def test_doctor_says_when_the_router_runs_on_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "router.npz"
    broken.write_bytes(b"not an archive")
    monkeypatch.setenv("AIFINOPS_ROUTING__ARTIFACT", str(broken))
    doctor = aifinops("doctor", check=False).stdout
    assert "router artifact unavailable: routing by rules" in " ".join(doctor.split())


@pytest.mark.parametrize("args", [["users", "add", "bad name!", "--department", "x"], ["users", "revoke", "nobody"]])
def test_user_commands_refuse_bad_input(args: list[str]) -> None:
    result = aifinops(*args, check=False)
    assert result.returncode == 1 and result.stderr.startswith("error:")
