"""The learned difficulty score: logistic regression over the MiniLM embedding plus features.

It predicts the probability that the weaker tier's answer is good enough (the weak model was
right, or the strong one was wrong too). Trained by ``aifinops router train``; saved as one
``.npz`` holding the weights, the feature names, and a JSON report of how it was made.
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

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DifficultyModel:
    weights: F32  # (dim,)
    bias: float
    mean: F32  # standardisation of the inputs
    scale: F32
    feature_names: tuple[str, ...]
    report: dict[str, Any]

    def weak_ok_probability(self, inputs: F32) -> F32:
        """P(weak tier is good enough) for (n, dim) inputs: embedding then features."""
        z = ((inputs - self.mean) / self.scale) @ self.weights + self.bias
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:  # np.savez adds ".npz" to a bare path; a file object keeps the name
            np.savez(
                f,
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
                model = cls(
                    weights=data["weights"].astype(np.float32),
                    bias=float(data["bias"]),
                    mean=data["mean"].astype(np.float32),
                    scale=data["scale"].astype(np.float32),
                    feature_names=tuple(str(n) for n in data["feature_names"]),
                    report=json.loads(str(data["report"])),
                )
                data.close()
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
            raise ConfigError(f"router artifact {path} cannot be read: {e}") from e
        dims = {model.weights.shape, model.mean.shape, model.scale.shape}
        if len(dims) != 1 or not np.all(np.isfinite(model.weights)) or not np.all(model.scale > 0):
            raise ConfigError(f"router artifact {path} is inconsistent (shapes {dims})")
        if model.feature_names != FEATURE_NAMES:
            raise ConfigError(f"router artifact {path} was trained with other features: {model.feature_names}")
        return model


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
