"""The cache service with the real MiniLM embedder and a real ledger file, without HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.cache.keys import CacheKey, normalize_query
from agent.cache.service import SemanticCache
from agent.ledger.cache_entries import CacheEntries
from agent.ledger.database import Database
from agent.models.catalog import find_asset
from agent.models.store import ModelStore
from agent.providers.onnx_embedder import MAX_TOKENS, OnnxEmbedder
from agent.settings import CacheSection
from tests.conftest import MODELS_DIR


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    store = ModelStore(MODELS_DIR)
    model, tokenizer = (find_asset(n) for n in ("minilm-l6-v2-int8", "minilm-l6-v2-tokenizer"))
    assert model is not None and tokenizer is not None
    return OnnxEmbedder(store.pull(model), store.pull(tokenizer))


def key(question: str, scope: str = "user:1") -> CacheKey:
    return CacheKey(scope, "f" * 64, question, normalize_query(question))


def test_embeddings_are_unit_vectors_and_batching_does_not_change_them(embedder: OnnxEmbedder) -> None:
    texts = ["How do I reset my password?", "x", "A much longer question about the pricing of GPUs in 2026?"]
    batch = embedder.embed(texts)
    one_by_one = np.vstack([embedder.embed([t]) for t in texts])
    assert batch.shape == (3, 384) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert np.allclose(batch, one_by_one, atol=1e-4)  # padding is masked out of the mean
    assert embedder.embed([]).shape == (0, 384)


def test_an_oversize_question_is_truncated_not_refused(embedder: OnnxEmbedder, tmp_path: Path) -> None:
    long = "Tell me everything about lighthouses. " * 2000
    [vector] = embedder.embed([long])
    assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)
    # Past the model's limit, more text changes nothing: the input was cut at MAX_TOKENS pieces.
    [longer] = embedder.embed([long + " And about submarines, too."])
    assert np.allclose(vector, longer, atol=1e-6) and MAX_TOKENS == 256
    cache = SemanticCache(CacheSection(), CacheEntries(Database.open(tmp_path / "c.db")), lambda: embedder)
    cache.store(key(long), vector, "m", "an answer", "stop", 1, 1, 1)
    assert cache.lookup(key(long)).status == "hit"


def test_lookup_stays_in_its_partition(embedder: OnnxEmbedder, tmp_path: Path) -> None:
    cache = SemanticCache(CacheSection(), CacheEntries(Database.open(tmp_path / "c.db")), lambda: embedder)
    question = "How do I reset my password?"
    cache.store(key(question, "user:1"), embedder.embed([question])[0], "m", "answer 1", "stop", 1, 1, 1)
    assert cache.lookup(key("How can I reset my password?", "user:1")).status == "hit"
    assert cache.lookup(key(question, "user:2")).status == "miss"
    assert cache.invalidate(1, frozenset({"user:2"})) is False
    assert cache.invalidate(1, frozenset({"user:1"})) is True
    assert cache.lookup(key(question, "user:1")).status == "miss"


def test_deleting_many_entries_compacts_the_index_and_keeps_the_rest(embedder: OnnxEmbedder, tmp_path: Path) -> None:
    cache = SemanticCache(CacheSection(), CacheEntries(Database.open(tmp_path / "c.db")), lambda: embedder)
    questions = [f"What is the population of city number {i}?" for i in range(300)]
    for q, v in zip(questions, embedder.embed(questions), strict=True):
        cache.store(key(q), v, "m", q.upper(), "stop", 1, 1, 1)
    for entry_id in range(1, 251):
        assert cache.invalidate(entry_id, None)
    assert len(cache) == 50
    found = cache.lookup(key(questions[299]))
    assert found.hit is not None and found.hit.entry.answer == questions[299].upper()
    assert cache.lookup(key(questions[0])).status == "miss"
