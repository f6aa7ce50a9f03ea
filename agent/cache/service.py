"""The semantic cache: exact match first, then nearest stored questions, the guard, the verifier.

A lookup embeds the question, takes the nearest stored questions of the caller's partition above
a similarity floor, drops those the guard tells apart (a number, negation, name or unit differs)
and lets the verifier (a cross-encoder, ``verifier.py``) score the most similar of the rest,
which is served when it scores at least the threshold that ``cache.min_precision`` maps to.

Entries live in the ledger database (durable), vectors in a VectorIndex (memory), and a little
metadata per entry here (scope, fingerprint, expiry, recency, the stored question and its
facets) so that a lookup touches the database only for the answer it serves.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from agent.cache.guard import Facets, facets, same_question
from agent.cache.index import VectorIndex
from agent.cache.keys import CacheKey
from agent.cache.verifier import PairVerifier
from agent.errors import ModelError
from agent.ledger.cache_entries import CacheEntries, CacheEntry
from agent.ledger.database import utc_now_iso
from agent.settings import CacheSection

log = logging.getLogger(__name__)

_CANDIDATES = 5
_VERIFIED = 1  # candidates the verifier reads per lookup (about 2 ms each): the most similar one
FLOOR_WITHOUT_VERIFIER = 0.88  # the similarity alone decides (with the guard) when there is no verifier
_PURGE_EVERY_S = 60.0


class Embedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class CacheHit:
    entry: CacheEntry
    similarity: float  # 1.0 for an exact match
    verifier_score: float | None = None  # P(same question); None for an exact match or no verifier


@dataclass(frozen=True)
class CacheLookup:
    """What the cache said about one request."""

    status: Literal["hit", "miss", "bypass"]
    reason: str = ""  # why it was bypassed
    key: CacheKey | None = None
    vector: npt.NDArray[np.float32] | None = None
    hit: CacheHit | None = None


@dataclass
class _Meta:
    scope: str
    fingerprint: str
    query_hash: str
    question: str
    facets: Facets
    expires_epoch: float


@dataclass(frozen=True)
class CacheStats:
    entries: int
    hits: int
    saved_micro_usd: int
    bytes: int
    corrupt_rows_skipped: int


class SemanticCache:
    def __init__(
        self,
        settings: CacheSection,
        entries: CacheEntries,
        embedder: Callable[[], Embedder],
        dim: int = 384,
        verifier: Callable[[], PairVerifier] | None = None,
    ) -> None:
        self.settings = settings
        self._entries = entries
        self._embedder_factory = embedder
        self._embedder: Embedder | None = None
        self._verifier_factory = verifier if settings.verifier else None
        self._verifier: PairVerifier | None = None
        self.verifier_error = ""  # why the verifier could not load: then only exact matches are served
        self._index = VectorIndex(dim)
        self._meta: dict[int, _Meta] = {}
        self._exact: dict[tuple[str, str, str], int] = {}
        self._recency: OrderedDict[int, None] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self._last_purge = 0.0
        self.corrupt_rows_skipped = 0

    # -- start-up ----------------------------------------------------------------------------

    def load(self) -> int:
        """Rebuild the in-memory side from the database; corrupt rows are skipped and counted."""
        loaded = 0
        for entry in self._entries.live(utc_now_iso()):
            vector = _vector(entry.vector, self._index.dim)
            if vector is None:
                self.corrupt_rows_skipped += 1
                log.warning("cache entry %d has a corrupt vector: skipped", entry.id)
                continue
            self._remember(entry, vector)
            loaded += 1
        log.info("semantic cache: %d entries loaded", loaded)
        return loaded

    def warm_up(self) -> None:
        """Load the models and compile the search kernels (off the request path)."""
        from native.similarity import warm_up

        self.embedder().embed(["warm up"])
        if (verifier := self.verifier()) is not None:
            verifier.scores("warm up", ["warm up"])
        warm_up()

    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._embedder_factory()
            return self._embedder

    def verifier(self) -> PairVerifier | None:
        """The verifier, loaded on first use; None when there is none (or it cannot load)."""
        with self._lock:
            if self._verifier is None and self._verifier_factory is not None and not self.verifier_error:
                try:
                    self._verifier = self._verifier_factory()
                except ModelError as e:
                    self.verifier_error = str(e)
                    log.error("the cache verifier cannot load, so only exact matches are served: %s", e)
            return self._verifier

    def floor(self) -> float:
        """The similarity from which a stored question is a candidate."""
        if self.settings.threshold is not None:
            return self.settings.threshold
        verifier = self.verifier()
        return verifier.calibration.floor if verifier is not None else FLOOR_WITHOUT_VERIFIER

    # -- the request path (called from a worker thread) ----------------------------------------

    def lookup(self, key: CacheKey, vector: npt.NDArray[np.float32] | None = None) -> CacheLookup:
        """Look for a stored answer in the key's partition (embedding the question unless given)."""
        exact_id = self._exact.get((key.scope, key.fingerprint, key.query_hash))
        if vector is None:
            vector = self.embedder().embed([key.query])[0]
        if exact_id is not None and (hit := self._serve(exact_id, key, 1.0)) is not None:
            return CacheLookup("hit", key=key, vector=vector, hit=hit)
        if self._verifier_factory is not None and self.verifier() is None:
            return CacheLookup("miss", key=key, vector=vector)  # unverified hits are not served
        query_facets = facets(key.query)
        floor = self.floor()
        candidates: list[tuple[int, float, str]] = []
        for candidate in self._index.search(vector, key.partition, _CANDIDATES):
            if candidate.score < floor:
                break
            meta = self._meta.get(candidate.entry_id)
            if meta is None or not self._same_partition(meta, key):
                continue
            if self.settings.guard and not same_question(query_facets, meta.facets)[0]:
                continue
            candidates.append((candidate.entry_id, candidate.score, meta.question))
        for entry_id, similarity, verifier_score in self._verified(key.query, candidates):
            if (hit := self._serve(entry_id, key, similarity, verifier_score)) is not None:
                return CacheLookup("hit", key=key, vector=vector, hit=hit)
        return CacheLookup("miss", key=key, vector=vector)

    def _verified(
        self, query: str, candidates: list[tuple[int, float, str]]
    ) -> list[tuple[int, float, float | None]]:
        """The candidates that may be served, best first: (entry id, similarity, verifier score)."""
        verifier = self.verifier()
        if verifier is None:
            return [(entry_id, similarity, None) for entry_id, similarity, _ in candidates]
        if not candidates:
            return []
        candidates = candidates[:_VERIFIED]
        threshold = verifier.calibration.threshold_for(self.settings.min_precision)
        scores = verifier.scores(query, [question for _, _, question in candidates])
        ranked = sorted(zip(candidates, scores, strict=True), key=lambda pair: -pair[1])
        return [(entry_id, similarity, float(s)) for (entry_id, similarity, _), s in ranked if s >= threshold]

    def store(
        self,
        key: CacheKey,
        vector: npt.NDArray[np.float32],
        model: str,
        answer: str,
        finish_reason: str,
        input_tokens: int,
        output_tokens: int,
        cost_micro_usd: int | None,
    ) -> int:
        now = datetime.now(UTC)
        entry = CacheEntry(
            id=0,
            scope=key.scope,
            fingerprint=key.fingerprint,
            model=model,
            query_hash=key.query_hash,
            query=key.query,
            answer=answer,
            finish_reason=finish_reason,
            vector=np.asarray(vector, dtype=np.float32).tobytes(),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_micro_usd=cost_micro_usd,
            created_at=now.isoformat(timespec="microseconds"),
            last_hit_at=None,
            hit_count=0,
            expires_at=(now + timedelta(seconds=self.settings.ttl_s)).isoformat(timespec="microseconds"),
        )
        entry_id = self._entries.add(entry)
        with self._lock:
            self._remember(_with_id(entry, entry_id), vector)
            self._evict_over_limit()
            self._purge_expired_now_and_then()
        return entry_id

    # -- management ----------------------------------------------------------------------------

    def invalidate(self, entry_id: int, allowed_scopes: frozenset[str] | None) -> bool:
        """Delete an entry the caller may see (None: any). False when there is none such."""
        with self._lock:
            meta = self._meta.get(entry_id)
            if meta is None or (allowed_scopes is not None and meta.scope not in allowed_scopes):
                return False
            self._forget([entry_id])
        return True

    def clear(self, scope: str | None) -> int:
        with self._lock:
            doomed = [i for i, m in self._meta.items() if scope is None or m.scope == scope]
            self._forget(doomed)
        return len(doomed)

    def stats(self, scope: str | None) -> CacheStats:
        totals = self._entries.totals(scope)
        return CacheStats(totals.entries, totals.hits, totals.saved_micro_usd, totals.bytes, self.corrupt_rows_skipped)

    def __len__(self) -> int:
        return len(self._meta)

    # -- internals -----------------------------------------------------------------------------

    def _same_partition(self, meta: _Meta, key: CacheKey) -> bool:
        return meta.scope == key.scope and meta.fingerprint == key.fingerprint

    def _serve(
        self, entry_id: int, key: CacheKey, similarity: float, verifier_score: float | None = None
    ) -> CacheHit | None:
        with self._lock:
            meta = self._meta.get(entry_id)
            if meta is None or not self._same_partition(meta, key):
                return None
            if meta.expires_epoch <= time.time():
                self._forget([entry_id])
                return None
            self._recency.move_to_end(entry_id)
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        self._entries.touch(entry_id)
        return CacheHit(entry, similarity, verifier_score)

    def _remember(self, entry: CacheEntry, vector: npt.NDArray[np.float32]) -> None:
        with self._lock:
            expires = datetime.fromisoformat(entry.expires_at).timestamp()
            self._meta[entry.id] = _Meta(
                entry.scope, entry.fingerprint, entry.query_hash, entry.query, facets(entry.query), expires
            )
            self._exact[(entry.scope, entry.fingerprint, entry.query_hash)] = entry.id
            self._recency[entry.id] = None
            self._index.add(entry.id, _partition(entry), vector)

    def _forget(self, entry_ids: list[int]) -> None:
        if not entry_ids:
            return
        self._entries.delete(entry_ids)
        self._index.remove(entry_ids)
        for entry_id in entry_ids:
            meta = self._meta.pop(entry_id, None)
            self._recency.pop(entry_id, None)
            if meta is not None:
                exact = (meta.scope, meta.fingerprint, meta.query_hash)
                if self._exact.get(exact) == entry_id:
                    del self._exact[exact]

    def _evict_over_limit(self) -> None:
        over = len(self._meta) - self.settings.max_entries
        if over > 0:
            self._forget([entry_id for entry_id, _ in zip(self._recency, range(over), strict=False)])

    def _purge_expired_now_and_then(self) -> None:
        now = time.time()
        if now - self._last_purge < _PURGE_EVERY_S:
            return
        self._last_purge = now
        self._forget([i for i, m in self._meta.items() if m.expires_epoch <= now])


def _partition(entry: CacheEntry) -> int:
    return CacheKey(entry.scope, entry.fingerprint, entry.query, entry.query_hash).partition


def _with_id(entry: CacheEntry, entry_id: int) -> CacheEntry:
    return replace(entry, id=entry_id)


def _vector(blob: bytes, dim: int) -> npt.NDArray[np.float32] | None:
    if not isinstance(blob, bytes) or len(blob) != dim * 4:
        return None
    vector = np.frombuffer(blob, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if not np.all(np.isfinite(vector)) or not math.isclose(norm, 1.0, abs_tol=1e-2):
        return None
    return vector.copy()
