"""``aifinops bench replay``: prompts through the whole pipeline, and where the money went.

A real agent (real ledger, real local model, real embedding and router) runs on loopback with
three tiers: the local model, and ``cheap``/``strong`` cloud models answered by the scripted
OpenAI-compatible server (its usage counts the real tokens). Each conversation is sent as a
client would send it, with model ``auto``. The ledger then says what was paid; the baselines
price the same requests as if every one had gone to the strong (or the cheap) tier, with the
original prompt and a cloud-length answer.

What was saved is split by mechanism, and the parts add up to the baseline minus what was paid:
cache (answered from the cache: its all-strong price), compression (the optimiser's removed
tokens at the answering model's input price, as the ledger records them), and routing (the
rest: cheaper tiers, minus what cascade attempts cost).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.benchmarks.routing import TierPrice
from agent.benchmarks.upstream import Behaviour, ScriptedUpstream
from agent.errors import InvalidRequest
from agent.identity import read_token_file
from agent.jsonlines import read_records
from agent.money import format_usd, usd_to_micros
from agent.pricing.tokens import count_message_tokens, count_text_tokens
from agent.settings import Settings, load_settings

# What the scripted cloud tiers answer: a typical short answer (about 60 tokens).
CLOUD_ANSWER = (
    "Here is a short answer. The key points are: first, check the inputs and the assumptions; "
    "second, apply the standard method step by step; third, verify the result against a simple "
    "case. If anything is unclear, ask a follow-up question and I will go into more detail."
)


@dataclass(frozen=True)
class Conversation:
    turns: tuple[str, ...]  # user messages, sent one after another with the answers in between


def read_conversations(path: Path, limit: int | None = None) -> list[Conversation]:
    """Rows with ``prompt``, ``turns`` (a list of user messages) or ``q1``/``q2`` (two questions)."""

    def conversations(row: dict[str, Any]) -> list[Conversation]:
        if isinstance(row.get("turns"), list) and row["turns"]:
            return [Conversation(tuple(str(t) for t in row["turns"]))]
        if "q1" in row and "q2" in row:
            return [Conversation((str(row["q1"]),)), Conversation((str(row["q2"]),))]
        return [Conversation((str(row["prompt"]),))]

    out: list[Conversation] = []
    for items in read_records(path, conversations, "prompt, turns, or q1 and q2"):
        out.extend(items)
        if limit is not None and len(out) >= limit:
            return out[:limit]
    if not out:
        raise InvalidRequest(f"{path}: no prompts")
    return out


@contextmanager
def replay_agent(settings: Settings, cheap: str, strong: str, provider_id: str, **routing: Any) -> Iterator[Any]:
    """A real agent in a scratch home, its cloud tiers answered by the scripted server."""
    from agent.server import AgentThread

    upstream = ScriptedUpstream(default=Behaviour(text=CLOUD_ANSWER), keep_requests=False, count_usage=True).start()
    try:
        with tempfile.TemporaryDirectory(prefix="aifinops-replay-") as home:
            overrides = {
                "agent": {"port": 0, "log_level": "WARNING"},
                "models": {"dir": str(settings.models_dir)},
                "cloud": [
                    {
                        "name": "replay",
                        "base_url": upstream.base_url,
                        "models": [cheap, strong],
                        "provider_id": provider_id,
                        "max_retries": 0,
                    }
                ],
                "tiers": {"local": "local", "cheap": cheap, "strong": strong},
                "routing": settings.routing.model_dump() | routing,
                "optimizer": settings.optimizer.model_dump(),
                "cache": settings.cache.model_dump(),
                "pricing": settings.pricing.model_dump(),
            }
            agent_settings = load_settings(home=home, overrides=overrides, environ={})
            thread = AgentThread(agent_settings).start()
            try:
                yield thread
            finally:
                thread.stop()
    finally:
        upstream.stop()


def run_replay(
    settings: Settings,
    conversations: list[Conversation],
    cheap: TierPrice,
    strong: TierPrice,
    max_tokens: int = 48,
    progress: Callable[[int], None] | None = None,
    **routing: Any,
) -> dict[str, Any]:
    answer_tokens = count_text_tokens(CLOUD_ANSWER)
    baseline_strong = baseline_cheap = 0
    # request id -> its all-strong price (original prompt, cloud-length answer)
    strong_price: dict[str, int] = {}
    with replay_agent(settings, cheap.model, strong.model, strong.provider_id, **routing) as thread:
        token = read_token_file(thread.services.settings.paths.token_file)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=thread.base_url, headers=headers, timeout=300) as http:
            for conversation in conversations:
                messages: list[dict[str, str]] = []
                for turn in conversation.turns:
                    messages.append({"role": "user", "content": turn})
                    body = {"model": "auto", "messages": messages, "max_tokens": max_tokens}
                    response = http.post("/v1/chat/completions", json=body)
                    response.raise_for_status()
                    answer = response.json()
                    input_tokens = count_message_tokens(m["content"] for m in messages)
                    at_strong = usd_to_micros(strong.cost(input_tokens, answer_tokens))
                    strong_price[answer["id"]] = at_strong
                    baseline_strong += at_strong
                    baseline_cheap += usd_to_micros(cheap.cost(input_tokens, answer_tokens))
                    messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
                if progress is not None:
                    progress(1)
        rows = thread.services.db.query(
            "SELECT id, parent_id, tier, route, cache_hit, cost_micro_usd, cost_saved_micro_usd, "
            "prompt_tokens_before, prompt_tokens_after FROM requests"
        )
    paid = sum(r["cost_micro_usd"] or 0 for r in rows)
    unpriced = sum(r["cost_micro_usd"] is None for r in rows)
    requests = [r for r in rows if r["parent_id"] == ""]
    cache = sum(strong_price[r["id"]] for r in requests if r["cache_hit"])
    compression = sum(r["cost_saved_micro_usd"] for r in requests if not r["cache_hit"])
    routing_saved = baseline_strong - paid - cache - compression
    tiers: dict[str, int] = {}
    for r in requests:
        key = "cache" if r["cache_hit"] else r["tier"] or r["route"]
        tiers[key] = tiers.get(key, 0) + 1
    before = sum(r["prompt_tokens_before"] or 0 for r in requests if r["prompt_tokens_before"] is not None)
    after = sum(r["prompt_tokens_after"] or 0 for r in requests if r["prompt_tokens_after"] is not None)

    def share(micros: int) -> float | None:
        return round(micros / baseline_strong, 4) if baseline_strong else None

    return {
        "requests": len(requests),
        "cascade_attempts": len(rows) - len(requests),
        "answered_by": dict(sorted(tiers.items())),
        "unpriced_rows": unpriced,
        "total_cost_usd": format_usd(paid),
        "all_strong_cost_usd": format_usd(baseline_strong),
        "all_cheap_cost_usd": format_usd(baseline_cheap),
        "saved_vs_all_strong": share(baseline_strong - paid),
        "saved_vs_all_cheap": round(1 - paid / baseline_cheap, 4) if baseline_cheap else None,
        "saved_by": {"cache": share(cache), "routing": share(routing_saved), "compression": share(compression)},
        "prompt_tokens_before_optimiser": before,
        "prompt_tokens_after_optimiser": after,
        "prices": {
            "cheap": cheap.model,
            "strong": strong.model,
            "cloud_answer_tokens": answer_tokens,
            "local_usd_per_hour": str(settings.pricing.local_usd_per_hour),
        },
        "max_tokens": max_tokens,
    }
