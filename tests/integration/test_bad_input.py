"""Bad input gets a clear 4xx with an OpenAI-style error body; nothing is recorded; the agent stays up."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import RunningAgent

GOOD = {"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        (b"{not json", 400, "invalid_request_error"),
        (b"\xff\xfe{}", 400, "invalid_request_error"),
        (b"[1, 2]", 400, "invalid_request_error"),
        (b'{"model": "local"}', 400, "invalid_request_error"),
        (b'{"model": "local", "messages": []}', 400, "invalid_request_error"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_request_error"),
        (
            b'{"model": "local", "messages": [{"role": "wizard", "content": "x"}]}',
            400,
            "invalid_request_error",
        ),
        (
            b'{"model": "local", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}',
            400,
            "invalid_request_error",
        ),
        (
            b'{"model": "local", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            400,
            "invalid_request_error",
        ),
        (
            b'{"model": "local", "messages": [{"role": "user", "content": "x"}], "tools": []}',
            400,
            "invalid_request_error",
        ),
        (
            b'{"model": "local", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}',
            400,
            "invalid_request_error",
        ),
        (b'{"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found"),
    ],
)
def test_bad_bodies_get_4xx_and_leave_no_row(agent: RunningAgent, body: bytes, status: int, error_type: str) -> None:
    with agent.http() as http:
        response = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["type"] == error_type and error["message"]
        assert http.post("/v1/chat/completions", json=GOOD).status_code == 200  # still up
    assert [r.status for r in agent.rows()] == ["ok"]


def test_body_over_the_limit_is_413(start_agent) -> None:  # type: ignore[no-untyped-def]
    agent = start_agent(agent={"max_body_bytes": 4096})
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 10_000}]}
    with agent.http() as http:
        declared = http.post("/v1/chat/completions", json=big)

        def chunked():  # no Content-Length: the limit must hold while reading
            yield b'{"model": "local", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}]}'

        streamed = http.post("/v1/chat/completions", content=chunked())
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "request_too_large"
    assert agent.rows() == []


def test_prompt_longer_than_the_local_context_is_400(start_agent) -> None:  # type: ignore[no-untyped-def]
    agent = start_agent(local_models=[{"name": "local", "n_ctx": 256}])
    long = {**GOOD, "messages": [{"role": "user", "content": "word " * 600}]}
    with agent.http() as http:
        response = http.post("/v1/chat/completions", json=long)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    [row] = agent.rows()
    assert (row.status, row.error_type) == ("error", "invalid_request_error")


def test_foreign_host_header_is_refused(agent: RunningAgent) -> None:
    with agent.http() as http:
        response = http.post("/v1/chat/completions", json=GOOD, headers={"Host": "evil.example:8765"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "host_not_allowed"
        assert http.get("/api/v1/info", headers={"Host": "localhost"}).status_code == 200
    assert agent.rows() == []


def test_no_cors_headers_by_default(agent: RunningAgent) -> None:
    response = httpx.options(
        f"{agent.base_url}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_unknown_route_and_method_are_json_errors(agent: RunningAgent) -> None:
    with agent.http() as http:
        missing = http.get("/v1/nothing")
        wrong = http.get("/v1/chat/completions")
    assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found_error")
    assert (wrong.status_code, wrong.json()["error"]["type"]) == (405, "method_not_allowed")
