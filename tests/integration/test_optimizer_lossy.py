"""Lossy compression with the real SmolLM2 GGUF through llama.cpp."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ModelError
from agent.models.store import ModelStore
from agent.optimizer import PromptOptimizer
from agent.optimizer.lossy import LossyCompressor, protected_terms
from agent.pricing.tokens import count_text_tokens
from agent.providers.base import Message
from agent.providers.llama_scorer import LlamaSurprisalScorer
from agent.settings import OptimizerSection
from tests.conftest import MODELS_DIR

_PASSAGE = (
    "In the spring of 1998 the small town of Millbrook decided to rebuild its old railway station. "
    "The council asked Jane Whitfield, an engineer from Leeds, to lead the project, and she hired a "
    "team of 14 people. The budget was 2.3 million pounds, which was much more than anyone in the "
    "town had expected, and the local newspaper wrote many long articles about the cost of the work. "
    "The station had been closed for a very long time, and most of the people who lived in the town "
    "did not remember the trains at all. The work took 26 months, and the first train arrived on a "
    "cold and quiet morning in the middle of the winter. To check the timetable, run `make timetable "
    "--from 1998`, which prints every train of the first year.\n\n"
    "```python\ndef fare(distance_km):\n    return 2.5 + 0.12 * distance_km\n```\n\n"
)
_QUESTION = "How many people were in the team that Jane Whitfield hired?"


@pytest.fixture(scope="module")
def scorer(chat_model_path: Path) -> Iterator[LlamaSurprisalScorer]:
    s = LlamaSurprisalScorer(chat_model_path, n_ctx=256)
    yield s
    s.close()


def test_surprisal_covers_the_text_token_by_token(scorer: LlamaSurprisalScorer) -> None:
    text = "The cat sat on the mat. Ünïcödé 🎉 and numbers 12345."
    scores = scorer.surprisal(text)
    assert scores[0].start == 0 and scores[-1].end == len(text)
    assert all(a.end <= b.end and a.start <= b.start for a, b in itertools.pairwise(scores))
    assert all(0 <= s.surprisal < 50 for s in scores)
    # A predictable continuation is less surprising than a random one.
    by_word = {text[s.start : s.end].strip(): s.surprisal for s in scores}
    assert by_word["mat"] < by_word["cat"]


def test_a_text_longer_than_the_window_is_scored_window_by_window(scorer: LlamaSurprisalScorer) -> None:
    text = _PASSAGE * 3  # about 3 x 200 tokens, over the 256-token window
    scores = scorer.surprisal(text)
    assert len(scores) > 256
    assert scores[-1].end == len(text)
    assert all(s.surprisal >= 0 for s in scores)


def test_lossy_keeps_numbers_names_code_and_the_question(scorer: LlamaSurprisalScorer) -> None:
    text = f"{_PASSAGE}{_QUESTION}"
    compressor = LossyCompressor(lambda: scorer, min_tokens=64, keep_ratio=0.5)
    result = compressor.compress(text, question=True)
    out = result.text
    assert result.tokens_before == count_text_tokens(text)
    for term in protected_terms(text):
        assert term in out
    for number in ("1998", "14", "2.3", "26"):
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d.])", out)
    assert "`make timetable --from 1998`" in out
    assert "```python\ndef fare(distance_km):\n    return 2.5 + 0.12 * distance_km\n```" in out
    assert out.endswith(_QUESTION)
    assert "not" in out.split()
    ratio = result.tokens_after / result.tokens_before
    assert 0.45 <= ratio <= 0.8  # the protected words hold it above the 0.5 asked for


def test_the_optimizer_compresses_long_messages_and_leaves_short_ones(tmp_path: Path) -> None:
    settings = OptimizerSection(lossy=True, lossy_min_tokens=64, lossy_keep_ratio=0.5)
    optimizer = PromptOptimizer(settings, ModelStore(MODELS_DIR))
    try:
        short = (Message("user", "What is the capital of France?"),)
        assert optimizer.optimize(short).messages == short
        conversation = (
            Message("system", ("You answer questions about documents. " * 20).strip()),
            Message("user", f"{_PASSAGE}{_QUESTION}"),
        )
        result = optimizer.optimize(conversation)
    finally:
        optimizer.close()
    assert result.steps == ("lossy",)
    assert result.messages[0] == conversation[0]  # system prompts are never compressed
    assert result.messages[1].content.endswith(_QUESTION)
    assert result.tokens_after < 0.85 * result.tokens_before
    assert "lossy: 1 message" in result.note


def test_a_missing_scoring_model_is_a_model_error(tmp_path: Path) -> None:
    settings = OptimizerSection(lossy=True, lossy_min_tokens=32, scoring_model=str(tmp_path / "absent.gguf"))
    optimizer = PromptOptimizer(settings, ModelStore(tmp_path / "models"))
    try:
        with pytest.raises(ModelError, match=r"absent\.gguf"):
            optimizer.optimize((Message("user", _PASSAGE),))
    finally:
        optimizer.close()


def test_a_corrupt_scoring_model_is_a_model_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 4096)
    settings = OptimizerSection(lossy=True, lossy_min_tokens=32, scoring_model=str(corrupt))
    optimizer = PromptOptimizer(settings, ModelStore(tmp_path / "models"))
    try:
        with pytest.raises(ModelError, match="cannot load the scoring model"):
            optimizer.optimize((Message("user", _PASSAGE),))
        # The optimiser stays usable: lossless steps on a short prompt still run.
        assert optimizer.optimize((Message("user", "hi   there"),)).messages == (Message("user", "hi there"),)
    finally:
        optimizer.close()
