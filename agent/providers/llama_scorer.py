"""Token surprisal from a local GGUF model through llama.cpp: the scorer of lossy compression.

One prompt evaluation per window of `n_ctx` tokens with ``logits_all=True`` (the logits of every
position, not only the last), then a log-softmax per position in numpy. Long texts are scored
window by window, each window starting afresh after the model's BOS token.

Not thread-safe: `LossyCompressor` calls it from its one worker thread.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ModelError
from agent.optimizer.lossy import TokenSurprisal

log = logging.getLogger(__name__)

DEFAULT_N_CTX = 512  # scores buffer: n_ctx x vocabulary floats (SmolLM2: 512 x 49152 x 4 B = 100 MB)


class LlamaSurprisalScorer:
    def __init__(self, model_path: Path, *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None) -> None:
        from llama_cpp import Llama

        threads = n_threads or max(1, (os.cpu_count() or 2) - 1)
        if not model_path.is_file():
            raise ModelError(f"scoring model {model_path} does not exist")
        started = time.perf_counter()
        try:
            self._llm: Any = Llama(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=True,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"cannot load the scoring model {model_path} with llama.cpp: {e}") from e
        self._n_ctx = n_ctx
        bos = self._llm.token_bos()
        self._bos: int | None = bos if bos >= 0 else None
        log.info("loaded scoring model %s in %.2f s", model_path.name, time.perf_counter() - started)

    def surprisal(self, text: str) -> list[TokenSurprisal]:
        data = text.encode("utf-8")
        tokens: list[int] = self._llm.tokenize(data, add_bos=False, special=False)
        if not tokens:
            return []
        values = np.empty(len(tokens), dtype=np.float64)
        window = self._n_ctx - (1 if self._bos is not None else 0)
        for first in range(0, len(tokens), window):
            values[first : first + window] = self._window(tokens[first : first + window])
        return _with_offsets(text, data, [self._llm.detokenize([t]) for t in tokens], values)

    def _window(self, tokens: list[int]) -> np.ndarray:
        """-log p of each token given the ones before it in this window (inf for an unconditioned one)."""
        prompt = [self._bos, *tokens] if self._bos is not None else tokens
        self._llm.reset()
        self._llm.eval(prompt)
        logits = np.asarray(self._llm.scores[: len(prompt) - 1], dtype=np.float32)
        peak = logits.max(axis=1)
        log_total = np.log(np.exp(logits - peak[:, None]).sum(axis=1)) + peak
        targets = np.asarray(prompt[1:])
        out = log_total - logits[np.arange(len(targets)), targets]
        return out if self._bos is not None else np.concatenate(([np.inf], out))

    def close(self) -> None:
        self._llm.close()


def _with_offsets(text: str, data: bytes, pieces: list[bytes], values: np.ndarray) -> list[TokenSurprisal]:
    """Token byte pieces -> character spans of `text` (a piece may end inside a character)."""
    char_starts = []  # byte offset where each character starts
    offset = 0
    for char in text:
        char_starts.append(offset)
        offset += len(char.encode("utf-8"))
    out: list[TokenSurprisal] = []
    position = 0
    for piece, value in zip(pieces, values, strict=True):
        start_b, end_b = min(position, len(data)), min(position + len(piece), len(data))
        position += len(piece)
        start = bisect.bisect_right(char_starts, start_b) - 1
        end = bisect.bisect_left(char_starts, end_b) if end_b < len(data) else len(text)
        out.append(TokenSurprisal(max(start, 0), max(end, start + 1), float(value)))
    return out
