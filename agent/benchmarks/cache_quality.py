"""`aifinops bench cache-quality`: precision and recall of the semantic cache on labelled pairs.

For each pair, an entry for ``q1`` is stored and ``q2`` is looked up through the real cache code
(embedder, index, guard, scope): each pair gets its own user scope, so ``q2`` can only be served
``q1``'s answer. A hit on a duplicate pair is a correct hit; a hit on a non-duplicate pair is a
wrong answer served. Figures for a threshold sweep, with the guard on and off.
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
from agent.chat import ChatCall
from agent.errors import InvalidRequest
from agent.identity import Caller
from agent.jsonlines import read_records
from agent.ledger.cache_entries import CacheEntries
from agent.ledger.database import Database
from agent.providers.base import ChatParams, Message
from agent.settings import CacheSection

SWEEP = (0.70, 0.75, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)


@dataclass(frozen=True)
class Pair:
    q1: str
    q2: str
    duplicate: bool


def read_pairs(path: Path, limit: int | None) -> list[Pair]:
    def pair(row: dict[str, Any]) -> Pair:
        return Pair(str(row["q1"]), str(row["q2"]), bool(row["duplicate"]))

    return list(islice(read_records(path, pair, "q1, q2, duplicate"), limit))


def run_cache_quality(
    pairs: list[Pair],
    embedder: Embedder,
    settings: CacheSection,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Similarity of each pair's best hit (guard on and off), then precision/recall per threshold."""
    lowest = min(min(SWEEP), settings.threshold)
    v1, v2 = [], []
    for start in range(0, len(pairs), 64):
        batch = pairs[start : start + 64]
        v1.append(embedder.embed([p.q1 for p in batch]))
        v2.append(embedder.embed([p.q2 for p in batch]))
        if progress:
            progress(len(batch))
    q1_vectors, q2_vectors = np.vstack(v1), np.vstack(v2)
    scores: dict[bool, list[float | None]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="aifinops-cache-quality-") as tmp:
        db = Database.open(Path(tmp) / "bench.db")
        for guard in (True, False):
            config = settings.model_copy(update={"threshold": lowest, "guard": guard, "max_entries": len(pairs) + 1})
            cache = SemanticCache(config, CacheEntries(db), lambda: embedder, embedder.dim)
            for i, pair in enumerate(pairs):
                caller = Caller(i + 1, f"pair{i}", "bench", False)
                cache.store(_key(config, caller, pair.q1, ChatCall), q1_vectors[i], "bench", "answer", "stop", 1, 1, 1)
                found = cache.lookup(_key(config, caller, pair.q2, ChatCall), q2_vectors[i])
                scores[guard].append(found.hit.similarity if found.hit else None)
            cache.clear(None)
        db.close()
    labels = np.array([p.duplicate for p in pairs])
    sweeps = {guard: [_point(t, scores[guard], labels) for t in SWEEP] for guard in (True, False)}
    chosen = _point(settings.threshold, scores[settings.guard], labels)
    return {
        "precision": chosen["precision"],
        "recall": chosen["recall"],
        "threshold": settings.threshold,
        "guard": settings.guard,
        "pairs": len(pairs),
        "duplicates": int(labels.sum()),
        "hits": chosen["hits"],
        "wrong_answers_served": chosen["wrong"],
        "sweep": sweeps[settings.guard],
        "sweep_guard_off" if settings.guard else "sweep_guard_on": sweeps[not settings.guard],
    }


def _key(settings: CacheSection, caller: Caller, question: str, chat_call: Any) -> Any:
    call = chat_call("bench", (Message("user", question),), ChatParams())
    key = cache_key(settings, caller, call, "bench")
    if isinstance(key, str):
        raise InvalidRequest(f"the cache skips this question: {key}")
    return key


def _point(threshold: float, scores: list[float | None], labels: np.ndarray) -> dict[str, Any]:
    hit = np.array([s is not None and s >= threshold - 1e-9 for s in scores], dtype=bool)
    correct = int((hit & labels).sum())
    hits = int(hit.sum())
    return {
        "threshold": threshold,
        "precision": round(correct / hits, 4) if hits else None,
        "recall": round(correct / max(int(labels.sum()), 1), 4),
        "hits": hits,
        "wrong": hits - correct,
    }
