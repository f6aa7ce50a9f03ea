"""The cache verifier: the shipped cross-encoder, its calibration, and its place in a lookup."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.cache.keys import CacheKey, normalize_query
from agent.cache.service import SemanticCache
from agent.cache.verifier import (
    ARTIFACT_DIR,
    META_NAME,
    ONNX_NAME,
    Calibration,
    PairVerifier,
    VerifierArtifact,
    pair_hash,
)
from agent.errors import ModelError
from agent.ledger.cache_entries import CacheEntries
from agent.ledger.database import Database
from agent.models.catalog import find_asset
from agent.models.store import ModelStore
from agent.providers.onnx_embedder import OnnxEmbedder
from agent.settings import CacheSection
from tests.conftest import MODELS_DIR


@pytest.fixture(scope="module")
def tokenizer() -> Path:
    asset = find_asset("minilm-l6-v2-tokenizer")
    assert asset is not None
    return ModelStore(MODELS_DIR).pull(asset)


@pytest.fixture(scope="module")
def embedder(tokenizer: Path) -> OnnxEmbedder:
    model = find_asset("minilm-l6-v2-int8")
    assert model is not None
    return OnnxEmbedder(ModelStore(MODELS_DIR).pull(model), tokenizer)


@pytest.fixture(scope="module")
def verifier(tokenizer: Path) -> PairVerifier:
    return PairVerifier(VerifierArtifact.load(), tokenizer)


def key(question: str, scope: str = "user:1") -> CacheKey:
    return CacheKey(scope, "f" * 64, question, normalize_query(question))


def test_calibration_takes_the_lowest_threshold_from_which_every_stricter_one_is_precise_enough() -> None:
    table = Calibration(
        thresholds=np.array([0.1, 0.3, 0.5, 0.7, 0.9]),
        precision=np.array([0.80, 0.96, 0.93, 0.97, 0.99]),
        recall=np.array([0.6, 0.5, 0.4, 0.3, 0.1]),
        floor=0.75,
    )
    assert table.threshold_for(0.95) == 0.7  # 0.3 measured 0.96, but 0.5 above it dips to 0.93
    assert table.threshold_for(0.90) == 0.3
    assert table.threshold_for(0.5) == 0.1
    assert table.threshold_for(0.999) == 0.9  # none reaches it: the strictest
    assert table.at(0.7) == (0.97, 0.3)


def test_the_shipped_artifact_records_how_it_was_made_and_what_it_scored() -> None:
    artifact = VerifierArtifact.load()
    report = artifact.report
    assert report["command"].startswith("aifinops cache train-verifier --pairs qqp_pairs_dev.jsonl")
    assert len(report["data"]["qqp_pairs_dev.jsonl"]) == 64  # a sha256
    assert report["held_out_pairs"] > 1000 and report["pairs"]["train"] > 10_000
    assert [row["min_precision"] for row in report["held_out"]][:4] == [0.80, 0.85, 0.90, 0.95]
    # Stricter settings never buy more recall.
    recalls = [row["recall"] for row in report["held_out"]]
    assert recalls == sorted(recalls, reverse=True)
    assert np.all(np.diff(artifact.calibration.thresholds) > 0)
    assert 0 < artifact.calibration.threshold_for(0.95) < 1
    assert np.all(np.diff(artifact.trained_pairs.astype(np.float64)) >= 0) and len(artifact.trained_pairs) > 10_000


def test_pair_hashes_ignore_the_order_of_the_questions() -> None:
    assert pair_hash("a question?", "another one?") == pair_hash("another one? ", "a question?")
    assert pair_hash("a question?", "another one?") != pair_hash("a question?", "another one!")
    assert not VerifierArtifact.load().trained_on("How do aifinops verifiers work?", "What is a verifier?")


def test_a_damaged_model_file_or_a_foreign_artifact_is_refused(tmp_path: Path, tokenizer: Path) -> None:
    shutil.copy(ARTIFACT_DIR / META_NAME, tmp_path / META_NAME)
    (tmp_path / ONNX_NAME).write_bytes((ARTIFACT_DIR / ONNX_NAME).read_bytes()[:1000])
    with pytest.raises(ModelError, match="missing or damaged"):
        PairVerifier(VerifierArtifact.load(tmp_path), tokenizer)
    with np.load(ARTIFACT_DIR / META_NAME) as meta:
        np.savez(tmp_path / META_NAME, **{k: meta[k] for k in meta.files} | {"format": np.array(99)})
    with pytest.raises(ModelError, match="format 99"):
        VerifierArtifact.load(tmp_path)
    (tmp_path / META_NAME).write_bytes(b"not an npz")
    with pytest.raises(ModelError, match="cannot read"):
        VerifierArtifact.load(tmp_path)


def test_the_verifier_scores_paraphrases_above_questions_that_ask_something_else(verifier: PairVerifier) -> None:
    question = "How do I reset my password?"
    candidates = ["How can I reset my password?", "How do I reset my router?", "Why do I keep forgetting my password?"]
    scores = verifier.scores(question, candidates)
    threshold = verifier.calibration.threshold_for(CacheSection().min_precision)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    assert scores[0] >= threshold > max(scores[1], scores[2])
    # A score does not depend on which other candidates are scored with it.
    alone = [verifier.scores(question, [candidate])[0] for candidate in candidates]
    assert np.allclose(scores, alone, atol=1e-3)


def test_a_lookup_serves_a_verified_paraphrase_with_its_score(
    embedder: OnnxEmbedder, verifier: PairVerifier, tmp_path: Path
) -> None:
    db = Database.open(tmp_path / "c.db")
    cache = SemanticCache(CacheSection(), CacheEntries(db), lambda: embedder, verifier=lambda: verifier)
    question = "How do I reset my password?"
    cache.store(key(question), embedder.embed([question])[0], "m", "Use the link on the login page.", "stop", 1, 1, 1)
    found = cache.lookup(key("How can I reset my password?"))
    assert found.hit is not None and found.hit.verifier_score is not None
    assert found.hit.verifier_score >= verifier.calibration.threshold_for(CacheSection().min_precision)
    assert cache.lookup(key("How do I reset my router?")).status == "miss"
    exact = cache.lookup(key(question))
    assert exact.hit is not None and exact.hit.verifier_score is None  # an exact match needs no verifier
    db.close()


def test_the_setting_reaches_the_lookup_through_the_calibration(
    embedder: OnnxEmbedder, tokenizer: Path, tmp_path: Path
) -> None:
    question, paraphrase = "How do I reset my password?", "How can I reset my password?"
    verifier = PairVerifier(VerifierArtifact.load(), tokenizer)
    score = float(verifier.scores(paraphrase, [question])[0])
    thresholds = np.array([0.01, score - 1e-3, score + 1e-3, 0.9999])
    db = Database.open(tmp_path / "c.db")
    # The same measured table read at two settings: 0.9 is met from just below the score, 0.99
    # only from just above it.
    verifier.calibration = Calibration(thresholds, np.array([0.5, 0.9, 0.99, 1.0]), np.array([0.9, 0.5, 0.4, 0.0]), 0.5)
    for min_precision, expected in ((0.9, "hit"), (0.99, "miss")):
        cache = SemanticCache(
            CacheSection(min_precision=min_precision), CacheEntries(db), lambda: embedder, verifier=lambda: verifier
        )
        cache.store(key(question), embedder.embed([question])[0], "m", "answer", "stop", 1, 1, 1)
        assert cache.lookup(key(paraphrase)).status == expected
        cache.clear(None)
    db.close()


def test_when_the_verifier_cannot_load_only_exact_matches_are_served(embedder: OnnxEmbedder, tmp_path: Path) -> None:
    def broken() -> PairVerifier:
        raise ModelError("default_verifier.onnx is missing")

    db = Database.open(tmp_path / "c.db")
    cache = SemanticCache(CacheSection(), CacheEntries(db), lambda: embedder, verifier=broken)
    question = "How do I reset my password?"
    cache.store(key(question), embedder.embed([question])[0], "m", "answer", "stop", 1, 1, 1)
    assert cache.lookup(key(question)).status == "hit"
    assert cache.lookup(key("How can I reset my password?")).status == "miss"
    assert "missing" in cache.verifier_error
    db.close()
