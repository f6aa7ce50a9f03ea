"""Inline code is found in linear time, and exactly where the reference regex finds it."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.optimizer import markdown
from agent.optimizer.markdown import Span


def _reference_inline(text: str, start: int, end: int) -> list[Span]:
    """The definition: both patterns searched afresh after every span (quadratic, but plain)."""
    spans: list[Span] = []
    pos = start
    while pos < end:
        html = markdown._HTML_CODE.search(text, pos, end)
        ticks = markdown._INLINE.search(text, pos, end)
        found = min((m for m in (html, ticks) if m is not None), key=lambda m: m.start(), default=None)
        if found is None:
            break
        spans.append(Span(found.start(), found.end()))
        pos = found.end()
    return spans


PIECES = ["`", "``", "```", "a", "b c", " ", "\n", "\n\n", "\n \n", "<code>", "</code>", "<pre x>", "</pre>", "\t"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60))
def test_inline_code_spans_are_those_of_the_reference_pattern(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert markdown._inline_spans(text, 0, len(text)) == _reference_inline(text, 0, len(text))


def test_a_prompt_full_of_backticks_is_scanned_once() -> None:
    text = " ".join(f"use `x{i}` or ``y{i}``" for i in range(3000)) + " and a lone ``` at the end"
    scans: list[str] = []
    pattern = markdown._TICKS

    class Counting:
        def search(self, *args: object) -> re.Match[str] | None:
            scans.append("search")
            return pattern.search(*args)  # type: ignore[arg-type]

        def finditer(self, *args: object) -> object:
            scans.append("finditer")
            return pattern.finditer(*args)  # type: ignore[arg-type]

    markdown._TICKS = Counting()  # type: ignore[assignment]
    try:
        spans = markdown._inline_spans(text, 0, len(text))
    finally:
        markdown._TICKS = pattern
    assert len(spans) == 6000 and spans == _reference_inline(text, 0, len(text))
    assert scans == ["finditer"]  # the runs are listed once, not searched again after each span
