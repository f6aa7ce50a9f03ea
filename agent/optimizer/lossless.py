"""Lossless steps: the same prompt in fewer tokens, with nothing the model needs taken away.

- `normalise`: whitespace and markup (HTML tags and comments, bold markers, rules, runs of
  decoration). Code is never touched and no digit is removed or glued to another.
- `remove_repeated_blocks`: a long block that already appeared earlier in the conversation is
  replaced by a short reference.
- `trim_turns`: the oldest turns go first, until the history fits its token budget; every
  system message and the latest user turn stay.

Pure functions over `Message` tuples: no I/O, safe from any thread.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from agent.optimizer.markdown import PLACEHOLDER_CHARS, rewrite_prose, rewrite_prose_steps
from agent.pricing.tokens import count_text_tokens
from agent.providers.base import Message

REPEATED_BLOCK = "[same text as above]"
# A repeated block shorter than this stays: the reference itself costs about 5 tokens.
MIN_REPEATED_BLOCK_TOKENS = 32
_PER_MESSAGE_TOKENS = 3  # chat framing per message (agent.pricing.tokens)

_P = PLACEHOLDER_CHARS
_BLOCK_TAGS = "p|div|br|li|ul|ol|tr|table|thead|tbody|tfoot|blockquote|hr|section|article|header|footer|nav|main|aside"
_INLINE_TAGS = "a|b|i|u|s|em|strong|span|font|small|big|sup|sub|mark|abbr|center|td|th|label|strike|del|ins|img"
_TAG = re.compile(rf"</?(?:({_BLOCK_TAGS})|(?:{_INLINE_TAGS}))\b[^<>{_P}]*?/?>", re.IGNORECASE)
_COMMENT = re.compile(rf"<!--[^{_P}]*?-->")
# Each pattern below starts with a literal or a character class, so that the regex engine skips
# ahead to where a match can start (a leading lookbehind made it try every position: 2-5x slower
# over a long prompt). tests/unit/test_optimizer.py holds the plain forms they must agree with.
_BOLD = re.compile(r"\*\*(?<![\w*\\]\*\*)(?=[^\s*])([^\n]*?[^\s*\\])\*\*(?![\w*])")
_RULE = re.compile(r"^[^\S\n]*([-*_])(?:[^\S\n]*\1){2,}[^\S\n]*$", re.MULTILINE)
_DECORATION_RUN = re.compile(r"([-=_*~+.])\1{3,}")
# A run of two or more spaces or tabs, one whitespace other than a space (a tab, NBSP, ...), or a
# space at the end of a line: what `_space_run` shortens or removes, in one pass over the text.
_SPACE_RUN = re.compile(r"[^\S\n](?:(?<= )(?:[^\S\n]+|(?=\n)|\Z)|(?<! )[^\S\n]*)")
_BLANK_LINES = re.compile(r"\n\n\n+")
_NUMBERISH = frozenset("0123456789.,")
_BLANK_RUN = re.compile(r"\n(?:[^\S\n]*\n)+")


# -- normalisation ----------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Whitespace and markup normalisation of one message; code and digits come back as they were."""
    return normalise_steps(text)[1]


def normalise_steps(text: str) -> tuple[str, str]:
    """``text`` with its markup normalised, and with markup and whitespace (`normalise`): the
    optimiser reports the two steps apart. The code is set aside once for both."""
    if not _may_change(text):
        return text, text
    markup, whole = rewrite_prose_steps(text, (_strip_markup, _normalise_whitespace))
    for _ in range(3):  # a pass can expose new markup (e.g. a tag hid a rule): run to a fixpoint
        if whole == text or not _may_change(whole):
            break
        text, whole = whole, rewrite_prose(whole, _normalise_prose)
    return markup, whole


def _may_change(text: str) -> bool:
    """Whether a step could rewrite anything in ``text``: most short prompts ("hi") have nothing
    to normalise, and this costs a few searches of the text instead of finding its code first.

    Searching the whole text finds every match the steps could find in its prose: the prose is the
    text with code replaced by placeholders, which no pattern matches across (a placeholder ends
    where an inline span ends, on a backtick or ``>``, never on whitespace).
    """
    if "<" in text or "**" in text or _RULE.search(text) or _DECORATION_RUN.search(text):
        return True
    if "\r" in text or text[:1].isspace() or text[-1:].isspace():
        return True
    return bool(_SPACE_RUN.search(text) or _BLANK_LINES.search(text))


def _normalise_prose(text: str) -> str:
    return _normalise_whitespace(_strip_markup(text))


def _strip_markup(text: str) -> str:
    text = _COMMENT.sub(lambda m: _gap(m, ""), text)
    text = _TAG.sub(lambda m: _gap(m, "\n" if m.group(1) else ""), text)
    text = _BOLD.sub(_unbold, text)
    text = _RULE.sub("", text)
    return _DECORATION_RUN.sub(lambda m: m.group(1) * 3, text)


def _gap(match: re.Match[str], default: str) -> str:
    """What replaces a removed tag: `default`, or a space where the two sides would merge."""
    original, text = match.group(0), match.string
    if any(c.isdigit() for c in original):
        return original  # never delete a digit, not even one in an attribute
    if default:
        return default
    start, end = match.start(), match.end()
    # The neighbours are the text's, not another tag's: "3.14<i><i>3.14" must not become "3.143.14".
    while start > 0 and text[start - 1] == ">" and (j := text.rfind("<", 0, start - 1)) >= 0 and _markup_at(
        text, j, start
    ):
        start = j
    while end < len(text) and (after := _markup_at(text, end)) is not None:
        end = after
    left = text[start - 1] if start > 0 else " "
    right = text[end] if end < len(text) else " "
    if (left.isalnum() and right.isalnum()) or _would_join_number(left, right):
        return " "
    return ""


def _markup_at(text: str, at: int, ends: int | None = None) -> int | None:
    """Where a tag or comment starting at `at` ends (it must end at `ends` when given), else None."""
    for pattern in (_TAG, _COMMENT):
        found = pattern.match(text, at) if ends is None else pattern.fullmatch(text, at, ends)
        if found is not None:
            return found.end()
    return None


def _unbold(match: re.Match[str]) -> str:
    text, inner = match.string, match.group(1)
    left = text[match.start() - 1] if match.start() > 0 else " "
    right = text[match.end()] if match.end() < len(text) else " "
    if _would_join_number(left, inner[0]) or _would_join_number(inner[-1], right):
        return match.group(0)
    return inner


def _would_join_number(left: str, right: str) -> bool:
    return (left.isdigit() and right in _NUMBERISH) or (right.isdigit() and left in _NUMBERISH)


def _normalise_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n")
    text = _SPACE_RUN.sub(_space_run, text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def _space_run(match: re.Match[str]) -> str:
    """A run at the end of a line goes; one after a word becomes a space; indentation stays."""
    start, end, text = match.start(), match.end(), match.string
    if end == len(text) or text[end] == "\n":
        return ""
    return " " if start > 0 and not text[start - 1].isspace() else match.group(0)


# -- repeated blocks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Deduplicated:
    messages: tuple[Message, ...]
    blocks_replaced: int


def remove_repeated_blocks(messages: Sequence[Message], min_tokens: int = MIN_REPEATED_BLOCK_TOKENS) -> Deduplicated:
    """Replace each block (paragraph or code block) seen verbatim earlier by `REPEATED_BLOCK`.

    Only blocks of at least `min_tokens` tokens: a shorter one costs about what its reference does.
    """
    seen: set[str] = set()
    out: list[Message] = []
    replaced = 0
    for message in messages:
        pieces = split_blocks(message.content)  # block, separator, block, ...
        replaced_here = 0
        for i in range(0, len(pieces), 2):
            key = pieces[i].strip()
            if key in seen and _tokens(key) >= min_tokens:
                pieces[i] = REPEATED_BLOCK
                replaced_here += 1
            else:
                seen.add(key)
        replaced += replaced_here
        out.append(replace(message, content="".join(pieces)) if replaced_here else message)
    return Deduplicated(tuple(out), replaced)


def split_blocks(text: str) -> list[str]:
    """`text` cut at blank lines into [block, separator, block, ...]; a code block stays whole.

    Joining the pieces gives `text` back.
    """
    marker = "\ue002"
    if marker in text or not _BLANK_RUN.search(text):
        return [text]
    marked = rewrite_prose(text, lambda prose: _BLANK_RUN.sub(lambda m: f"{marker}{m.group(0)}{marker}", prose))
    return marked.split(marker)


def _tokens(text: str) -> int:
    return count_text_tokens(text)  # long texts are counted once (agent.pricing.tokens)


def message_tokens(message: Message) -> int:
    return _tokens(message.content) + _PER_MESSAGE_TOKENS


# -- trimming old turns -----------------------------------------------------------------------


@dataclass(frozen=True)
class Trimmed:
    messages: tuple[Message, ...]  # kept, repeated blocks already replaced
    turns_dropped: int
    messages_dropped: int
    tokens_dropped: int
    blocks_replaced: int


def trim_turns(messages: Sequence[Message], history_tokens: int, total_tokens: int | None = None) -> Trimmed:
    """Drop the oldest turns until the older turns fit `history_tokens` and the whole prompt
    fits `total_tokens` (when given); repeated blocks are replaced in what is kept.

    A turn is a user message with the messages that answer it. Every system message and the
    latest user turn always stay (even over budget), and a kept history never starts with an
    assistant message: messages before the first user message go with the oldest turn.
    """
    messages = tuple(messages)
    turns = _turns(messages)
    latest = turns[-1] if turns else []
    older = turns[:-1]
    for keep in range(len(older), -1, -1):
        kept_older = [i for turn in older[len(older) - keep :] for i in turn]
        kept = set(kept_older) | set(latest)
        chosen = [i for i, m in enumerate(messages) if m.role == "system" or i in kept]
        deduplicated = remove_repeated_blocks([messages[i] for i in chosen])
        by_index = dict(zip(chosen, deduplicated.messages, strict=True))
        history = sum(message_tokens(by_index[i]) for i in kept_older)
        total = sum(message_tokens(m) for m in deduplicated.messages) + _PER_MESSAGE_TOKENS
        if keep == 0 or (history <= history_tokens and (total_tokens is None or total <= total_tokens)):
            dropped = [m for i, m in enumerate(messages) if i not in by_index]
            return Trimmed(
                deduplicated.messages,
                turns_dropped=len(older) - keep,
                messages_dropped=len(dropped),
                tokens_dropped=sum(message_tokens(m) for m in dropped),
                blocks_replaced=deduplicated.blocks_replaced,
            )
    raise AssertionError("unreachable: keeping no older turn always fits")


def _turns(messages: Sequence[Message]) -> list[list[int]]:
    """Indexes of the non-system messages, grouped into turns that each start at a user message
    (messages before the first user message belong to the first turn)."""
    turns: list[list[int]] = []
    current: list[int] = []
    for i, message in enumerate(messages):
        if message.role == "system":
            continue
        if message.role == "user" and any(messages[j].role == "user" for j in current):
            turns.append(current)
            current = []
        current.append(i)
    if current:
        turns.append(current)
    return turns
