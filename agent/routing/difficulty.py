"""The learned difficulty score: nearest neighbours over the MiniLM embedding, stacked with features.

It predicts the probability that the weaker tier's answer is good enough (the weak model was
right, or the strong one was wrong too), in two steps:

1. the similarity-weighted share of the ``k`` most similar training prompts where the weak tier
   sufficed (``knn.neighbour_score``): what the embedding knows (subject, kind of task);
2. a logistic regression over the hand-made features plus that share: length and the shape of
   word problems, which neighbours alone hardly see.

Cross-validated on the dev files this beat a logistic regression over the raw embedding, a tiny
MLP and per-cluster models (see ``default_router.md``). Trained by ``aifinops router train``;
saved as one ``.npz`` (no pickles) holding the training prompts' embeddings as int8, their
labels, the logistic head, the feature names, and a JSON report of how it was made.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import ConfigError
from agent.routing.features import FEATURE_NAMES
from agent.routing.knn import dequantize_int8, neighbour_score, quantize_int8

F32 = npt.NDArray[np.float32]

FORMAT = 2  # 1: logistic regression over the embedding and features (no neighbours)


@dataclass(frozen=True)
class DifficultyModel:
    neighbours: F32  # (n, embedding_dim) unit rows: the training prompts
    neighbour_labels: F32  # (n,) 1.0 where the weak tier sufficed
    k: int
    gamma: float  # neighbour weight exp(gamma * (sim - best sim))
    weights: F32  # (len(feature_names) + 1,) logistic head over features then the neighbour score
    bias: float
    mean: F32  # standardisation of the head's inputs
    scale: F32
    feature_names: tuple[str, ...]
    report: dict[str, Any]

    @property
    def embedding_dim(self) -> int:
        return int(self.neighbours.shape[1])

    def weak_ok_probability(self, inputs: F32) -> F32:
        """P(weak tier is good enough) for (n, embedding_dim + features) inputs: embedding then features."""
        if inputs.ndim != 2 or inputs.shape[1] != self.embedding_dim + len(self.feature_names):
            raise ValueError(f"expected (n, {self.embedding_dim + len(self.feature_names)}) inputs, got {inputs.shape}")
        embedding = np.ascontiguousarray(inputs[:, : self.embedding_dim], dtype=np.float32)
        share = neighbour_score(self.neighbours, self.neighbour_labels, embedding, self.k, self.gamma)
        return self.head_probability(inputs[:, self.embedding_dim :], share)

    def head_probability(self, features: F32, neighbour_share: F32) -> F32:
        x = np.hstack([features, neighbour_share[:, None]]).astype(np.float32)
        z = ((x - self.mean) / self.scale) @ self.weights + self.bias
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows, row_scale = quantize_int8(self.neighbours)
        with path.open("wb") as f:  # np.savez adds ".npz" to a bare path; a file object keeps the name
            np.savez_compressed(
                f,
                format=np.int32(FORMAT),
                neighbours=rows,
                neighbour_scale=row_scale,
                neighbour_labels=self.neighbour_labels.astype(np.uint8),
                k=np.int32(self.k),
                gamma=np.float32(self.gamma),
                weights=self.weights,
                bias=np.float32(self.bias),
                mean=self.mean,
                scale=self.scale,
                feature_names=np.array(self.feature_names),
                report=np.array(json.dumps(self.report)),
            )

    @classmethod
    def load(cls, path: Path) -> DifficultyModel:
        try:
            with path.open("rb") as f:
                data = np.load(f, allow_pickle=False)
                if not isinstance(data, np.lib.npyio.NpzFile):
                    raise ValueError("not an .npz archive")
                with data:
                    made = int(data["format"]) if "format" in data.files else 1
                    if made != FORMAT:
                        raise ValueError(f"format {made}; this agent reads format {FORMAT} (retrain it)")
                    rows, row_scale = data["neighbours"], data["neighbour_scale"].astype(np.float32)
                    labels = data["neighbour_labels"]
                    if rows.dtype != np.int8 or rows.ndim != 2 or row_scale.shape != rows.shape[:1]:
                        raise ValueError(f"neighbours {rows.dtype}{rows.shape} with scales {row_scale.shape}")
                    if labels.shape != rows.shape[:1] or not np.all((labels == 0) | (labels == 1)):
                        raise ValueError(f"neighbour labels {labels.shape} are not one 0/1 per neighbour")
                    model = cls(
                        neighbours=dequantize_int8(rows, row_scale),
                        neighbour_labels=labels.astype(np.float32),
                        k=int(data["k"]),
                        gamma=float(data["gamma"]),
                        weights=data["weights"].astype(np.float32),
                        bias=float(data["bias"]),
                        mean=data["mean"].astype(np.float32),
                        scale=data["scale"].astype(np.float32),
                        feature_names=tuple(str(n) for n in data["feature_names"]),
                        report=json.loads(str(data["report"])),
                    )
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
            raise ConfigError(f"router artifact {path} cannot be read: {e}") from e
        model.check(path)
        return model

    def check(self, path: Path) -> None:
        """ConfigError unless the parts fit together and every number is finite."""
        head = (len(self.feature_names) + 1,)
        shapes = {self.weights.shape, self.mean.shape, self.scale.shape}
        if shapes != {head} or len(self.neighbours) < 1 or self.k < 1:
            raise ConfigError(
                f"router artifact {path} is inconsistent (head {shapes}, features {len(self.feature_names)})"
            )
        finite = all(np.all(np.isfinite(a)) for a in (self.neighbours, self.weights, self.mean, self.scale))
        if not finite or not np.isfinite(self.bias) or not np.isfinite(self.gamma) or not np.all(self.scale > 0):
            raise ConfigError(f"router artifact {path} holds non-finite or non-positive numbers")
        if self.feature_names != FEATURE_NAMES:
            raise ConfigError(f"router artifact {path} was trained with other features: {self.feature_names}")


def fit_logistic(
    inputs: F32, labels: npt.NDArray[np.bool_], l2: float = 1e-2, epochs: int = 300, learning_rate: float = 0.5
) -> tuple[F32, float, F32, F32]:
    """Full-batch gradient descent on the standardised inputs, classes weighted to balance."""
    mean = inputs.mean(axis=0).astype(np.float32)
    scale = (inputs.std(axis=0) + 1e-6).astype(np.float32)
    x = (inputs - mean) / scale
    y = labels.astype(np.float32)
    positive = max(float(y.mean()), 1e-6)
    sample_weight = np.where(y > 0, 0.5 / positive, 0.5 / max(1 - positive, 1e-6)).astype(np.float32)
    weights = np.zeros(x.shape[1], dtype=np.float32)
    bias = 0.0
    n = len(y)
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
        error = (p - y) * sample_weight
        weights -= learning_rate * ((x.T @ error) / n + l2 * weights).astype(np.float32)
        bias -= learning_rate * float(error.mean())
    return weights, bias, mean, scale
