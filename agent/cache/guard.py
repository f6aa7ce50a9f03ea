"""Second-stage check for semantic-cache candidates: near-misses are not the same question.

Embeddings put "How do I learn Python?" and "How do I learn Java?" close together, and
"Is 2019 a leap year?" next to "Is 2020 a leap year?". A candidate above the similarity
threshold is served only when both questions carry the same numbers, the same negations, the
same names (capitalised words and acronyms), and no different units ("2 years" is not "2
months"). Pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019.-]*[A-Za-z]|[A-Za-z]")
_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*")
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "twenty": "20", "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "first": "1st", "second": "2nd", "third": "3rd", "half": "1/2", "double": "x2", "twice": "x2",
}  # fmt: skip
_NEGATIONS = {
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
    "can't", "won't", "don't", "doesn't", "didn't", "isn't", "aren't", "wasn't", "weren't",
    "shouldn't", "wouldn't", "couldn't", "haven't", "hasn't", "hadn't", "mustn't", "shan't",
}  # fmt: skip
_MONTHS = {
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday",
    "saturday", "sunday", "today", "tomorrow", "yesterday",
}  # fmt: skip
# Units, by the word's singular: a question in one and a different one in the other differ.
_UNITS = {
    "second": "second", "minute": "minute", "hour": "hour", "day": "day", "week": "week", "month": "month",
    "year": "year", "decade": "decade", "km": "km", "kilometer": "km", "kilometre": "km", "mile": "mile",
    "meter": "m", "metre": "m", "cm": "cm", "inch": "inch", "feet": "foot", "foot": "foot", "kg": "kg",
    "kilogram": "kg", "gram": "g", "pound": "pound", "lbs": "pound", "lb": "pound", "ton": "ton",
    "dollar": "dollar", "usd": "dollar", "rupee": "rupee", "inr": "rupee", "euro": "euro", "yen": "yen",
    "celsius": "celsius", "fahrenheit": "fahrenheit", "gb": "gb", "mb": "mb", "tb": "tb", "ghz": "ghz",
    "litre": "litre", "liter": "litre", "gallon": "gallon", "calorie": "calorie", "percent": "percent",
}  # fmt: skip
# Capitalised words that are not names (sentence starters, pronouns, question words).
_NOT_NAMES = {
    "i", "i'm", "i've", "i'd", "i'll", "what", "why", "how", "who", "whom", "whose", "when", "where",
    "which", "is", "are", "was", "were", "do", "does", "did", "can", "could", "should", "would",
    "will", "shall", "may", "might", "must", "have", "has", "had", "the", "a", "an", "if", "in",
    "on", "at", "to", "for", "of", "and", "or", "my", "your", "it", "this", "that", "there",
}  # fmt: skip


@dataclass(frozen=True)
class Facets:
    """What must agree between two questions for one's answer to serve the other."""

    numbers: frozenset[str]
    negations: int  # how many negating words: "not ... not" is not "... not"
    names: frozenset[str]
    units: frozenset[str]
    words: frozenset[str]  # every word, lower case, for matching names case-insensitively


def facets(text: str) -> Facets:
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'")
    words = _WORD.findall(text)
    lower = [w.lower().strip(".") for w in words]
    numbers = {n.replace(",", "") for n in _NUMBER.findall(text)}
    numbers |= {_NUMBER_WORDS[w] for w in lower if w in _NUMBER_WORDS}
    numbers |= {w for w in lower if w in _MONTHS}
    negations = sum(w in _NEGATIONS or w.endswith("n't") for w in lower)
    if re.match(r"\s*no\s*[,.!;:]", text, re.IGNORECASE):
        negations -= 1  # "No, it doesn't exist" says what "It does not exist" says
    units = {_UNITS[u] for u in (_singular(w) for w in lower) if u in _UNITS}
    names = set()
    for i, word in enumerate(words):
        is_acronym = len(word) >= 2 and word.isupper()
        starts_sentence = i == 0 or _starts_sentence(text, word)
        if (is_acronym or (word[0].isupper() and not starts_sentence)) and lower[i] not in _NOT_NAMES:
            names.add(lower[i])
    return Facets(frozenset(numbers), negations, frozenset(names), frozenset(units), frozenset(lower))


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _starts_sentence(text: str, word: str) -> bool:
    at = text.find(word)
    before = text[:at].rstrip()
    return not before or before[-1] in ".?!:;\"'(“"


def same_question(a: Facets, b: Facets) -> tuple[bool, str]:
    """(True, "") when nothing tells the two apart; else (False, why)."""
    if a.numbers != b.numbers:
        return False, "numbers or dates differ"
    if a.negations != b.negations:
        return False, "one is negated"
    if a.units and b.units and a.units != b.units:
        return False, "units differ"
    # A name in one question must appear in the other, capitalised or not.
    if not a.names <= b.words or not b.names <= a.words:
        return False, "names differ"
    return True, ""
