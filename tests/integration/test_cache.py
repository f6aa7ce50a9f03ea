"""The semantic cache in the agent: hits, savings, isolation, context, near-misses, lifecycle."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agent.ledger.cache_entries import CacheEntries, CacheEntry
from tests.conftest import RunningAgent


def ask(agent: RunningAgent, question: str, token: str | None = None, **extra: Any) -> httpx.Response:
    body = {"model": "local", "messages": [{"role": "user", "content": question}], "max_tokens": 48, "temperature": 0}
    headers = extra.pop("headers", {})
    with agent.http(token) as http:
        response = http.post("/v1/chat/completions", json=body | extra, headers=headers)
    assert response.status_code == 200, response.text
    return response


def test_a_repeated_question_is_answered_from_the_cache_for_free(agent: RunningAgent) -> None:
    first = ask(agent, "What is the capital of France?")
    second = ask(agent, "what is the capital of france")
    assert first.headers["X-AIFinOps-Cache"] == "miss"
    assert (second.headers["X-AIFinOps-Cache"], second.headers["X-AIFinOps-Route"]) == ("hit", "cache")
    assert second.headers["X-AIFinOps-Cost-USD"] == "0.000000"
    assert float(second.headers["X-AIFinOps-Cache-Similarity"]) == pytest.approx(1.0)
    assert second.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    paid, free = agent.rows()
    assert (paid.cache_hit, free.cache_hit) == (False, True)
    assert (free.cost_micro_usd, free.price_source, free.route, free.provider) == (0, "cache", "cache", "cache")
    assert free.cost_saved_micro_usd == paid.cost_micro_usd > 0
    with agent.http() as http:
        spend = http.get("/api/v1/spend", params={"by": "route"}).json()
    assert {r["key"]: r["cost_saved_usd"] for r in spend["rows"]}["cache"] == f"{paid.cost_micro_usd / 1e6:.6f}"


def test_a_paraphrase_is_a_hit_and_the_stream_says_so(agent: RunningAgent) -> None:
    ask(agent, "How do I learn Python quickly?")
    with (
        agent.http() as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "local",
                "stream": True,
                "temperature": 0,
                "max_tokens": 48,
                "messages": [{"role": "user", "content": "What is the fastest way to learn Python?"}],
            },
        ) as response,
    ):
        assert response.headers["X-AIFinOps-Cache"] == "hit"
        similarity = float(response.headers["X-AIFinOps-Cache-Similarity"])
        verifier = float(response.headers["X-AIFinOps-Cache-Verifier"])
        body = "".join(response.iter_text())
    assert 0.8 < similarity < 1.0 and 0.5 < verifier <= 1.0
    assert '"cache":"hit"' in body and body.rstrip().endswith("data: [DONE]")
    assert f'"cache_verifier_score":{round(verifier, 4)}' in body
    hit = agent.rows()[-1]
    assert (hit.cache_hit, hit.stream, hit.cost_micro_usd) == (True, True, 0)
    # The ledger row says why it was served: the similarity and the verifier's score beside it.
    said = re.fullmatch(r"cache hit, similarity (\d\.\d{3}), verifier (\d\.\d{3})", hit.reason)
    assert said is not None
    assert float(said[1]) == pytest.approx(similarity, abs=6e-4) and float(said[2]) == pytest.approx(verifier, abs=6e-4)


def test_one_users_answers_never_reach_another(agent: RunningAgent) -> None:
    alice, bob = agent.add_user("alice", "sales"), agent.add_user("bob", "sales")
    ask(agent, "What is the capital of France?", alice)
    answer = ask(agent, "What is the capital of France?", bob)
    assert answer.headers["X-AIFinOps-Cache"] == "miss"
    assert "X-AIFinOps-Cache-Similarity" not in answer.headers
    # Bob cannot remove Alice's entry, and cannot tell it exists.
    entry_id = agent.thread.services.db.query("SELECT id FROM cache_entries ORDER BY id LIMIT 1")[0]["id"]
    with agent.http(bob) as http:
        theirs = http.post(f"/api/v1/cache/{entry_id}/invalidate")
        missing = http.post("/api/v1/cache/999999/invalidate")
    assert theirs.status_code == missing.status_code == 404 and theirs.json() == missing.json()


def test_department_scope_shares_within_the_department_only(start_agent: Callable[..., RunningAgent]) -> None:
    agent = start_agent(cache={"scope": "department"})
    alice, bob = agent.add_user("alice", "sales"), agent.add_user("bob", "sales")
    carol = agent.add_user("carol", "legal")
    ask(agent, "What is the capital of France?", alice)
    assert ask(agent, "What is the capital of France?", bob).headers["X-AIFinOps-Cache"] == "hit"
    assert ask(agent, "What is the capital of France?", carol).headers["X-AIFinOps-Cache"] == "miss"


def test_the_same_question_in_another_conversation_is_a_miss(agent: RunningAgent) -> None:
    ask(agent, "What is a good name for a dog?")
    other = ask(agent, "What is a good name for a dog?",
                messages=[{"role": "system", "content": "You only answer in French."},
                          {"role": "user", "content": "What is a good name for a dog?"}])  # fmt: skip
    assert other.headers["X-AIFinOps-Cache"] == "miss"


@pytest.mark.parametrize(
    ("first", "second"),
    [("Is 2019 a leap year?", "Is 2020 a leap year?"), ("Is coffee good for you?", "Is coffee not good for you?")],
)
def test_numbers_and_negations_are_not_near_enough(agent: RunningAgent, first: str, second: str) -> None:
    ask(agent, first)
    assert ask(agent, second).headers["X-AIFinOps-Cache"] == "miss"


def test_clients_can_skip_the_cache(agent: RunningAgent) -> None:
    ask(agent, "What is the capital of France?")
    by_body = ask(agent, "What is the capital of France?", cache=False)
    by_header = ask(agent, "What is the capital of France?", headers={"Cache-Control": "no-cache"})
    assert by_body.headers["X-AIFinOps-Cache"] == by_header.headers["X-AIFinOps-Cache"] == "bypass"
    assert [r.cache_hit for r in agent.rows()] == [False, False, False]


def test_a_user_can_mark_an_answer_wrong(agent: RunningAgent) -> None:
    ask(agent, "What is the capital of France?")
    hit = ask(agent, "What is the capital of France?")
    with agent.http() as http:
        assert http.post(f"/api/v1/cache/{hit.headers['X-AIFinOps-Cache-Entry']}/invalidate").status_code == 204
    assert ask(agent, "What is the capital of France?").headers["X-AIFinOps-Cache"] == "miss"


def test_stats_and_clear(agent: RunningAgent) -> None:
    ask(agent, "What is the capital of France?")
    ask(agent, "What is the capital of France?")
    with agent.http() as http:
        stats = http.get("/api/v1/cache").json()
        assert (stats["entries"], stats["hits"]) == (1, 1) and stats["saved_micro_usd"] > 0
        assert http.delete("/api/v1/cache").json()["removed"] == 1
        assert http.get("/api/v1/cache").json()["entries"] == 0
    alice = agent.add_user("alice", "sales")
    with agent.http(alice) as http:
        assert http.get("/api/v1/cache", params={"all": "true"}).status_code == 403


def test_entries_survive_a_restart(start_agent: Callable[..., RunningAgent]) -> None:
    first = start_agent()
    ask(first, "What is the capital of France?")
    first.thread.stop()
    second = start_agent()
    assert ask(second, "What is the capital of France?").headers["X-AIFinOps-Cache"] == "hit"


def test_a_corrupt_vector_row_is_skipped_and_reported(start_agent: Callable[..., RunningAgent]) -> None:
    first = start_agent()
    ask(first, "What is the capital of France?")
    entry = CacheEntries(first.thread.services.db).get(1)
    assert entry is not None
    CacheEntries(first.thread.services.db).add(
        CacheEntry(**(entry.__dict__ | {"vector": b"\x00garbage", "query_hash": "x", "query": "broken"}))
    )
    first.thread.stop()
    second = start_agent()
    with second.http() as http:
        stats = http.get("/api/v1/cache").json()
    assert stats["corrupt_rows_skipped"] == 1
    assert ask(second, "What is the capital of France?").headers["X-AIFinOps-Cache"] == "hit"


def test_expired_entries_are_not_served(start_agent: Callable[..., RunningAgent]) -> None:
    agent = start_agent(cache={"ttl_s": 1})
    ask(agent, "What is the capital of France?")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and time.time() < _expiry(agent):
        time.sleep(0.05)  # waits for the clock to pass the entry's expiry; asserts nothing about speed
    assert ask(agent, "What is the capital of France?").headers["X-AIFinOps-Cache"] == "miss"


def _expiry(agent: RunningAgent) -> float:
    from datetime import datetime

    rows = agent.thread.services.db.query("SELECT expires_at FROM cache_entries")
    return max(datetime.fromisoformat(r["expires_at"]).timestamp() for r in rows) if rows else 0.0


def test_least_recently_used_entries_are_evicted(start_agent: Callable[..., RunningAgent]) -> None:
    agent = start_agent(cache={"max_entries": 2})
    ask(agent, "What is the capital of France?")
    ask(agent, "How many legs does a spider have?")
    assert ask(agent, "What is the capital of France?").headers["X-AIFinOps-Cache"] == "hit"  # now most recent
    ask(agent, "Why is the sky blue?")  # over the limit: the spider goes
    assert ask(agent, "What is the capital of France?").headers["X-AIFinOps-Cache"] == "hit"
    assert ask(agent, "How many legs does a spider have?").headers["X-AIFinOps-Cache"] == "miss"


def test_an_empty_question_skips_the_cache(agent: RunningAgent) -> None:
    assert ask(agent, "   ").headers["X-AIFinOps-Cache"] == "bypass"
    assert ask(agent, "   ").headers["X-AIFinOps-Cache"] == "bypass"
    assert agent.thread.services.db.query("SELECT count(*) AS n FROM cache_entries")[0]["n"] == 0


def test_a_broken_embedding_model_never_fails_a_request(start_agent: Callable[..., RunningAgent], tmp_path) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    agent = start_agent(cache={"embedding_model": str(junk)})
    answer = ask(agent, "What is the capital of France?")
    assert answer.headers["X-AIFinOps-Cache"] == "bypass"
    assert answer.json()["choices"][0]["message"]["content"]
    assert [r.status for r in agent.rows()] == ["ok"]
