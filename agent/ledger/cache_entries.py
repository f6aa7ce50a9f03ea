"""Semantic-cache entries: the durable side of the cache (the index lives in memory)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from agent.ledger.database import Database, utc_now_iso


@dataclass(frozen=True)
class CacheEntry:
    id: int
    scope: str
    fingerprint: str
    model: str
    query_hash: str
    query: str
    answer: str
    finish_reason: str
    vector: bytes
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int | None
    created_at: str
    last_hit_at: str | None
    hit_count: int
    expires_at: str


_FIELDS = tuple(CacheEntry.__dataclass_fields__)
_NEW_FIELDS = _FIELDS[1:]  # all but id
_SELECT = f"SELECT {', '.join(_FIELDS)} FROM cache_entries"  # noqa: S608 - fixed names


@dataclass(frozen=True)
class CacheTotals:
    entries: int
    hits: int
    saved_micro_usd: int
    bytes: int


class CacheEntries:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, entry: CacheEntry) -> int:
        sql = (
            f"INSERT INTO cache_entries ({', '.join(_NEW_FIELDS)}) "  # noqa: S608 - fixed names
            f"VALUES ({', '.join('?' for _ in _NEW_FIELDS)})"
        )
        with self._db.transaction() as conn:
            cursor = conn.execute(sql, tuple(getattr(entry, f) for f in _NEW_FIELDS))
            return int(cursor.lastrowid or 0)

    def get(self, entry_id: int) -> CacheEntry | None:
        rows = self._db.query(f"{_SELECT} WHERE id = ?", (entry_id,))
        return CacheEntry(**rows[0]) if rows else None

    def live(self, now_iso: str) -> Iterator[CacheEntry]:
        """Every unexpired entry, oldest first (to rebuild the in-memory index at start)."""
        for row in self._db.query(f"{_SELECT} WHERE expires_at > ? ORDER BY id", (now_iso,)):
            yield CacheEntry(**row)

    def touch(self, entry_id: int) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE cache_entries SET hit_count = hit_count + 1, last_hit_at = ? WHERE id = ?",
                (utc_now_iso(), entry_id),
            )

    def delete(self, entry_ids: list[int]) -> None:
        with self._db.transaction() as conn:
            conn.executemany("DELETE FROM cache_entries WHERE id = ?", [(i,) for i in entry_ids])

    def expired_ids(self, now_iso: str) -> list[int]:
        rows = self._db.query("SELECT id FROM cache_entries WHERE expires_at <= ?", (now_iso,))
        return [int(r["id"]) for r in rows]

    def delete_scope(self, scope: str | None) -> int:
        with self._db.transaction() as conn:
            if scope is None:
                return conn.execute("DELETE FROM cache_entries").rowcount
            return conn.execute("DELETE FROM cache_entries WHERE scope = ?", (scope,)).rowcount

    def totals(self, scope: str | None = None) -> CacheTotals:
        where, params = ("WHERE scope = ?", (scope,)) if scope is not None else ("", ())
        row = self._db.query(
            "SELECT count(*) AS entries, coalesce(sum(hit_count), 0) AS hits,"  # noqa: S608
            " coalesce(sum(hit_count * coalesce(cost_micro_usd, 0)), 0) AS saved_micro_usd,"
            " coalesce(sum(length(vector) + length(answer) + length(query)), 0) AS bytes"
            f" FROM cache_entries {where}",
            params,
        )[0]
        return CacheTotals(**row)
