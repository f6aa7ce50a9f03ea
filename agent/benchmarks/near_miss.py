"""Near misses for the semantic cache: question pairs that differ in one thing that changes the
answer (a number, a negation, a place, a language, a unit, a date), written by rule from real
questions. The cache must never serve one for the other: its false-hit rate on these is the
figure, and the goal is 0.

Each rule finds its kind of word in a question and changes exactly that word, so the second
question reads naturally and asks something else. Deterministic: the same questions give the
same pairs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.cache.service import Embedder
    from agent.cache.verifier import PairVerifier
    from agent.settings import CacheSection

# Swapped for one another within a group (the first match in a question is changed).
PLACES = (
    "India", "China", "Japan", "Germany", "France", "Canada", "Australia", "Brazil", "Russia", "Italy",
    "Spain", "Mexico", "Pakistan", "Nepal", "Singapore", "Dubai", "London", "Paris", "Delhi", "Mumbai",
    "Bangalore", "Chennai", "Hyderabad", "Pune", "Kolkata", "Tokyo", "Berlin", "Toronto", "Sydney", "Boston",
)  # fmt: skip
LANGUAGES = ("Python", "Java", "JavaScript", "PHP", "Ruby", "Swift", "Kotlin", "Golang", "Rust", "Perl")
UNITS = {
    "km": "miles", "miles": "km", "kg": "pounds", "pounds": "kg", "dollars": "euros", "euros": "dollars",
    "rupees": "dollars", "hours": "days", "days": "weeks", "weeks": "months", "months": "years",
    "minutes": "hours", "years": "months", "Celsius": "Fahrenheit", "Fahrenheit": "Celsius",
}  # fmt: skip
# Not "May": a question that starts "May I ..." asks for permission, not about a month.
MONTHS = ("January", "February", "March", "April", "June", "July", "August", "September", "October", "November",
          "December")  # fmt: skip
_AUXILIARIES = ("is", "are", "can", "does", "do", "should", "will", "was", "were", "could", "would", "has", "have")
# A one-word subject, after which "not" reads naturally ("Is it not ...", "Can I not ...").
_SUBJECTS = ("I", "you", "we", "they", "it", "he", "she", "there", "this", "that", "one", "people")


@dataclass(frozen=True)
class NearMiss:
    q1: str
    q2: str
    rule: str  # number, negation, place, language, unit, date


def _word(words: Iterable[str]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b")


_NUMBER = re.compile(r"(?<![\w.,])(\d{1,4})(?![\w.,]?\d)")
_PLACE, _LANGUAGE, _UNIT, _MONTH = _word(PLACES), _word(LANGUAGES), _word(UNITS), _word(MONTHS)
_QUESTION_AUX = re.compile(
    r"^(" + "|".join(a.capitalize() for a in _AUXILIARIES) + r") (" + "|".join(_SUBJECTS) + r")\b"
)


def _number(question: str) -> str | None:
    match = _NUMBER.search(question)
    if match is None:
        return None
    n = int(match.group(1))
    changed = n + 1 if 1900 <= n <= 2100 else (n * 2 if n > 1 else n + 2)  # a year moves one; a count doubles
    return question[: match.start(1)] + str(changed) + question[match.end(1) :]


def _negation(question: str) -> str | None:
    """'Is it safe to ...' -> 'Is it not safe to ...': not after the auxiliary's subject."""
    match = _QUESTION_AUX.match(question)
    if match is None or " not " in f" {question.lower()} " or "n't" in question:
        return None
    end = match.end(2)
    return question[:end] + " not" + question[end:]


def _swap(pattern: re.Pattern[str], choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def rule(question: str) -> str | None:
        match = pattern.search(question)
        if match is None:
            return None
        found = match.group(1)
        other = choices[(choices.index(found) + 1) % len(choices)]
        return question[: match.start(1)] + other + question[match.end(1) :]

    return rule


def _unit(question: str) -> str | None:
    match = _UNIT.search(question)
    if match is None:
        return None
    return question[: match.start(1)] + UNITS[match.group(1)] + question[match.end(1) :]


RULES: dict[str, Callable[[str], str | None]] = {
    "number": _number,
    "negation": _negation,
    "place": _swap(_PLACE, PLACES),
    "language": _swap(_LANGUAGE, LANGUAGES),
    "unit": _unit,
    "date": _swap(_MONTH, MONTHS),
}


def near_misses(questions: Iterable[str], per_rule: int) -> list[NearMiss]:
    """Up to ``per_rule`` pairs for each rule, from the questions in the order given (each question
    is used by one rule at most, so the rules' pairs do not share questions)."""
    out: dict[str, list[NearMiss]] = {rule: [] for rule in RULES}
    used: set[str] = set()
    for question in questions:
        question = question.strip()
        if not question or question in used or len(question) > 300:
            continue
        for rule, change in RULES.items():
            if len(out[rule]) >= per_rule:
                continue
            changed = change(question)
            if changed is not None and changed != question:
                out[rule].append(NearMiss(question, changed, rule))
                used.add(question)
                break
    return [pair for pairs in out.values() for pair in pairs]


def false_hits(
    pairs: list[NearMiss], embedder: Embedder, settings: CacheSection, verifier: PairVerifier | None = None
) -> dict[str, Any]:
    """Store q1, look q2 up through the real cache (as ``cache-quality`` does), per rule: how many
    near misses were served the other question's answer, at the configured settings."""
    from agent.benchmarks.cache_quality import Pair, run_cache_quality

    by_rule: dict[str, dict[str, int]] = {}
    for rule in RULES:
        group = [Pair(p.q1, p.q2, False) for p in pairs if p.rule == rule]
        if group:
            result = run_cache_quality(group, embedder, settings, verifier)
            by_rule[rule] = {"pairs": len(group), "false_hits": result["wrong_answers_served"]}
    total = sum(r["pairs"] for r in by_rule.values())
    wrong = sum(r["false_hits"] for r in by_rule.values())
    return {"pairs": total, "false_hits": wrong, "false_hit_rate": round(wrong / total, 4) if total else None,
            "by_rule": by_rule}  # fmt: skip
