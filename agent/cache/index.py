"""The in-memory side of the cache: one int8 matrix of unit vectors (a scale per row), one label per row.

int8 rather than float16: a lookup scans every row, and half the bytes is half the time spent
reading them (and half the caches flushed, which the embedder and the verifier feel next). The
scores move by about 1e-3, well inside what the similarity floor and the verifier care about.

Rows are appended on store and marked deleted (label -1) on delete; the matrix is compacted when
a quarter of it is dead. A search scans every row and keeps only those whose label equals the
caller's partition, so its cost does not depend on whose entries exist (no timing oracle).
Thread-safe: searches and changes take one lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DELETED = -1
_MIN_CAPACITY = 1024


@dataclass(frozen=True)
class Candidate:
    entry_id: int
    score: float


class VectorIndex:
    def __init__(self, dim: int, capacity: int = _MIN_CAPACITY) -> None:
        self.dim = dim
        self._matrix = np.zeros((capacity, dim), dtype=np.int8)
        self._scales = np.zeros(capacity, dtype=np.float32)
        self._labels = np.full(capacity, DELETED, dtype=np.int64)
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._rows = 0  # rows in use, live or dead
        self._row_of: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row_of)

    def add(self, entry_id: int, label: int, vector: npt.NDArray[np.float32]) -> None:
        if vector.shape != (self.dim,):
            raise ValueError(f"vector of shape {vector.shape}, expected ({self.dim},)")
        with self._lock:
            if self._rows == len(self._labels):
                self._grow(2 * len(self._labels))
            row = self._rows
            from native.similarity import quantize_int8

            quantised, scale = quantize_int8(np.asarray(vector, dtype=np.float32)[None, :])
            self._matrix[row] = quantised[0]
            self._scales[row] = scale[0]
            self._labels[row] = label
            self._ids[row] = entry_id
            self._row_of[entry_id] = row
            self._rows += 1

    def remove(self, entry_ids: list[int]) -> None:
        with self._lock:
            for entry_id in entry_ids:
                row = self._row_of.pop(entry_id, None)
                if row is not None:
                    self._labels[row] = DELETED
            dead = self._rows - len(self._row_of)
            if dead > 64 and dead * 4 > self._rows:
                self._compact()

    def clear(self) -> None:
        with self._lock:
            self._labels[:] = DELETED
            self._rows = 0
            self._row_of.clear()

    def search(self, query: npt.NDArray[np.float32], label: int, k: int) -> list[Candidate]:
        from native.similarity import search

        with self._lock:
            rows = self._rows
            if rows == 0:
                return []
            found, scores = search(
                self._matrix[:rows], query, k, labels=self._labels[:rows], want=label, scales=self._scales[:rows]
            )
            return [
                Candidate(int(self._ids[row]), float(score))
                for row, score in zip(found, scores, strict=True)
                if row >= 0
            ]

    def _grow(self, capacity: int) -> None:
        matrix = np.zeros((capacity, self.dim), dtype=np.int8)
        scales = np.zeros(capacity, dtype=np.float32)
        labels = np.full(capacity, DELETED, dtype=np.int64)
        ids = np.zeros(capacity, dtype=np.int64)
        matrix[: self._rows] = self._matrix[: self._rows]
        scales[: self._rows] = self._scales[: self._rows]
        labels[: self._rows] = self._labels[: self._rows]
        ids[: self._rows] = self._ids[: self._rows]
        self._matrix, self._scales, self._labels, self._ids = matrix, scales, labels, ids

    def _compact(self) -> None:
        live = np.flatnonzero(self._labels[: self._rows] != DELETED)
        n = len(live)
        capacity = max(_MIN_CAPACITY, 2 * n)
        matrix = np.zeros((capacity, self.dim), dtype=np.int8)
        scales = np.zeros(capacity, dtype=np.float32)
        labels = np.full(capacity, DELETED, dtype=np.int64)
        ids = np.zeros(capacity, dtype=np.int64)
        matrix[:n] = self._matrix[live]
        scales[:n] = self._scales[live]
        labels[:n] = self._labels[live]
        ids[:n] = self._ids[live]
        self._matrix, self._scales, self._labels, self._ids, self._rows = matrix, scales, labels, ids, n
        self._row_of = {int(entry_id): row for row, entry_id in enumerate(ids[:n])}
