"""Where the code is in a Markdown-ish prompt: the spans no optimiser step may change.

Code is a fenced block (```` ``` ```` or ``~~~``, unclosed runs to the end), an indented block
(lines indented by 4 spaces or a tab after a blank line), inline code (backtick runs) and HTML
``<pre>``/``<code>`` elements. Anything that merely looks like code is treated as code: guarding
too much costs a few tokens, guarding too little changes a program.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.textmemo import TextMemo

_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_INDENTED = re.compile(r"( {4}|\t)")
_INLINE = re.compile(r"(?<!`)(`+)(?!`)((?:[^\n]|\n(?![^\S\n]*\n))+?)(?<!`)\1(?!`)")
_HTML_CODE = re.compile(r"<(pre|code)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TICKS = re.compile(r"``*")  # `+, written to start with a literal: the engine then skips to each backtick
_SPANS: TextMemo[tuple[Span, ...]] = TextMemo()
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")

# Placeholders for code while prose is rewritten: private-use characters no transform touches.
_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
PLACEHOLDER_CHARS = _OPEN + _CLOSE  # for a rewrite's character classes: never match these


@dataclass(frozen=True)
class Span:
    start: int
    end: int


def code_spans(text: str) -> list[Span]:
    """Code spans of `text`, sorted and disjoint. A block span excludes its last line's newline.

    Worked out once per long text: the optimiser's steps ask for the same text's spans several
    times, and a long system prompt comes again with every call."""
    known = _SPANS.get(text)
    if known is None:
        known = tuple(_code_spans(text))
        _SPANS.put(text, known)
    return list(known)


def _code_spans(text: str) -> list[Span]:
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
    """Inline code (`x`, <code>x</code>) between ``start`` and ``end``, left to right: the spans
    ``_INLINE`` and ``_HTML_CODE`` find when searched afresh after each span, in O(n log n).

    Backtick code is a run of N backticks, text without a blank line, then the next run of exactly
    N. The runs are listed once and indexed by width, so each opener finds its closer by bisection:
    searching the lazy per-character pattern afresh after every span made a 10k-token prompt full
    of backticks cost 22 ms, and 100k tokens much more."""
    runs = [m.span() for m in _TICKS.finditer(text, start, end)]
    by_width: dict[int, list[int]] = {}
    for run_start, run_end in runs:
        by_width.setdefault(run_end - run_start, []).append(run_start)
    # Where code cannot run on: the second newline of each blank line.
    blanks = [m.end() - 1 for m in _BLANK_LINE.finditer(text, start, end)]
    spans: list[Span] = []
    pos, run = start, 0
    html = _HTML_CODE.search(text, pos, end)
    ticks: Span | None = None
    while pos < end:
        if html is not None and html.start() < pos:
            html = _HTML_CODE.search(text, pos, end)
        if ticks is None or ticks.start < pos:
            ticks, run = _next_backtick_code(text, runs, run, pos, by_width, blanks)
        if html is not None and (ticks is None or html.start() <= ticks.start):  # a tie: HTML, as the regexes did
            first = Span(html.start(), html.end())
        elif ticks is not None:
            first = ticks
        else:
            break
        spans.append(first)
        pos = first.end
    return spans


def _next_backtick_code(
    text: str, runs: list[tuple[int, int]], run: int, pos: int, by_width: dict[int, list[int]], blanks: list[int]
) -> tuple[Span | None, int]:
    """The first backtick code span opening at or after ``pos``, and where the scan of ``runs`` is."""
    while run < len(runs):
        opener_start, opener_end = runs[run]
        if opener_start < pos or (opener_start > 0 and text[opener_start - 1] == "`"):
            run += 1  # passed, or the tail of a run that began before the range
            continue
        width = opener_end - opener_start
        blank = bisect.bisect_left(blanks, opener_end + 1)
        stop = blanks[blank] if blank < len(blanks) else len(text)
        same = by_width[width]
        closer = bisect.bisect_right(same, opener_start)
        if closer < len(same) and same[closer] < stop:
            return Span(opener_start, same[closer] + width), run
        run += 1
    return None, run


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
    return rewrite_prose_steps(text, (rewrite,))[0]


def rewrite_prose_steps(text: str, rewrites: Sequence[Callable[[str], str]]) -> list[str]:
    """`rewrite_prose` with the rewrites applied one after another to the same prose: the text
    after each (the code found and set aside once for all of them)."""
    if _OPEN in text or _CLOSE in text:
        return [text] * len(rewrites)
    spans = code_spans(text)
    pieces: list[str] = []
    cursor = 0
    for number, span in enumerate(spans):
        pieces.append(text[cursor : span.start])
        pieces.append(f"{_OPEN}{number}{_CLOSE}")
        cursor = span.end
    pieces.append(text[cursor:])
    prose = "".join(pieces)
    codes = [text[s.start : s.end] for s in spans]
    out: list[str] = []
    for rewrite in rewrites:
        prose = rewrite(prose)
        if [int(n) for n in _PLACEHOLDER.findall(prose)] != list(range(len(spans))):
            out.append(text)  # a rewrite broke a placeholder: keep the text rather than risk the code
        else:
            out.append(_PLACEHOLDER.sub(lambda m: codes[int(m.group(1))], prose) if codes else prose)
    return out
