"""The semantic cache: exact match first, then nearest stored questions, then the guard.

Entries live in the ledger database (durable), vectors in a VectorIndex (memory), and a little
metadata per entry here (scope, fingerprint, expiry, recency, the stored question's facets) so
that a lookup touches the database only for the answer it serves.
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
from agent.ledger.cache_entries import CacheEntries, CacheEntry
from agent.ledger.database import utc_now_iso
from agent.settings import CacheSection

log = logging.getLogger(__name__)

_CANDIDATES = 5
_PURGE_EVERY_S = 60.0


class Embedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class CacheHit:
    entry: CacheEntry
    similarity: float  # 1.0 for an exact match


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
        self, settings: CacheSection, entries: CacheEntries, embedder: Callable[[], Embedder], dim: int = 384
    ) -> None:
        self.settings = settings
        self._entries = entries
        self._embedder_factory = embedder
        self._embedder: Embedder | None = None
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
        """Load the embedding model and compile the search kernels (off the request path)."""
        from native.similarity import warm_up

        self.embedder().embed(["warm up"])
        warm_up()

    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._embedder_factory()
            return self._embedder

    # -- the request path (called from a worker thread) ----------------------------------------

    def lookup(self, key: CacheKey, vector: npt.NDArray[np.float32] | None = None) -> CacheLookup:
        """Look for a stored answer in the key's partition (embedding the question unless given)."""
        exact_id = self._exact.get((key.scope, key.fingerprint, key.query_hash))
        if vector is None:
            vector = self.embedder().embed([key.query])[0]
        if exact_id is not None and (hit := self._serve(exact_id, key, 1.0)) is not None:
            return CacheLookup("hit", key=key, vector=vector, hit=hit)
        query_facets = facets(key.query)
        for candidate in self._index.search(vector, key.partition, _CANDIDATES):
            if candidate.score < self.settings.threshold:
                break
            meta = self._meta.get(candidate.entry_id)
            if meta is None or not self._same_partition(meta, key):
                continue
            if self.settings.guard and not same_question(query_facets, meta.facets)[0]:
                continue
            if (hit := self._serve(candidate.entry_id, key, candidate.score)) is not None:
                return CacheLookup("hit", key=key, vector=vector, hit=hit)
        return CacheLookup("miss", key=key, vector=vector)

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

    def _serve(self, entry_id: int, key: CacheKey, similarity: float) -> CacheHit | None:
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
        return CacheHit(entry, similarity)

    def _remember(self, entry: CacheEntry, vector: npt.NDArray[np.float32]) -> None:
        with self._lock:
            expires = datetime.fromisoformat(entry.expires_at).timestamp()
            self._meta[entry.id] = _Meta(entry.scope, entry.fingerprint, entry.query_hash, facets(entry.query), expires)
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
