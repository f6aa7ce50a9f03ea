"""Lossy compression of long messages by token surprisal (the LLMLingua idea, word by word).

A small local model reads the text once; the words it found easiest to predict carry the least
information and are dropped until about `keep_ratio` of the tokens remain. Whole words are kept
or dropped, so the result stays readable. Never dropped: code (blocks and inline), any word with
a digit, names (capitalised words inside a sentence, acronyms, CamelCase, e-mail addresses,
URLs, paths and identifiers), negations, list labels ("A.", "-") at a line start, and the
question itself.

`select_words` is pure (a `SurprisalScorer` supplies the figures); `LossyCompressor` runs it with
its own scorer on one worker thread of its own.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from agent.errors import ModelError
from agent.optimizer.markdown import Span, code_spans
from agent.pricing.tokens import count_text_tokens

_WORD = re.compile(r"\S+")
_OPENING = "\"'([{<*_`\u201c\u2018\u00ab"
_CLOSING = "\"')]}>*_`\u201d\u2019\u00bb.,;:!?"
_SENTENCE_END = re.compile(r"[.!?][\"')\]\u201d\u2019\u00bb]*$")
_LIST_MARKER = re.compile(r"[A-Za-z][.)]|\(?[A-Za-z]\)|[-*+\u2022]")
_FIRST_PERSON = frozenset({"I", "I'm", "I've", "I'd", "I'll"})
_NEGATION = frozenset({"not", "no", "never", "none", "nor", "neither", "cannot", "without", "nothing", "nobody"})
_TECHNICAL = re.compile(r"@|://|^www\.|\w[._/\\]\w|\w::\w|^[#$%]\w")


@dataclass(frozen=True)
class TokenSurprisal:
    """One scorer token: its characters `text[start:end]` and -log p(token | text before), in nats."""

    start: int
    end: int
    surprisal: float


class SurprisalScorer(Protocol):
    """The seam to a language model: the surprisal of each token of a text."""

    def surprisal(self, text: str) -> list[TokenSurprisal]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Word:
    start: int
    end: int
    protected: bool
    cost: int  # scorer tokens
    score: float  # mean surprisal of its tokens (nats); inf when unknown


@dataclass(frozen=True)
class Compression:
    text: str
    tokens_before: int  # o200k tokens
    tokens_after: int
    words_dropped: int


def select_words(text: str, scores: list[TokenSurprisal], keep_ratio: float, *, question: bool) -> Compression:
    """Keep the protected words and the most surprising others, about `keep_ratio` of the tokens.

    `question`: `text` is the last user message, whose question (the last sentence ending in
    '?', or else the last sentence) is kept whole.
    """
    words = _words(text, scores, question)
    total = sum(w.cost for w in words)
    room = keep_ratio * total - sum(w.cost for w in words if w.protected)
    keep = {i for i, w in enumerate(words) if w.protected}
    ranked = sorted((i for i, w in enumerate(words) if not w.protected), key=lambda i: -words[i].score)
    for i in ranked:
        if words[i].cost > room:
            continue
        keep.add(i)
        room -= words[i].cost
    out = _join(text, words, keep)
    return Compression(out, count_text_tokens(text), count_text_tokens(out), len(words) - len(keep))


def _words(text: str, scores: list[TokenSurprisal], question: bool) -> list[_Word]:
    code = code_spans(text)
    asked = _question_span(text, code) if question else None
    units: list[tuple[int, int, bool]] = [(s.start, s.end, True) for s in code]
    cursor = 0
    for span in [*code, Span(len(text), len(text))]:
        units.extend((m.start(), m.end(), False) for m in _WORD.finditer(text, cursor, span.start))
        cursor = span.end
    units.sort()
    words: list[_Word] = []
    token = 0
    for n, (start, end, is_code) in enumerate(units):
        while token < len(scores) and scores[token].end <= start:
            token += 1
        covering = []
        j = token
        while j < len(scores) and scores[j].start < end:
            covering.append(scores[j].surprisal)
            j += 1
        previous = units[n - 1] if n else None
        protected = (
            is_code
            or (asked is not None and start < asked.end and end > asked.start)
            or _is_kept_word(text[start:end], _starts_sentence(text, previous, start))
            or _is_list_marker(text, start, end)
        )
        score = sum(covering) / len(covering) if covering else math.inf
        words.append(_Word(start, end, protected, max(1, len(covering)), score))
    return words


def protected_terms(text: str) -> list[str]:
    """The numbers and names of `text` outside code (what lossy compression promises to keep),
    stripped of surrounding punctuation; for checking that they survive."""
    code = code_spans(text)
    terms: list[str] = []
    previous: tuple[int, int, bool] | None = None
    cursor = 0
    for span in [*code, Span(len(text), len(text))]:
        for m in _WORD.finditer(text, cursor, span.start):
            word = m.group(0)
            bare = word.lstrip(_OPENING).rstrip(_CLOSING)
            negation = bare.lower() in _NEGATION or bare.lower().endswith("n't")
            if bare and not negation and _is_kept_word(word, _starts_sentence(text, previous, m.start())):
                terms.append(bare)
            previous = (m.start(), m.end(), False)
        cursor = span.end
    return terms


def _starts_sentence(text: str, previous: tuple[int, int, bool] | None, start: int) -> bool:
    if previous is None:
        return True
    return "\n" in text[previous[1] : start] or bool(_SENTENCE_END.search(text[previous[0] : previous[1]]))


def _is_kept_word(word: str, sentence_start: bool) -> bool:
    """Numbers, names, technical strings and negations: what a reader cannot guess back."""
    if any(c.isdigit() for c in word):
        return True
    bare = word.lstrip(_OPENING).rstrip(_CLOSING)
    if not bare:
        return False
    if bare.lower() in _NEGATION or bare.lower().endswith("n't"):
        return True
    if _TECHNICAL.search(bare):
        return True
    letters = [c for c in bare if c.isalpha()]
    if any(c.isupper() for c in letters[1:]):
        return True  # acronyms, CamelCase
    return bool(letters) and letters[0].isupper() and not sentence_start and bare not in _FIRST_PERSON


def _is_list_marker(text: str, start: int, end: int) -> bool:
    """An option or bullet label at the start of a line ("A.", "b)", "-"): the structure of a list."""
    return (start == 0 or text[start - 1] == "\n") and bool(_LIST_MARKER.fullmatch(text, start, end))


def _question_span(text: str, code: list[Span]) -> Span | None:
    """The last sentence ending in '?' outside code, or else the last sentence of the text."""
    in_code = [False] * len(text)
    for span in code:
        in_code[span.start : span.end] = [True] * (span.end - span.start)
    end = next((i + 1 for i in range(len(text) - 1, -1, -1) if text[i] == "?" and not in_code[i]), None)
    if end is None:
        end = len(text.rstrip())
        if end == 0:
            return None
    i = end - 2  # the character before the sentence's own end mark
    while i >= 0 and not (text[i] == "\n" or (text[i] in ".!?" and text[i + 1].isspace())):
        i -= 1
    start = i + 1
    while start < end and text[start].isspace():
        start += 1
    return Span(start, end)


def _join(text: str, words: list[_Word], keep: set[int]) -> str:
    """The kept words with the original spacing where nothing between them was dropped, else the
    strongest separator of the gap (paragraph break, line break, space)."""
    out: list[str] = []
    last: int | None = None
    for i in sorted(keep):
        word = words[i]
        if last is not None:
            if i == last + 1:
                out.append(text[words[last].end : word.start])
            else:
                gap = "".join(text[words[k].end : words[k + 1].start] for k in range(last, i))
                out.append("\n\n" if "\n\n" in gap else "\n" if "\n" in gap else " ")
        out.append(text[word.start : word.end])
        last = i
    return "".join(out)


class LossyCompressor:
    """Compresses long messages with a scorer opened lazily on its own single worker thread.

    `compress` may be called from any thread; calls queue for the one worker (llama.cpp
    contexts are not reentrant). It blocks: call it off the event loop.
    """

    def __init__(self, open_scorer: Callable[[], SurprisalScorer], *, min_tokens: int, keep_ratio: float) -> None:
        self.min_tokens = min_tokens
        self.keep_ratio = keep_ratio
        self._open_scorer = open_scorer
        self._scorer: SurprisalScorer | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optimizer-lossy")
        self._lock = threading.Lock()
        self._closed = False

    def compress(self, text: str, *, question: bool = False) -> Compression:
        """`text` shortened, or unchanged when it is under `min_tokens` tokens."""
        tokens = count_text_tokens(text)
        if tokens < self.min_tokens:
            return Compression(text, tokens, tokens, 0)
        if self._closed:
            raise ModelError("the lossy compressor is closed")
        return self._executor.submit(self._compress, text, question).result()

    def _compress(self, text: str, question: bool) -> Compression:
        if self._scorer is None:
            self._scorer = self._open_scorer()
        return select_words(text, self._scorer.surprisal(text), self.keep_ratio, question=question)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._executor.submit(self._close_scorer).result()
            self._executor.shutdown()

    def _close_scorer(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None
