"""Similarity-weighted nearest neighbours: how often the weak tier sufficed on prompts like this one.

The score of a query is the weighted mean label of its ``k`` most similar training prompts
(cosine similarity of unit embeddings), each weighted by ``exp(gamma * (sim - best_sim))``: the
closest neighbours count most, the far end of the neighbourhood blends towards its base rate
(RouteLLM's similarity-weighted ranking, over labels instead of Elo scores). Plain numpy: at a few
thousand stored prompts one query is one matrix-vector product.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I8 = npt.NDArray[np.int8]

_CHUNK_ROWS = 512  # queries scored at once: bounds the (queries, stored) similarity block to a few MB


def quantize_int8(vectors: F32) -> tuple[I8, F32]:
    """Rows as int8 with one float32 scale each, ``row ~= int8 * scale``."""
    peak = np.abs(vectors).max(axis=1) if len(vectors) else np.zeros(0, dtype=np.float32)
    scale = (np.maximum(peak, 1e-12) / 127).astype(np.float32)
    return np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8), scale


def dequantize_int8(rows: I8, scale: F32) -> F32:
    return np.ascontiguousarray(rows.astype(np.float32) * scale[:, None], dtype=np.float32)


def neighbour_score(stored: F32, labels: F32, queries: F32, k: int, gamma: float, leave_self_out: bool = False) -> F32:
    """(m,) weighted mean of ``labels`` over each query's ``k`` nearest ``stored`` rows.

    ``leave_self_out``: the queries are the stored rows themselves (same order), and each row is
    kept out of its own neighbourhood, so that a model stacked on this score trains on the values
    it will see for unseen prompts.
    """
    k = min(k, len(stored) - (1 if leave_self_out else 0))
    if k < 1:
        raise ValueError("neighbour_score needs at least one stored row besides the query")
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), _CHUNK_ROWS):
        sims = queries[start : start + _CHUNK_ROWS] @ stored.T
        if leave_self_out:
            rows = np.arange(len(sims))
            sims[rows, rows + start] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        weights = np.exp(gamma * (top_sims - top_sims.max(axis=1, keepdims=True)))
        out[start : start + len(sims)] = (weights * labels[top]).sum(axis=1) / weights.sum(axis=1)
    return out
