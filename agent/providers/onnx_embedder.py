"""Sentence embeddings with ONNX Runtime: all-MiniLM-L6-v2 (int8) by default.

Mean pooling over the attention mask, then L2 normalisation, so inner product = cosine.
Inputs longer than the model's limit (256 word pieces) are truncated. One session, guarded by
a lock; spinning thread pools are turned off (they doubled latencies on 2 cores).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import ModelError

MAX_TOKENS = 256
# Texts per ONNX run when embedding many at once, and at most this many word pieces (long texts
# go fewer at a time: the session's lock is held for one run, and the cache waits behind it).
BATCH_SIZE = 32
BATCH_TOKENS = 2048


def cpu_session(model_path: Path, threads: int) -> Any:
    """An ONNX Runtime session on the CPU: ``threads`` for one operator, none spinning (spinning
    pools competing on 2 cores doubled latencies), one operator at a time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


class OnnxEmbedder:
    def __init__(self, model_path: Path, tokenizer_path: Path, threads: int = 1) -> None:
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
            self._session = cpu_session(model_path, threads)
        except Exception as e:
            raise ModelError(f"cannot load the embedding model {model_path.name}: {e}") from e
        self._tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self._tokenizer.enable_padding()
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """(len(texts), dim) float32, each row of unit length."""
        return self.embed_counted(texts)[0]

    def embed_counted(
        self, texts: list[str], batch_size: int = BATCH_SIZE
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """The vectors, and the word pieces each text was read as (after truncation).

        Texts run in batches of up to ``batch_size`` (and ``BATCH_TOKENS`` word pieces) of similar
        length: less padding to compute, and the lock is let go between batches, so a long
        request does not stall the cache's lookups. The rows come back in the order of ``texts``.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros(0, dtype=np.int64)
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        lengths = mask.sum(axis=1)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort(lengths, kind="stable")  # shortest first
        start, batch_size = 0, max(batch_size, 1)
        while start < len(texts):
            widest = int(lengths[order[min(start + batch_size, len(texts)) - 1]])
            rows = order[start : start + max(1, min(batch_size, BATCH_TOKENS // max(widest, 1)))]
            width = max(int(lengths[rows].max()), 1)
            out[rows] = self._run(ids[rows, :width], mask[rows, :width])
            start += len(rows)
        return out, lengths

    def _run(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        feed: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        with self._lock:
            hidden = self._session.run(None, feed)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.ascontiguousarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)
