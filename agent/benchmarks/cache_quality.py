"""`aifinops bench cache-quality`: precision and recall of the semantic cache on labelled pairs.

For each pair, an entry for ``q1`` is stored and ``q2`` is looked up through the real cache code
(embedder, index, guard, verifier, scope): each pair gets its own user scope, so ``q2`` can only
be served ``q1``'s answer. A hit on a duplicate pair is a correct hit; a hit on a non-duplicate
pair is a wrong answer served.

Pairs the verifier was fitted or calibrated on are left out of every figure (the artifact keeps
their hashes), so on its own training file this reports its held-out split, and on any other
file every pair. Figures: the configured settings; a sweep of ``cache.min_precision``; and, for
comparison, the similarity threshold alone (verifier off, guard on).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from agent.cache.keys import cache_key
from agent.cache.service import Embedder, SemanticCache
from agent.cache.verifier import MIN_PRECISION_SWEEP, PairVerifier
from agent.chat import ChatCall
from agent.errors import InvalidRequest
from agent.identity import Caller
from agent.jsonlines import read_records
from agent.ledger.cache_entries import CacheEntries
from agent.ledger.database import Database
from agent.providers.base import ChatParams, Message
from agent.settings import CacheSection

SWEEP = (0.70, 0.75, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)
_LOOSEST = 1e-6  # a min_precision every verifier threshold meets: lookups record every candidate's score


@dataclass(frozen=True)
class Pair:
    q1: str
    q2: str
    duplicate: bool


def read_pairs(path: Path, limit: int | None) -> list[Pair]:
    def pair(row: dict[str, Any]) -> Pair:
        return Pair(str(row["q1"]), str(row["q2"]), bool(row["duplicate"]))

    return list(islice(read_records(path, pair, "q1, q2, duplicate"), limit))


@dataclass(frozen=True)
class _Found:
    similarity: float
    verifier_score: float | None


def run_cache_quality(
    pairs: list[Pair],
    embedder: Embedder,
    settings: CacheSection,
    verifier: PairVerifier | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Store q1, look up q2, for every pair; precision and recall at the settings and around them."""
    verifier = verifier if settings.verifier else None
    given = len(pairs)
    if verifier is not None:
        pairs = [p for p in pairs if not verifier.artifact.trained_on(p.q1, p.q2)]
    v1, v2 = [], []
    for start in range(0, len(pairs), 64):
        batch = pairs[start : start + 64]
        v1.append(embedder.embed([p.q1 for p in batch]))
        v2.append(embedder.embed([p.q2 for p in batch]))
        if progress:
            progress(len(batch))
    vectors = (np.vstack(v1), np.vstack(v2)) if pairs else (np.zeros((0, 0)), np.zeros((0, 0)))
    labels = np.array([p.duplicate for p in pairs], dtype=bool)
    result: dict[str, Any] = {"pairs": len(pairs), "duplicates": int(labels.sum()), "guard": settings.guard}
    if verifier is not None:
        calibration = verifier.calibration
        loose = settings.model_copy(update={"min_precision": _LOOSEST})
        found = _lookups(pairs, vectors, embedder, loose, verifier)
        threshold = calibration.threshold_for(settings.min_precision)
        chosen = _point(_verified(found, threshold), labels)
        result |= {
            "verifier": True,
            "min_precision": settings.min_precision,
            "decision_threshold": round(threshold, 4),
            "floor": settings.threshold if settings.threshold is not None else calibration.floor,
            "left_out_as_trained": given - len(pairs),
            "sweep": [
                {"min_precision": mp, "decision_threshold": round(t, 4)}
                | _point(_verified(found, t), labels)
                for mp in MIN_PRECISION_SWEEP
                for t in [calibration.threshold_for(mp)]
            ],
        }
    else:
        chosen = {}
        result["verifier"] = False
    lowest = min(SWEEP)
    plain = settings.model_copy(update={"threshold": lowest, "verifier": False})
    similarity_only = _lookups(pairs, vectors, embedder, plain, None)
    floor = settings.threshold if settings.threshold is not None else 0.88
    result["similarity_only"] = [
        {"threshold": t} | _point(_similar(similarity_only, t), labels) for t in SWEEP
    ]
    if verifier is None:
        chosen = _point(_similar(similarity_only, floor), labels)
        result["threshold"] = floor
    result |= {
        "precision": chosen["precision"],
        "recall": chosen["recall"],
        "hits": chosen["hits"],
        "wrong_answers_served": chosen["wrong"],
    }
    return result


def _lookups(
    pairs: list[Pair],
    vectors: tuple[np.ndarray, np.ndarray],
    embedder: Embedder,
    settings: CacheSection,
    verifier: PairVerifier | None,
) -> list[_Found | None]:
    """What looking q2 up after storing q1 found, pair by pair (None: a miss)."""
    found: list[_Found | None] = []
    with tempfile.TemporaryDirectory(prefix="aifinops-cache-quality-") as tmp:
        db = Database.open(Path(tmp) / "bench.db")
        config = settings.model_copy(update={"max_entries": len(pairs) + 1})
        cache = SemanticCache(
            config, CacheEntries(db), lambda: embedder, embedder.dim, (lambda: verifier) if verifier else None
        )
        for i, pair in enumerate(pairs):
            caller = Caller(i + 1, f"pair{i}", "bench", False)
            cache.store(_key(config, caller, pair.q1, ChatCall), vectors[0][i], "bench", "answer", "stop", 1, 1, 1)
            lookup = cache.lookup(_key(config, caller, pair.q2, ChatCall), vectors[1][i])
            found.append(_Found(lookup.hit.similarity, lookup.hit.verifier_score) if lookup.hit else None)
        cache.clear(None)
        db.close()
    return found


def _key(settings: CacheSection, caller: Caller, question: str, chat_call: Any) -> Any:
    call = chat_call("bench", (Message("user", question),), ChatParams())
    key = cache_key(settings, caller, call, "bench")
    if isinstance(key, str):
        raise InvalidRequest(f"the cache skips this question: {key}")
    return key


def _verified(found: list[_Found | None], threshold: float) -> np.ndarray:
    """Which lookups a verifier threshold serves (the lookups recorded every candidate's score)."""
    return np.array([f is not None and f.verifier_score is not None and f.verifier_score >= threshold for f in found])


def _similar(found: list[_Found | None], threshold: float) -> np.ndarray:
    return np.array([f is not None and f.similarity >= threshold - 1e-9 for f in found], dtype=bool)


def _point(hit: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    correct = int((hit & labels).sum())
    hits = int(hit.sum())
    return {
        "precision": round(correct / hits, 4) if hits else None,
        "recall": round(correct / max(int(labels.sum()), 1), 4),
        "hits": hits,
        "wrong": hits - correct,
    }
