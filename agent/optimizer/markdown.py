"""Where the code is in a Markdown-ish prompt: the spans no optimiser step may change.

Code is a fenced block (```` ``` ```` or ``~~~``, unclosed runs to the end), an indented block
(lines indented by 4 spaces or a tab after a blank line), inline code (backtick runs) and HTML
``<pre>``/``<code>`` elements. Anything that merely looks like code is treated as code: guarding
too much costs a few tokens, guarding too little changes a program.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_INDENTED = re.compile(r"( {4}|\t)")
_INLINE = re.compile(r"(?<!`)(`+)(?!`)((?:[^\n]|\n(?![^\S\n]*\n))+?)(?<!`)\1(?!`)")
_HTML_CODE = re.compile(r"<(pre|code)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)

# Placeholders for code while prose is rewritten: private-use characters no transform touches.
_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
PLACEHOLDER_CHARS = _OPEN + _CLOSE  # for a rewrite's character classes: never match these


@dataclass(frozen=True)
class Span:
    start: int
    end: int


def code_spans(text: str) -> list[Span]:
    """Code spans of `text`, sorted and disjoint. A block span excludes its last line's newline."""
    blocks = _block_spans(text)
    spans = list(blocks)
    cursor = 0
    for block in [*blocks, Span(len(text), len(text))]:
        spans.extend(_inline_spans(text, cursor, block.start))
        cursor = block.end
    return sorted(spans, key=lambda s: s.start)


def _block_spans(text: str) -> list[Span]:
    spans: list[Span] = []
    lines = _lines(text)
    i = 0
    previous_blank = True
    while i < len(lines):
        start, end = lines[i]
        line = text[start:end]
        fence = _FENCE_OPEN.match(line)
        if fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
            marker = fence.group(1)
            closing = re.compile(rf" {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[^\S\n]*")
            j = i + 1
            while j < len(lines) and not closing.fullmatch(text[lines[j][0] : lines[j][1]]):
                j += 1
            last = min(j, len(lines) - 1)
            spans.append(Span(start, lines[last][1]))
            i, previous_blank = last + 1, False
            continue
        if previous_blank and line.strip() and _INDENTED.match(line):
            last = i
            j = i + 1
            while j < len(lines):
                following = text[lines[j][0] : lines[j][1]]
                if following.strip() and not _INDENTED.match(following):
                    break
                if following.strip():
                    last = j
                j += 1
            spans.append(Span(start, lines[last][1]))
            i, previous_blank = last + 1, False
            continue
        previous_blank = not line.strip()
        i += 1
    return spans


def _inline_spans(text: str, start: int, end: int) -> list[Span]:
    spans: list[Span] = []
    pos = start
    while pos < end:
        html = _HTML_CODE.search(text, pos, end)
        ticks = _INLINE.search(text, pos, end)
        found = min((m for m in (html, ticks) if m is not None), key=lambda m: m.start(), default=None)
        if found is None:
            break
        spans.append(Span(found.start(), found.end()))
        pos = found.end()
    return spans


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of each line, without its newline."""
    out: list[tuple[int, int]] = []
    start = 0
    for match in re.finditer("\n", text):
        out.append((start, match.start()))
        start = match.end()
    out.append((start, len(text)))
    return out


def rewrite_prose(text: str, rewrite: Callable[[str], str]) -> str:
    """Apply `rewrite` to everything but the code of `text`; the code comes back unchanged.

    `rewrite` sees the prose with each code span replaced by a placeholder it must leave whole.
    Text that already holds the placeholder characters is returned as it is.
    """
    if _OPEN in text or _CLOSE in text:
        return text
    spans = code_spans(text)
    pieces: list[str] = []
    cursor = 0
    for number, span in enumerate(spans):
        pieces.append(text[cursor : span.start])
        pieces.append(f"{_OPEN}{number}{_CLOSE}")
        cursor = span.end
    pieces.append(text[cursor:])
    rewritten = rewrite("".join(pieces))
    if [int(n) for n in _PLACEHOLDER.findall(rewritten)] != list(range(len(spans))):
        return text  # a rewrite broke a placeholder: keep the text rather than risk the code
    codes = [text[s.start : s.end] for s in spans]
    return _PLACEHOLDER.sub(lambda m: codes[int(m.group(1))], rewritten)
