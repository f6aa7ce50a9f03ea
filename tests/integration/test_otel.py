"""OpenTelemetry over the real pipeline: a real agent exports to an OTLP/HTTP receiver on loopback
(protobuf decoded as a collector does), and the spans carry the GenAI attributes, the stage
spans, the ledger's cost; prompts stay home unless asked; a hung collector holds no request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from agent.benchmarks.upstream import Behaviour, ScriptedUpstream
from tests.conftest import RunningAgent
from tests.support.otlp import HungCollector, OtlpReceiver, ReceivedSpan

CLOUD = "gpt-4o-mini"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CLIENT_KIND = 3  # SpanKind.CLIENT in OTLP
ERROR = 2


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


def traced(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream, endpoint: str,
           **telemetry: Any) -> RunningAgent:  # fmt: skip
    endpoint_config = {"name": "scripted", "base_url": upstream.base_url, "models": [CLOUD], "max_retries": 0}
    return start_agent(
        cloud=[endpoint_config | {"provider_id": "openai"}],
        telemetry={"otlp_endpoint": endpoint, "metrics_interval_s": 3600} | telemetry,
    )


def flush(agent: RunningAgent) -> None:
    tracing = agent.thread.services.telemetry.tracing
    assert tracing is not None
    tracing.flush()


def roots(receiver: OtlpReceiver) -> list[ReceivedSpan]:
    return [s for s in receiver.spans if not s.parent_id]


def children(receiver: OtlpReceiver, root: ReceivedSpan) -> list[str]:
    return sorted(s.name for s in receiver.spans if s.parent_id == root.span_id)


def test_spans_follow_the_genai_conventions_and_carry_the_cost(
    receiver: OtlpReceiver, start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:  # the receiver first: it stops last, after the agent's last export
    agent = traced(start_agent, upstream, receiver.endpoint)
    client = agent.client()
    client.chat.completions.create(model="local", messages=QUESTION, max_tokens=4, temperature=0)
    upstream.default = Behaviour(text="Paris.")
    list(client.chat.completions.create(model=CLOUD, messages=QUESTION, max_tokens=7, stream=True))
    client.embeddings.create(model="local-embed", input=["a", "b"])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    client.close()  # an error answer's connection is not left to the garbage collector
    flush(agent)
    receiver.wait_for(lambda: len(roots(receiver)) == 4)

    rows = {r.id: r for r in agent.rows()}
    by_name = {s.name: s for s in roots(receiver)}
    assert set(by_name) == {"chat local", f"chat {CLOUD}", "embeddings local-embed", "chat no-such-model"}
    for span in by_name.values():
        assert span.kind == CLIENT_KIND
    local, cloud = by_name["chat local"], by_name[f"chat {CLOUD}"]
    for span in (local, cloud, by_name["embeddings local-embed"]):
        row = rows[span.attributes["aifinops.request_id"]]
        a = span.attributes
        assert a["gen_ai.operation.name"] == ("embeddings" if row.id.startswith("embd") else "chat")
        assert a["gen_ai.request.model"] == row.requested_model and a["gen_ai.response.model"] == row.model
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (row.input_tokens, row.output_tokens)
        assert a["aifinops.cost_micro_usd"] == row.cost_micro_usd and a["aifinops.route"] == row.route
        assert a["aifinops.price_source"] == row.price_source and span.status_code != ERROR
        assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a  # content stays home
    assert local.attributes["gen_ai.provider.name"] == "llama.cpp" and local.attributes["gen_ai.request.max_tokens"] == 4
    assert cloud.attributes["gen_ai.provider.name"] == "openai" and cloud.attributes["aifinops.cache"] == "miss"
    stages = ["aifinops.cache", "aifinops.embed", "aifinops.optimize", "aifinops.route"]
    assert children(receiver, local) == sorted([*stages, "aifinops.provider local"])  # local answers hold no money
    assert children(receiver, cloud) == sorted([*stages, f"aifinops.provider {CLOUD}"])  # no policy: nothing held
    refused = by_name["chat no-such-model"]
    assert refused.status_code == ERROR and refused.attributes["error.type"] == "model_not_found"
    assert receiver.resources[0]["service.name"] == "aifinops-agent" and receiver.resources[0]["host.id"]

    points = receiver.metrics
    usage = [p for p in points["gen_ai.client.token.usage"] if p["attributes"]["gen_ai.request.model"] == "local"]
    assert {p["attributes"]["gen_ai.token.type"] for p in usage} == {"input", "output"}
    assert sum(p["sum"] for p in usage) == sum(r.input_tokens + r.output_tokens for r in rows.values()
                                               if r.model == "local")  # fmt: skip
    durations = points["gen_ai.client.operation.duration"]
    assert sum(p["count"] for p in durations) == 3  # the three answered requests


def test_content_is_exported_only_when_asked(
    receiver: OtlpReceiver, start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream
) -> None:  # the receiver first: it stops last, after the agent's last export
    agent = traced(start_agent, upstream, receiver.endpoint, capture_content=True)
    answer = agent.client().chat.completions.create(model="local", messages=QUESTION, max_tokens=4)
    flush(agent)
    receiver.wait_for(lambda: len(roots(receiver)) == 1)
    attributes = roots(receiver)[0].attributes
    assert "capital of France" in attributes["gen_ai.input.messages"]
    assert (answer.choices[0].message.content or "") in attributes["gen_ai.output.messages"]


def test_a_hung_collector_holds_no_request(start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream) -> None:
    collector = HungCollector()
    try:
        # Each export waits 10 s for the collector: far longer than the requests below take.
        agent = traced(start_agent, upstream, collector.endpoint, export_timeout_s=10, max_queue=16)
        client = agent.client()
        upstream.default = Behaviour(text="ok")
        client.chat.completions.create(model=CLOUD, messages=QUESTION, max_tokens=2)
        tracing = agent.thread.services.telemetry.tracing
        assert tracing is not None
        exporting = threading.Thread(target=tracing.flush, daemon=True)
        exporting.start()  # the export now waits on a collector that never answers
        deadline_accepts = 200
        while not collector.accepted and deadline_accepts:
            threading.Event().wait(0.05)
            deadline_accepts -= 1
        assert collector.accepted, "the exporter never reached the collector"
        # While that export hangs, requests are answered, more than the span queue holds.
        for n in range(40):
            answer = client.chat.completions.create(model=CLOUD, messages=[{"role": "user", "content": f"q{n}"}],
                                                    max_tokens=2)  # fmt: skip
            assert answer.choices[0].message.content == "ok"
        assert exporting.is_alive()  # all of them answered while the export still waited
        assert len(agent.rows()) == 41 and all(r.status == "ok" for r in agent.rows())
    finally:
        collector.stop()
