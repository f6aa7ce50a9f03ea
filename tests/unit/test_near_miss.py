"""The near-miss writer: each rule changes the one thing it is about, and nothing else."""

from __future__ import annotations

from agent.benchmarks.near_miss import near_misses
from agent.cache.guard import facets, same_question

QUESTIONS = [
    "How should I plan a trip to Goa for 3 days?",
    "Is it safe to drink tap water?",
    "What is the best way to celebrate a birthday in Bangalore?",
    "How do I use a Python module with Visual Studio?",
    "My brother passed away 2 years back. What should I do?",
    "Is Goa a good place to go in January?",
    "May I take a rabies injection after a week?",  # "May" is no month: no date rule here
    "What is love?",  # nothing to change
]


def test_each_rule_changes_its_one_word() -> None:
    pairs = {p.q1: p for p in near_misses(QUESTIONS, per_rule=5)}  # a question is used by one rule
    expected = {
        QUESTIONS[0]: ("number", "How should I plan a trip to Goa for 6 days?"),
        QUESTIONS[1]: ("negation", "Is it not safe to drink tap water?"),
        QUESTIONS[2]: ("place", "What is the best way to celebrate a birthday in Chennai?"),
        QUESTIONS[3]: ("language", "How do I use a Java module with Visual Studio?"),
        QUESTIONS[4]: ("number", "My brother passed away 4 years back. What should I do?"),  # numbers come first
        QUESTIONS[5]: ("date", "Is Goa a good place to go in February?"),
    }
    assert {q: (p.rule, p.q2) for q, p in pairs.items()} == expected
    assert near_misses(["He left 2 years ago."], 1)[0].q2 == "He left 4 years ago."
    assert near_misses(["He left years ago."], 1)[0].q2 == "He left months ago."  # no number: the unit
    for pair in pairs.values():
        before, after = pair.q1.split(), pair.q2.split()
        if pair.rule == "negation":  # one word added: "not"
            assert [w for w in after if w != "not"] == before and after.count("not") == 1
        else:  # one word replaced
            assert len(before) == len(after) and sum(a != b for a, b in zip(before, after, strict=True)) == 1


def test_rules_take_their_share_and_no_question_twice() -> None:
    many = [f"How do I learn Python in {n} days?" for n in range(2, 40)]
    pairs = near_misses(many + QUESTIONS, per_rule=3)
    by_rule: dict[str, int] = {}
    for pair in pairs:
        by_rule[pair.rule] = by_rule.get(pair.rule, 0) + 1
    assert all(n <= 3 for n in by_rule.values()) and by_rule["number"] == 3
    assert len({p.q1 for p in pairs}) == len(pairs)
    assert near_misses(many, per_rule=3) == near_misses(many, per_rule=3)  # deterministic


def test_the_guard_tells_every_near_miss_of_this_sample_apart() -> None:
    for pair in near_misses(QUESTIONS, per_rule=5):
        assert not same_question(facets(pair.q1), facets(pair.q2))[0], pair
