"""POST /v1/embeddings end to end: the real `openai` SDK against a real agent, the real MiniLM
ONNX model for `local-embed`, the scripted upstream for cloud models, the ledger as the judge."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from genai_prices import Usage, calc_price

from agent.benchmarks.upstream import Behaviour, ScriptedUpstream, scripted_embedding
from agent.money import format_usd, usd_to_micros
from agent.policy.model import parse_policy
from agent.policy.publish import Signed, publish
from agent.policy.signing import generate_keypair, sign
from agent.pricing.tokens import count_text_tokens
from tests.conftest import RunningAgent

LOCAL = "local-embed"
CLOUD = "text-embedding-3-small"
# Longest first: the model runs inputs sorted by length, the answer keeps the client's order.
TEXTS = [
    "The cat sat on the mat by the fire, watching the rain run down the window all afternoon.",
    "Quarterly revenue grew.",
    "The cat sat on the mat by the fire, watching the rain run down the window all afternoon.",
]
# Long enough that its genai-prices cost ($0.02 per million tokens) is whole micro-USD.
LONG = ["Budgets, rate limits and a ledger of every request, per user and feature. " * 40, "Short one."]


def cloud_agent(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream, **settings: Any) -> RunningAgent:
    endpoint = {"name": "scripted", "base_url": upstream.base_url, "models": [CLOUD, "scripted-chat"],
                "provider_id": "openai", "max_retries": 2, "retry_base_s": 0.01}  # fmt: skip
    return start_agent(cloud=[endpoint], **settings)


def test_local_embeddings_are_unit_vectors_in_input_order_and_recorded(agent: RunningAgent) -> None:
    client = agent.client()
    raw = client.embeddings.with_raw_response.create(model=LOCAL, input=TEXTS, encoding_format="float")
    answer = raw.parse()
    vectors = np.array([d.embedding for d in answer.data], dtype=np.float32)
    assert answer.model == LOCAL and [d.index for d in answer.data] == [0, 1, 2]
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])  # the same text, the same vector
    assert float(vectors[0] @ vectors[1]) < 0.5  # different texts, different directions
    # Batch order kept: each text alone gives its row of the batch.
    for text, row in zip(TEXTS[:2], vectors[:2], strict=True):
        alone = client.embeddings.create(model=LOCAL, input=text, encoding_format="float").data[0].embedding
        assert np.allclose(np.array(alone, dtype=np.float32), row, atol=1e-6)
    assert answer.usage.prompt_tokens > 3 * 2 and answer.usage.total_tokens == answer.usage.prompt_tokens

    headers = raw.headers
    assert headers["x-aifinops-route"] == "local"
    row = next(r for r in agent.rows() if r.id == headers["x-aifinops-request-id"])
    assert headers["x-aifinops-cost-usd"] == format_usd(row.cost_micro_usd)
    assert (row.route, row.model, row.provider, row.status) == ("local", LOCAL, LOCAL, "ok")
    assert (row.input_tokens, row.output_tokens) == (answer.usage.prompt_tokens, 0)
    assert row.price_source == "local-compute" and row.cost_micro_usd is not None and row.cost_micro_usd >= 0
    assert row.user_name == agent.thread.services.identity.authenticate(agent.token).user
    assert len(agent.rows()) == 3  # one row per call
    assert LOCAL in {m.id for m in client.models.list()}


def test_base64_decodes_to_the_same_floats(agent: RunningAgent) -> None:
    client = agent.client()
    floats = client.embeddings.create(model=LOCAL, input=TEXTS[:2], encoding_format="float")
    sdk_default = client.embeddings.create(model=LOCAL, input=TEXTS[:2])  # the SDK asks for base64 and decodes
    assert [d.embedding for d in sdk_default.data] == [d.embedding for d in floats.data]
    with agent.http() as http:
        body = http.post("/v1/embeddings", json={"model": LOCAL, "input": TEXTS[:2], "encoding_format": "base64"})
    assert body.status_code == 200, body.text
    for item, expected in zip(body.json()["data"], floats.data, strict=True):
        decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        assert decoded.tolist() == expected.embedding


def test_cloud_embeddings_are_priced_by_genai_prices_for_the_caller_and_feature(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    agent = cloud_agent(start_agent, upstream)
    alice = agent.add_user("alice", "research")
    client = agent.client(alice)
    raw = client.embeddings.with_raw_response.create(
        model=CLOUD, input=LONG, encoding_format="float", extra_headers={"X-AIFinOps-Feature": "search-index"}
    )
    answer = raw.parse()
    assert [d.embedding for d in answer.data] == [scripted_embedding(t, 16).tolist() for t in LONG]
    assert upstream.received[-1]["input"] == LONG and upstream.received[-1]["model"] == CLOUD
    tokens = sum(count_text_tokens(t) for t in LONG)
    assert answer.usage.prompt_tokens == tokens
    listed = calc_price(Usage(input_tokens=tokens, output_tokens=0), model_ref=CLOUD, provider_id="openai")
    expected = usd_to_micros(Decimal(listed.total_price))
    assert expected > 0
    assert raw.headers["x-aifinops-route"] == "cloud"
    assert raw.headers["x-aifinops-cost-usd"] == format_usd(expected)
    [row] = agent.rows()
    assert row.id == raw.headers["x-aifinops-request-id"]
    assert (row.user_name, row.department, row.feature) == ("alice", "research", "search-index")
    assert (row.route, row.model, row.provider, row.status) == ("cloud", CLOUD, "scripted", "ok")
    assert (row.input_tokens, row.output_tokens, row.cost_micro_usd) == (tokens, 0, expected)
    assert row.price_source == "genai-prices"

    # The feature from metadata, dimensions and token ids forwarded, base64 from the SDK's default.
    short = client.embeddings.create(
        model=CLOUD, input=[[1, 2, 3], [4, 5]], dimensions=8, extra_body={"metadata": {"feature": "rag"}}
    )
    assert [len(d.embedding) for d in short.data] == [8, 8] and short.usage.prompt_tokens == 5
    assert upstream.received[-1]["dimensions"] == 8 and upstream.received[-1]["input"] == [[1, 2, 3], [4, 5]]
    assert agent.rows()[-1].feature == "rag"


def test_cloud_embeddings_are_retried_like_chat_and_a_failure_leaves_an_error_row(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:
    agent = cloud_agent(start_agent, upstream)
    client = agent.client()
    upstream.script.extend([Behaviour(kind="status", status=503), Behaviour(kind="status", status=429)])
    assert len(client.embeddings.create(model=CLOUD, input="retried").data) == 1
    assert agent.rows()[-1].attempts == 3
    upstream.script.extend([Behaviour(kind="status", status=500)] * 3)
    with pytest.raises(openai.APIStatusError) as failed:
        client.embeddings.create(model=CLOUD, input="fails")
    assert failed.value.status_code == 503
    upstream.script.append(Behaviour(kind="malformed"))
    with pytest.raises(openai.APIStatusError) as malformed:
        client.embeddings.create(model=CLOUD, input="malformed")
    assert malformed.value.status_code == 502
    statuses = [(r.status, r.error_type) for r in agent.rows()]
    assert statuses == [("ok", ""), ("error", "provider_unavailable"), ("error", "provider_bad_response")]


def test_a_spent_budget_refuses_cloud_embeddings_with_402_but_not_local_ones(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    # 10 USD per million input tokens: 10 micro-USD a token; the budget pays for about 100.
    policy = b"""
version = 1
organisation = "Test"
timezone = "UTC"
default_department = "general"

[[budgets]]
name = "user-daily"
scope = "user"
match = "*"
period = "day"
amount_usd = "0.001"
action = "block"
"""
    key, public = generate_keypair()
    share = tmp_path / "share"
    share.mkdir()
    publish(Signed(parse_policy(policy), policy, sign(policy, key)), share)
    pricing = {"overrides": {CLOUD: {"input_usd_per_mtok": "10", "output_usd_per_mtok": "0"}}}
    agent = cloud_agent(
        start_agent,
        upstream,
        pricing=pricing,
        share={"path": str(share), "public_keys": [public], "sync_interval_s": 5},
    )
    wait_for_policy(agent, 1)
    client = agent.client()
    text = " ".join(["one two three four five six seven eight nine ten"] * 5)
    assert count_text_tokens(text) == 50  # 500 micro-USD; its hold: 71 tokens (a 10% margin + 16)
    first = client.embeddings.with_raw_response.create(model=CLOUD, input=text)
    assert first.headers["x-aifinops-cost-usd"] == "0.000500"
    calls = len(upstream.received)
    with pytest.raises(openai.APIStatusError) as refused:
        client.embeddings.create(model=CLOUD, input=text)  # holds more than the 500 micro-USD left
    assert refused.value.status_code == 402
    error = refused.value.body
    assert isinstance(error, dict) and error["type"] == "budget_exceeded" and error["code"] == "block"
    assert error["budget"]["name"] == "user-daily"
    assert len(upstream.received) == calls  # the refused call never reached the provider
    assert [r.model for r in agent.rows()] == [CLOUD]  # and left no row
    assert client.embeddings.create(model=LOCAL, input=text).data  # local answers are never blocked
    with agent.http() as http:
        [budget] = http.get("/api/v1/budgets").json()["budgets"]
    assert budget["reserved_micro_usd"] == 0 and budget["spent_micro_usd"] >= 500


def wait_for_policy(agent: RunningAgent, version: int) -> None:
    deadline = time.monotonic() + 30
    with agent.http() as http:
        while http.get("/api/v1/budgets").json()["policy_version"] != version:
            assert time.monotonic() < deadline, "the policy never came into force"
            time.sleep(0.2)


@pytest.mark.parametrize(
    ("body", "status", "error_type", "param"),
    [
        (b"{not json", 400, "invalid_request_error", None),
        (b"[1, 2]", 400, "invalid_request_error", None),
        (b'{"model": "local-embed"}', 400, "invalid_request_error", "input"),
        (b'{"model": 7, "input": "x"}', 400, "invalid_request_error", "model"),
        (b'{"model": "local-embed", "input": ""}', 400, "invalid_request_error", "input"),
        (b'{"model": "local-embed", "input": []}', 400, "invalid_request_error", "input"),
        (b'{"model": "local-embed", "input": ["a", 1]}', 400, "invalid_request_error", "input"),
        (b'{"model": "local-embed", "input": ["a", null]}', 400, "invalid_request_error", "input"),
        (b'{"model": "local-embed", "input": {"text": "a"}}', 400, "invalid_request_error", "input"),
        (b'{"model": "local-embed", "input": [[1, 2], []]}', 400, "invalid_request_error", "input"),
        (b'{"model": "local-embed", "input": "x", "encoding_format": "hex"}', 400, "invalid_request_error", None),
        (b'{"model": "local-embed", "input": "x", "dimensions": "8"}', 400, "invalid_request_error", "dimensions"),
        (b'{"model": "local-embed", "input": "x", "dimensions": 0}', 400, "invalid_request_error", "dimensions"),
        (b'{"model": "local-embed", "input": "x", "tools": []}', 400, "invalid_request_error", "tools"),
        (
            b'{"model": "local-embed", "input": "x", "metadata": {"feature": "no spaces"}}',
            400,
            "invalid_request_error",
            None,
        ),
        (b'{"model": "nope", "input": "x"}', 404, "model_not_found", None),
        (b'{"model": "local", "input": "x"}', 400, "invalid_request_error", "model"),
    ],
)
def test_bad_bodies_get_4xx_and_leave_no_row(
    agent: RunningAgent, body: bytes, status: int, error_type: str, param: str | None
) -> None:
    with agent.http() as http:
        response = http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type and error["message"]
    if param is not None:
        assert error["param"] == param
    assert agent.rows() == []


def test_what_the_local_model_cannot_do_is_refused_with_the_field_named(agent: RunningAgent) -> None:
    client = agent.client()
    with pytest.raises(openai.BadRequestError) as token_ids:
        client.embeddings.create(model=LOCAL, input=[[101, 2023, 102]])
    assert token_ids.value.param == "input" and "token ids" in token_ids.value.message
    with pytest.raises(openai.BadRequestError) as dimensions:
        client.embeddings.create(model=LOCAL, input="x", dimensions=128)
    assert dimensions.value.param == "dimensions" and "384" in dimensions.value.message
    with pytest.raises(openai.BadRequestError) as too_many:
        client.embeddings.create(model=LOCAL, input=["x"] * 2049)
    assert too_many.value.param == "input" and "2048" in too_many.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-nope", input="x")
    assert client.embeddings.create(model=LOCAL, input="x", dimensions=384).data  # its own size is fine
    assert [r.status for r in agent.rows()] == ["ok"]


def test_embeddings_need_a_token(agent: RunningAgent) -> None:
    with httpx.Client(base_url=agent.base_url) as http:
        response = http.post("/v1/embeddings", json={"model": LOCAL, "input": "x"})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert agent.rows() == []
