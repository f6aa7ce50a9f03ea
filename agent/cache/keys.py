"""Which cache partition a request may use, or why it skips the cache. Pure decisions.

A partition is a scope (whose answers may be shared) plus a context fingerprint (everything
besides the question that shapes the answer: model, system prompt, earlier turns, sampling).
Two requests share answers only when both match exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass

from agent.chat import ChatCall
from agent.identity import Caller
from agent.providers.base import Message
from agent.settings import CacheSection


@dataclass(frozen=True)
class CacheKey:
    scope: str
    fingerprint: str
    query: str  # the latest user message, as written (the guard reads its capitals)
    query_hash: str  # of the normalised query, for exact matches

    @property
    def partition(self) -> int:
        """A non-negative int64 label for the index (the key itself is re-checked on a hit)."""
        digest = hashlib.blake2b(f"{self.scope}\0{self.fingerprint}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def scope_of(caller: Caller, scope: str) -> str:
    if scope == "organisation":
        return "organisation"
    if scope == "department":
        return f"department:{caller.department}"
    return f"user:{caller.user_id}"


def visible_scopes(caller: Caller) -> frozenset[str]:
    """Every scope whose entries this caller may be served (and so may mark wrong)."""
    return frozenset({f"user:{caller.user_id}", f"department:{caller.department}", "organisation"})


def normalize_query(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    return re.sub(r"\s+", " ", text).strip().rstrip("?!. ")


def cache_key(settings: CacheSection, caller: Caller, call: ChatCall, model: str) -> CacheKey | str:
    """The key for this request, or the reason it skips the cache."""
    if not settings.enabled:
        return "disabled"
    if not call.cache_allowed:
        return "client asked for no cache"
    messages = call.messages
    if messages[-1].role != "user":
        return "last message is not a user question"
    if sum(m.role == "user" for m in messages) > settings.max_turns:
        return f"conversation longer than {settings.max_turns} turns"
    if call.params.n > 1:
        return "several choices asked for (n > 1)"
    if call.params.logprobs:
        return "logprobs asked for"
    temperature = call.params.temperature
    if temperature is not None and temperature > settings.max_temperature:
        return f"temperature above {settings.max_temperature}"
    query = messages[-1].content
    if not query.strip():
        return "empty question"
    params = call.params
    context = {
        "model": model,
        "earlier": [_turn(m) for m in messages[:-1]],
        "max_tokens": params.max_tokens,  # an answer cut at max_tokens serves only the same limit
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": params.stop,
        "seed": params.seed,
        "passthrough": params.passthrough,
    }
    fingerprint = hashlib.sha256(json.dumps(context, sort_keys=True, default=str).encode()).hexdigest()
    query_hash = hashlib.sha256(normalize_query(query).encode()).hexdigest()
    return CacheKey(scope_of(caller, settings.scope), fingerprint, query, query_hash)


def _turn(m: Message) -> tuple[object, ...]:
    """An earlier message as the fingerprint sees it: with its tool calls or the call it answers,
    so an answer is shared only within the same whole tool context (plain turns keep the shape
    they always had, so existing entries still match)."""
    if not m.tool_calls and m.tool_call_id is None:
        return (m.role, m.name, m.content)
    return (m.role, m.name, m.content, [c.as_openai() for c in m.tool_calls], m.tool_call_id)
