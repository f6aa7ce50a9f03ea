"""The cache's second stage: does a stored question ask what the new one asks?

Two mean-pooled vectors cannot see that "How do I learn Python?" and "How do I learn Python in a
week?" differ. A cross-encoder can: it reads both questions at once, so each word of one attends
to the words of the other. The shipped one is all-MiniLM-L6-v2 fine-tuned on question pairs
(``default_verifier.md`` says how, on what, and what it scored), int8 ONNX, run by ONNX Runtime.

Its calibration, measured on pairs it never trained on, is a table of (threshold, precision,
recall) for the whole lookup (similarity floor, guard, verifier); ``cache.min_precision`` picks
the lowest threshold whose precision, and that of every stricter one, reaches the setting.

The artifact is two files beside this module: ``default_verifier.onnx`` and
``default_verifier.npz`` (calibration, the hashes of the training pairs, the report as JSON, the
ONNX file's sha256, which is checked before it is loaded).
"""

from __future__ import annotations

import hashlib
import json
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import ModelError

ARTIFACT_DIR = Path(__file__).parent
ONNX_NAME = "default_verifier.onnx"
META_NAME = "default_verifier.npz"
FORMAT = 1
MAX_PAIR_TOKENS = 128  # both questions together, word pieces; longer pairs are cut, longest first
# The cache.min_precision settings that the training report and `bench cache-quality` show.
MIN_PRECISION_SWEEP = (0.80, 0.85, 0.90, 0.95, 0.97, 0.99)


@dataclass(frozen=True)
class Calibration:
    """Precision and recall of the whole lookup at each verifier threshold, on unseen pairs."""

    thresholds: npt.NDArray[np.float64]  # ascending probabilities
    precision: npt.NDArray[np.float64]
    recall: npt.NDArray[np.float64]
    floor: float  # the first-stage cosine floor the table was measured with

    def threshold_for(self, min_precision: float) -> float:
        """The lowest threshold from which every stricter one reaches ``min_precision``.

        None reaching it: the strictest threshold in the table (few hits, each one likely right).
        """
        # The precision guaranteed from each threshold upwards (the curve is not monotone).
        from_here_up = np.minimum.accumulate(self.precision[::-1])[::-1]
        reaching = np.flatnonzero(from_here_up >= min_precision)
        return float(self.thresholds[reaching[0] if len(reaching) else -1])

    def at(self, threshold: float) -> tuple[float, float]:
        """(precision, recall) measured at ``threshold``."""
        i = min(int(np.searchsorted(self.thresholds, threshold - 1e-12)), len(self.thresholds) - 1)
        return float(self.precision[i]), float(self.recall[i])


@dataclass(frozen=True)
class VerifierArtifact:
    onnx_path: Path
    onnx_sha256: str
    calibration: Calibration
    trained_pairs: npt.NDArray[np.uint64]  # pair_hash of every pair it was fitted on (sorted)
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path = ARTIFACT_DIR) -> VerifierArtifact:
        meta_path, onnx_path = directory / META_NAME, directory / ONNX_NAME
        try:
            with np.load(meta_path, allow_pickle=False) as meta:
                fmt = int(meta["format"])
                if fmt != FORMAT:
                    raise ModelError(f"{meta_path.name} is format {fmt}; this agent reads format {FORMAT}")
                calibration = Calibration(
                    np.asarray(meta["thresholds"], dtype=np.float64),
                    np.asarray(meta["precision"], dtype=np.float64),
                    np.asarray(meta["recall"], dtype=np.float64),
                    float(meta["floor"]),
                )
                artifact = cls(
                    onnx_path,
                    str(meta["onnx_sha256"]),
                    calibration,
                    np.asarray(meta["trained_pairs"], dtype=np.uint64),
                    json.loads(str(meta["report"])),
                )
        except (OSError, KeyError, ValueError) as e:
            raise ModelError(f"cannot read the cache verifier's artifact {meta_path}: {e}") from e
        if len(calibration.thresholds) == 0 or not np.all(np.diff(calibration.thresholds) >= 0):
            raise ModelError(f"{meta_path.name}: the calibration table is empty or out of order")
        return artifact

    def trained_on(self, q1: str, q2: str) -> bool:
        h = pair_hash(q1, q2)
        i = int(np.searchsorted(self.trained_pairs, h))
        return i < len(self.trained_pairs) and int(self.trained_pairs[i]) == h


def pair_hash(q1: str, q2: str) -> int:
    """A 64-bit name for an unordered pair of questions (so a benchmark can leave out trained pairs)."""
    a, b = sorted(unicodedata.normalize("NFKC", q).strip() for q in (q1, q2))
    return int.from_bytes(hashlib.sha256(f"{a}\x1f{b}".encode()).digest()[:8], "little")


class PairVerifier:
    """P(same question) for a question and stored candidates.

    One ONNX run per candidate, never padded: the shipped file was traced without a padding mask
    (PyTorch's exporter kept the all-ones path of the example input), so padding would change a
    score, and the calibration was measured on unpadded pairs. A lookup verifies two at most.
    """

    def __init__(self, artifact: VerifierArtifact, tokenizer_path: Path, threads: int = 1) -> None:
        from tokenizers import Tokenizer

        from agent.providers.onnx_embedder import cpu_session

        self.artifact = artifact
        self.calibration = artifact.calibration
        digest = hashlib.sha256(artifact.onnx_path.read_bytes()).hexdigest() if artifact.onnx_path.exists() else ""
        if digest != artifact.onnx_sha256:
            found, expected = digest or "none", artifact.onnx_sha256
            raise ModelError(f"{artifact.onnx_path} is missing or damaged (sha256 {found}, expected {expected})")
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
            self._session = cpu_session(artifact.onnx_path, threads)
        except Exception as e:
            raise ModelError(f"cannot load the cache verifier {artifact.onnx_path.name}: {e}") from e
        self._tokenizer.enable_truncation(max_length=MAX_PAIR_TOKENS)
        self._tokenizer.no_padding()
        self._lock = threading.Lock()

    def scores(self, query: str, candidates: list[str]) -> npt.NDArray[np.float64]:
        """P(candidate asks what query asks), one per candidate."""
        logits = np.zeros(len(candidates))
        for i, encoding in enumerate(self._tokenizer.encode_batch([(query, c) for c in candidates])):
            feed = {
                "input_ids": np.array([encoding.ids], dtype=np.int64),
                "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
            }
            with self._lock:
                logits[i] = float(self._session.run(None, feed)[0][0])
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))
