"""Aborted streams, model files that are not chat models, and a clean SIGTERM of `agent run`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from agent.cache.service import SemanticCache
from agent.ledger.database import Database
from agent.ledger.requests import RequestLog
from tests.conftest import RunningAgent

LONG_ANSWER = {
    "model": "local",
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
    "max_tokens": 400,
    "stream": True,
}


def _wait_for(condition, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_client_leaving_mid_stream_is_recorded_as_aborted(agent: RunningAgent) -> None:
    with agent.http() as http, http.stream("POST", "/v1/chat/completions", json=LONG_ANSWER) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(8)]
    assert any('"content"' in line for line in received)
    _wait_for(lambda: len(agent.rows()) == 1)
    [row] = agent.rows()
    assert row.status == "aborted"
    assert 0 < row.output_tokens < 400 and row.tokens_estimated
    assert row.cost_micro_usd is not None and row.cost_micro_usd > 0
    # The model is free again: the next request is answered.
    again = agent.client().chat.completions.create(
        model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert again.choices[0].message.content is not None


def _patched_copy(source: Path, target: Path, old: bytes, new: bytes) -> Path:
    shutil.copyfile(source, target)
    data = bytearray(target.read_bytes())
    at = data.find(old)
    assert at > 0
    data[at : at + len(old)] = new
    target.write_bytes(bytes(data))
    return target


def test_a_gguf_without_chat_template_is_refused_clearly(start_agent, chat_model_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Same model, with the metadata key renamed: llama.cpp loads it, but it has no chat template.
    base = _patched_copy(
        chat_model_path, tmp_path / "base.gguf", b"tokenizer.chat_template", b"tokenizer.chat_templatX"
    )
    agent = start_agent(local_models=[{"name": "local", "model": str(base)}])
    with pytest.raises(openai.APIStatusError) as err:
        agent.client().chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503
    assert err.value.body["code"] == "no_chat_template"  # type: ignore[index]
    assert "chat template" in err.value.message
    [row] = agent.rows()
    assert (row.status, row.error_type, row.cost_micro_usd) == ("error", "model_unavailable", 0)


def test_a_corrupt_model_file_is_a_503_and_the_agent_stays_up(start_agent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(4096))
    agent = start_agent(local_models=[{"name": "local", "model": str(junk)}])
    with agent.http() as http:
        response = http.post(
            "/v1/chat/completions", json={"model": "local", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "model_unavailable"
        assert http.get("/api/v1/me").status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_lets_an_in_flight_stream_finish_or_records_it_aborted(tmp_path: Path, chat_model_path: Path) -> None:
    home = tmp_path / "svc"
    port = _free_port()
    env = {**os.environ, "AIFINOPS_HOME": str(home)}
    output = (tmp_path / "agent.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "agent", "run", "--port", str(port)],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _answers(base))
        token = (home / "config" / "token").read_text().strip()
        assert (home / "config" / "config.toml").read_text().startswith("# aifinops agent configuration")
        discovery = json.loads((home / "config" / "agent.json").read_text())  # how the tray finds it
        assert (discovery["url"], discovery["pid"]) == (base, proc.pid)
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            json={**LONG_ANSWER, "max_tokens": 60},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)  # the grace period lets the answer finish
        assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
        assert proc.wait(timeout=60) == 0
        assert not (home / "config" / "agent.json").exists()  # a stopped agent is not advertised
    finally:
        if proc.poll() is None:
            proc.kill()
        output.close()
    log = RequestLog(Database.open(home / "data" / "ledger.db"))
    [row] = log.spend("user", "2000-01-01T00:00:00+00:00")
    assert row.requests == 1 and row.failed_requests == 0


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/v1/info", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_a_killed_agent_leaves_a_consistent_ledger(tmp_path: Path, chat_model_path: Path) -> None:
    """SIGKILL mid-stream: every row is whole (earlier ones kept), the file passes integrity_check."""
    home, port = tmp_path / "killed", _free_port()
    output = (tmp_path / "agent.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "agent", "run", "--port", str(port)],
        env={**os.environ, "AIFINOPS_HOME": str(home)},
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _answers(base))
        headers = {"Authorization": f"Bearer {(home / 'config' / 'token').read_text().strip()}"}
        done = httpx.post(
            f"{base}/v1/chat/completions",
            headers=headers,
            timeout=60,
            json={**LONG_ANSWER, "stream": False, "max_tokens": 4},
        )
        assert done.status_code == 200
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=LONG_ANSWER, headers=headers, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            proc.kill()
            proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        output.close()
    db = Database.open(home / "data" / "ledger.db")
    assert db.query("PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    rows = db.query("SELECT id, status, output_tokens, cost_micro_usd FROM requests")
    assert [(r["id"], r["status"]) for r in rows] == [(done.json()["id"], "ok")]
    assert rows[0]["output_tokens"] > 0 and rows[0]["cost_micro_usd"] > 0


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "agent", "agent", "run", "--port", str(port)],
            env={**os.environ, "AIFINOPS_HOME": str(tmp_path / "busy")},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "busy" / "config" / "agent.json").exists()


def test_a_stop_does_not_wait_for_the_cache_warm_up(
    start_agent: Callable[..., RunningAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first run compiles the similarity kernels for 10 s and more: stopping must not wait."""
    started, release = threading.Event(), threading.Event()

    def slow_warm_up(_cache: SemanticCache) -> None:
        started.set()
        release.wait(120)

    monkeypatch.setattr(SemanticCache, "warm_up", slow_warm_up)
    running = start_agent()
    try:
        assert started.wait(30)
        running.thread.stop(timeout_s=30)
        assert not running.thread.server_thread_alive  # stopped while the warm-up is still busy
        assert not release.is_set()
    finally:
        release.set()


def test_the_default_config_is_written_only_where_the_config_in_force_is_read(
    start_agent: Callable[..., RunningAgent], hermetic_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system_config = tmp_path / "etc" / "config.toml"  # a system service's /etc/aifinops/config.toml
    system_config.parent.mkdir()
    system_config.write_text('[agent]\nlog_level = "WARNING"\n')
    monkeypatch.setenv("AIFINOPS_CONFIG", str(system_config))
    start_agent()
    assert not (hermetic_home / "config" / "config.toml").exists()  # no second file to edit by mistake
    assert system_config.read_text() == '[agent]\nlog_level = "WARNING"\n'
