"""Training the difficulty model from labelled prompts, with a held-out split and a report.

Rows are the ``../shared/data/routing_*`` format: ``prompt``, ``weak_correct``,
``strong_correct``. The label is "the weak tier is good enough": the weak model was right, or
the strong one was wrong as well. Rows flagged ``in_routellm_train_contamination_list`` (near
copies of RouteLLM's training data) are neither trained on nor scored.

``cross_validate`` gives the figures the method is chosen by: stratified k-fold over all files
together, several fold seeds, out-of-fold scores pooled per file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import InvalidRequest
from agent.jsonlines import read_records
from agent.routing.difficulty import DifficultyModel, fit_logistic
from agent.routing.features import FEATURE_NAMES, prompt_features
from agent.routing.knn import dequantize_int8, neighbour_score, quantize_int8

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class LabelledPrompt:
    prompt: str
    weak_correct: bool
    strong_correct: bool
    source: str
    contaminated: bool

    @property
    def weak_ok(self) -> bool:
        return self.weak_correct or not self.strong_correct


def read_labelled(path: Path) -> list[LabelledPrompt]:
    """Rows with ``prompt``, ``weak_correct`` and ``strong_correct``; or MT-Bench rows (``prompt``
    and the judge's ``weak_sufficient_turn1``), where the strong model's answer is the bar: the
    weak one is "correct" when judged as good, the strong one always is."""

    def labelled(row: dict[str, Any]) -> LabelledPrompt:
        judged = "weak_correct" not in row and "weak_sufficient_turn1" in row
        return LabelledPrompt(
            prompt=str(row["prompt"]),
            weak_correct=bool(row["weak_sufficient_turn1"] if judged else row["weak_correct"]),
            strong_correct=True if judged else bool(row["strong_correct"]),
            source=path.stem,  # the report groups by file (MMLU, GSM8K, ...)
            contaminated=bool(row.get("in_routellm_train_contamination_list", False)),
        )

    return list(read_records(path, labelled, "prompt, weak_correct, strong_correct"))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inputs_for(prompts: list[str], embed: Callable[[list[str]], F32]) -> F32:
    """Embedding then hand-made features, one row per prompt."""
    vectors = embed(prompts)
    features = np.vstack([prompt_features(p) for p in prompts]) if prompts else np.zeros((0, len(FEATURE_NAMES)))
    return np.hstack([vectors, features]).astype(np.float32)


NEIGHBOURS_K = 100  # chosen by 5-fold cross-validation on the dev files (default_router.md)
NEIGHBOURS_GAMMA = 10.0


def holdout_mask(rows: list[LabelledPrompt], holdout: float, seed: int) -> npt.NDArray[np.bool_]:
    """Which rows ``train_router`` keeps out (never a contaminated one): the same for the same
    rows, share and seed, so a benchmark can score exactly the rows a model never saw."""
    rng = np.random.default_rng(seed)
    eligible = np.array([not r.contaminated for r in rows])
    mask: npt.NDArray[np.bool_] = eligible & (rng.random(len(rows)) < holdout)
    return mask


def train_router(
    rows: list[LabelledPrompt],
    embed: Callable[[list[str]], F32],
    holdout: float = 0.2,
    seed: int = 1,
    provenance: dict[str, Any] | None = None,
) -> DifficultyModel:
    """Fit on a random share of the rows, report on the rest (never on contaminated rows)."""
    if len(rows) < 20:
        raise InvalidRequest(f"{len(rows)} labelled prompts are too few to train on")
    test = holdout_mask(rows, holdout, seed)
    train = ~test & np.array([not r.contaminated for r in rows])
    x = inputs_for([r.prompt for r in rows], embed)
    y = np.array([r.weak_ok for r in rows])
    model = fit_difficulty(x[train], y[train])
    scores = model.weak_ok_probability(x[test])
    held_out = [r for r, t in zip(rows, test, strict=True) if t]
    by_source = {}
    for source in sorted({r.source for r in held_out}):
        idx = np.array([i for i, r in enumerate(held_out) if r.source == source])
        by_source[source] = routing_curve(scores[idx], [held_out[i] for i in idx]) | {
            "auc": round(_auc(scores[idx], y[test][idx]), 4)
        }
    report = {
        "method": f"{model.k}-nearest-neighbour weak-ok share (gamma {model.gamma:g}) + logistic over features",
        "train_rows": int(train.sum()),
        "contaminated_rows_left_out": int(sum(r.contaminated for r in rows)),
        "held_out_rows": int(test.sum()),
        "held_out_auc": round(_auc(scores, y[test]), 4) if len(held_out) else None,
        "by_source": by_source,
        "features": list(FEATURE_NAMES),
        "seed": seed,
        "holdout": holdout,
    } | (provenance or {})
    return replace(model, report=report)


def cross_validate(
    rows: list[LabelledPrompt], inputs: F32, folds: int = 5, seeds: tuple[int, ...] = (1, 2, 3)
) -> dict[str, Any]:
    """Out-of-fold P(weak ok) for every clean row, pooled per file over the fold seeds.

    Folds are stratified by file; contaminated rows are in no training fold and never scored.
    Per file: the mean strong share at 95% of all-strong accuracy and the mean AUC over seeds.
    """
    clean = np.array([not r.contaminated for r in rows])
    y = np.array([r.weak_ok for r in rows])
    sources = sorted({r.source for r in rows})
    per_seed: dict[str, list[dict[str, Any]]] = {s: [] for s in sources}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        fold = np.full(len(rows), -1)
        for source in sources:
            idx = np.flatnonzero(clean & np.array([r.source == source for r in rows]))
            fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
        scores = np.zeros(len(rows), dtype=np.float32)
        for k in range(folds):
            train, test = clean & (fold != k), fold == k
            scores[test] = fit_difficulty(inputs[train], y[train]).weak_ok_probability(inputs[test])
        for source in sources:
            idx = np.flatnonzero(clean & np.array([r.source == source for r in rows]))
            curve = routing_curve(scores[idx], [rows[i] for i in idx])
            per_seed[source].append(curve | {"auc": _auc(scores[idx], y[idx])})
    return {
        source: {
            "rows": runs[0]["rows"],
            "strong_share_at_95": round(float(np.mean([r["strong_share_at_95"] for r in runs])), 4),
            "auc": round(float(np.mean([r["auc"] for r in runs])), 4),
            "all_weak_accuracy": runs[0]["all_weak_accuracy"],
            "all_strong_accuracy": runs[0]["all_strong_accuracy"],
        }
        for source, runs in per_seed.items()
    } | {"folds": folds, "seeds": list(seeds)}


def fit_difficulty(
    inputs: F32, labels: npt.NDArray[np.bool_], k: int = NEIGHBOURS_K, gamma: float = NEIGHBOURS_GAMMA
) -> DifficultyModel:
    """Neighbours from every training row; the logistic head on their leave-one-out share."""
    dim = inputs.shape[1] - len(FEATURE_NAMES)
    k = min(k, len(inputs) - 1)
    # The artifact stores the embeddings as int8: train and report on what will be shipped.
    neighbours = dequantize_int8(*quantize_int8(np.ascontiguousarray(inputs[:, :dim], dtype=np.float32)))
    targets = labels.astype(np.float32)
    share = neighbour_score(neighbours, targets, neighbours, k, gamma, leave_self_out=True)
    head_inputs = np.hstack([inputs[:, dim:], share[:, None]]).astype(np.float32)
    weights, bias, mean, scale = fit_logistic(head_inputs, labels)
    return DifficultyModel(neighbours, targets, k, gamma, weights, bias, mean, scale, FEATURE_NAMES, {})


def routing_curve(weak_ok: F32 | npt.NDArray[Any], rows: list[LabelledPrompt]) -> dict[str, Any]:
    """Route to strong when P(weak ok) is below t; accuracy and strong share for each t."""
    weak = np.array([r.weak_correct for r in rows])
    strong = np.array([r.strong_correct for r in rows])
    all_strong = float(strong.mean())
    points = []
    for t in np.unique(np.concatenate([[0.0, 1.01], np.quantile(weak_ok, np.linspace(0, 1, 41))])):
        to_strong = weak_ok < t
        accuracy = float(np.where(to_strong, strong, weak).mean())
        points.append((float(to_strong.mean()), accuracy, float(t)))
    points.sort()
    target = 0.95 * all_strong
    reaching = [p for p in points if p[1] >= target]
    best = min(reaching) if reaching else points[-1]
    return {
        "rows": len(rows),
        "all_strong_accuracy": round(all_strong, 4),
        "all_weak_accuracy": round(float(weak.mean()), 4),
        "strong_share_at_95": round(best[0], 4),
        "threshold_at_95": round(best[2], 4),
    }


def _auc(scores: F32, labels: npt.NDArray[np.bool_]) -> float:
    """The Mann-Whitney U over positives x negatives: a positive that outscores a negative counts 1,
    a tie 1/2. Tied scores share their group's average rank, so their order in the input is moot."""
    _, group, counts = np.unique(scores, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the 1-based rank of each group's last member
    ranks = (last - (counts - 1) / 2)[group]
    positives = labels.sum()
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))
