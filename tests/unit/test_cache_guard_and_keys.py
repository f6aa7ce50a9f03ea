"""The cache's pure decisions: the near-miss guard and the partition key."""

from __future__ import annotations

import pytest

from agent.cache.guard import facets, same_question
from agent.cache.keys import cache_key, normalize_query, scope_of, visible_scopes
from agent.chat import ChatCall
from agent.identity import Caller
from agent.providers.base import ChatParams, Message
from agent.settings import CacheSection

ALICE = Caller(1, "alice", "sales", False)
BOB = Caller(2, "bob", "sales", False)


def same(a: str, b: str) -> bool:
    return same_question(facets(a), facets(b))[0]


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        ("Is 2019 a leap year?", "Is 2020 a leap year?", "numbers"),
        ("What is 15% of 200?", "What is 15% of 300?", "numbers"),
        ("What happened in March 2020?", "What happened in April 2020?", "numbers"),
        ("What are the top three books?", "What are the top five books?", "numbers"),
        ("Is coffee good for you?", "Is coffee not good for you?", "negated"),
        ("Why can't I sleep at night?", "Why can I sleep at night?", "negated"),
        ("How do I learn Python quickly?", "How do I learn Java quickly?", "names"),
        ("What is the capital of France?", "What is the capital of Spain?", "names"),
        ("Who is the CEO of AMD?", "Who is the CEO of NVIDIA?", "names"),
        ("He died 2 years ago. How do I cope?", "He died 2 months ago. How do I cope?", "units"),
        ("How far is 10 km?", "How far is 10 miles?", "units"),
        ("Why is it not cheap and not fast?", "Why is it not cheap and fast?", "negated"),
    ],
)
def test_near_misses_are_not_the_same_question(a: str, b: str, why: str) -> None:
    ok, reason = same_question(facets(a), facets(b))
    assert not ok and why in reason
    assert not same(b, a)  # symmetric


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I learn Python quickly?", "What is the fastest way to learn python?"),
        ("What is the capital of France?", "Which city is the capital of France?"),
        ("Is 2020 a leap year?", "Was 2020 a leap year?"),
        ("How can I lose weight fast?", "What is the quickest way to lose weight?"),
        ("Do eyebrows grow back after being shaved?", "Will my eyebrows grow back after I\u2019ve shaved them?"),
        ("How many hours should I sleep?", "How much sleep do I need a night?"),  # a unit on one side only
        ("What do the years in college teach you?", "What does a college year teach you?"),  # the same unit
        ("No, it doesn't exist in version 2.10.", "Version 2.10 does not have it."),  # a leading "No," adds nothing
    ],
)
def test_paraphrases_pass(a: str, b: str) -> None:
    assert same(a, b)


def call(*messages: Message, **params: object) -> ChatCall:
    return ChatCall("local", messages, ChatParams(**params))  # type: ignore[arg-type]


Q = Message("user", "What is a token?")


def test_the_same_question_in_the_same_context_has_the_same_key() -> None:
    settings = CacheSection()
    a, b = cache_key(settings, ALICE, call(Q), "local"), cache_key(settings, ALICE, call(Q), "local")
    assert not isinstance(a, str) and a == b
    loud = cache_key(settings, ALICE, call(Message("user", "  what is a TOKEN  ")), "local")
    assert not isinstance(loud, str) and loud.query_hash == a.query_hash


def test_users_never_share_a_partition_by_default() -> None:
    settings = CacheSection()
    a, b = cache_key(settings, ALICE, call(Q), "local"), cache_key(settings, BOB, call(Q), "local")
    assert not isinstance(a, str) and not isinstance(b, str)
    assert a.scope != b.scope and a.partition != b.partition


def test_department_scope_is_shared_only_within_the_department() -> None:
    settings = CacheSection(scope="department")
    carol = Caller(3, "carol", "legal", False)
    a, b, c = (cache_key(settings, who, call(Q), "local") for who in (ALICE, BOB, carol))
    assert not isinstance(a, str) and not isinstance(b, str) and not isinstance(c, str)
    assert a.partition == b.partition != c.partition
    assert scope_of(ALICE, "organisation") == scope_of(carol, "organisation") == "organisation"
    assert f"user:{ALICE.user_id}" in visible_scopes(ALICE) and "department:legal" not in visible_scopes(ALICE)


@pytest.mark.parametrize(
    "other",
    [
        call(Message("system", "Answer in French."), Q),
        call(Message("user", "Hi"), Message("assistant", "Hello!"), Q),
        call(Q, temperature=0.2),
        call(Q, seed=7),
        call(Q, stop=("END",)),
    ],
)
def test_another_context_is_another_partition(other: ChatCall) -> None:
    settings = CacheSection()
    base, changed = cache_key(settings, ALICE, call(Q), "local"), cache_key(settings, ALICE, other, "local")
    assert not isinstance(base, str) and not isinstance(changed, str)
    assert base.query_hash == changed.query_hash and base.partition != changed.partition


def test_another_model_is_another_partition() -> None:
    settings = CacheSection()
    a, b = cache_key(settings, ALICE, call(Q), "local"), cache_key(settings, ALICE, call(Q), "gpt-4o-mini")
    assert not isinstance(a, str) and not isinstance(b, str) and a.partition != b.partition


@pytest.mark.parametrize(
    ("settings", "the_call", "reason"),
    [
        (CacheSection(enabled=False), call(Q), "disabled"),
        (CacheSection(), ChatCall("local", (Q,), ChatParams(), cache_allowed=False), "no cache"),
        (CacheSection(max_temperature=0.5), call(Q, temperature=0.9), "temperature"),
        (CacheSection(max_turns=1), call(Q, Message("assistant", "A unit."), Q), "turns"),
        (CacheSection(), call(Q, Message("assistant", "A unit.")), "not a user question"),
        (CacheSection(), call(Message("user", "   ")), "empty"),
    ],
)
def test_requests_that_skip_the_cache_say_why(settings: CacheSection, the_call: ChatCall, reason: str) -> None:
    key = cache_key(settings, ALICE, the_call, "local")
    assert isinstance(key, str) and reason in key


def test_normalize_query() -> None:
    assert normalize_query("  What\u2019s   UP?? ") == "what's up"


def test_another_answer_length_limit_is_another_partition() -> None:
    settings = CacheSection()
    a, b = cache_key(settings, ALICE, call(Q), "local"), cache_key(settings, ALICE, call(Q, max_tokens=16), "local")
    assert not isinstance(a, str) and not isinstance(b, str) and a.partition != b.partition
