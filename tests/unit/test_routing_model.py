"""The difficulty model: features, training, the artifact, and the held-out routing curve."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import agent.routing
from agent.errors import ConfigError, InvalidRequest
from agent.routing.difficulty import DifficultyModel, fit_logistic
from agent.routing.features import FEATURE_NAMES, prompt_features
from agent.routing.knn import dequantize_int8, neighbour_score, quantize_int8
from agent.routing.training import (
    LabelledPrompt,
    _auc,
    cross_validate,
    fit_difficulty,
    inputs_for,
    read_labelled,
    routing_curve,
    train_router,
)


def test_features_see_code_math_steps_and_length() -> None:
    f = dict(zip(FEATURE_NAMES, prompt_features("Hi there!"), strict=True))
    assert f["code"] == f["math"] == f["steps"] == f["long_answer"] == 0
    code = dict(zip(FEATURE_NAMES, prompt_features("```python\ndef f(x):\n    return x\n```"), strict=True))
    assert code["code"] > 0 and code["lines"] > f["lines"]
    maths = dict(zip(FEATURE_NAMES, prompt_features("Solve 3x + 5 = 20, step by step."), strict=True))
    assert maths["math"] > 0 and maths["steps"] == 1 and maths["digits"] > 0
    essay = dict(zip(FEATURE_NAMES, prompt_features("Write a detailed essay about lighthouses."), strict=True))
    assert essay["long_answer"] == 1 and essay["log_chars"] > f["log_chars"]
    assert prompt_features("").shape == (len(FEATURE_NAMES),)
    word = dict(
        zip(FEATURE_NAMES, prompt_features("Ann pays $12.50 for 3 pens, each 25% off. How much is left?"), strict=True)
    )
    plain = dict(zip(FEATURE_NAMES, prompt_features("Name a colour."), strict=True))
    assert word["money"] == word["percent"] == word["decimal"] == 1 and word["quantity_words"] > 0
    assert word["numbers"] > plain["numbers"] == 0 and word["sentences"] > plain["sentences"]
    huge = prompt_features("x. " * 5000 + "1 " * 40 + "9" * 40)[FEATURE_NAMES.index("numbers") :]
    assert np.all((huge >= 0) & (huge <= 1))


def test_logistic_regression_learns_a_separable_problem() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 5)).astype(np.float32)
    y = x[:, 0] + 0.5 * x[:, 1] > 0
    weights, bias, mean, scale = fit_logistic(x, y)
    p = 1 / (1 + np.exp(-(((x - mean) / scale) @ weights + bias)))
    assert ((p > 0.5) == y).mean() > 0.95
    assert weights[0] > abs(weights[2]) and weights[1] > abs(weights[3])


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_neighbour_score_is_the_similarity_weighted_share_of_the_nearest_labels() -> None:
    stored = _unit(np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32))
    labels = np.array([1, 1, 0, 0], dtype=np.float32)
    queries = _unit(np.array([[1, 0.05], [0.05, 1]], dtype=np.float32))
    assert np.allclose(neighbour_score(stored, labels, queries, k=2, gamma=10.0), [1, 0])
    # k = everything, gamma = 0: the plain base rate
    assert np.allclose(neighbour_score(stored, labels, queries, k=4, gamma=0.0), [0.5, 0.5])
    # leave-one-out: a row never votes for itself, so row 0 hears row 1 (label 1) and row 2 hears row 3
    assert np.allclose(neighbour_score(stored, labels, stored, k=1, gamma=0.0, leave_self_out=True), [1, 1, 0, 0])
    swapped = np.array([0, 1, 1, 0], dtype=np.float32)
    assert np.allclose(neighbour_score(stored, swapped, stored, k=1, gamma=0.0, leave_self_out=True), [1, 0, 0, 1])


def test_int8_storage_keeps_similarities() -> None:
    vectors = _unit(np.random.default_rng(1).standard_normal((50, 384)))
    rows, scale = quantize_int8(vectors)
    assert rows.dtype == np.int8 and scale.shape == (50,)
    assert np.abs(dequantize_int8(rows, scale) @ vectors.T - vectors @ vectors.T).max() < 0.02


def _clustered(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two topics in embedding space; the weak tier suffices on topic 0 and fails on topic 1."""
    rng = np.random.default_rng(seed)
    topic = rng.random(n) < 0.5
    centres = _unit(rng.standard_normal((2, 16)))
    embedding = _unit(centres[topic.astype(int)] + 0.3 * rng.standard_normal((n, 16)))
    features = rng.random((n, len(FEATURE_NAMES))).astype(np.float32)
    return np.hstack([embedding, features]).astype(np.float32), ~topic


def test_the_difficulty_model_learns_from_neighbours() -> None:
    x, y = _clustered(300)
    model = fit_difficulty(x[:200], y[:200], k=10)
    p = model.weak_ok_probability(x[200:])
    assert p.dtype == np.float32 and p.shape == (100,)
    assert ((p > 0.5) == y[200:]).mean() > 0.95
    assert model.weights[-1] > 0  # the neighbours' share raises P(weak ok)
    assert np.array_equal(p, model.weak_ok_probability(x[200:]))  # deterministic
    with pytest.raises(ValueError, match="inputs"):
        model.weak_ok_probability(x[:, :-1])


def _model(n: int = 30) -> DifficultyModel:
    x, y = _clustered(n, seed=5)
    return replace(fit_difficulty(x, y, k=5), report={"held_out_auc": 0.7})


def test_the_artifact_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "router.npz"
    model = _model()
    model.save(path)
    loaded = DifficultyModel.load(path)
    assert loaded.report == {"held_out_auc": 0.7} and loaded.bias == pytest.approx(model.bias)
    assert loaded.k == 5 and loaded.feature_names == FEATURE_NAMES
    x, _ = _clustered(20, seed=6)
    assert np.allclose(loaded.weak_ok_probability(x), model.weak_ok_probability(x), atol=1e-3)
    assert np.array_equal(loaded.weak_ok_probability(x), DifficultyModel.load(path).weak_ok_probability(x))


@pytest.mark.parametrize("content", [b"", b"not an npz at all", b"PK\x03\x04truncated"])
def test_a_corrupt_artifact_is_a_clear_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "router.npz"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="router artifact"):
        DifficultyModel.load(path)


def test_a_truncated_artifact_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "router.npz"
    _model().save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="router artifact"):
        DifficultyModel.load(path)


def _rewrite(path: Path, **changes: np.ndarray) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files} | changes
    with path.open("wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"weights": np.ones(3, dtype=np.float32)}, "inconsistent"),
        ({"neighbour_labels": np.ones(2, dtype=np.uint8)}, "labels"),
        ({"neighbour_labels": np.full(30, 2, dtype=np.uint8)}, "labels"),
        ({"neighbour_scale": np.ones(29, dtype=np.float32)}, "scales"),
        ({"neighbours": np.ones((30, 16), dtype=np.float32)}, "neighbours"),
        ({"mean": np.full(len(FEATURE_NAMES) + 1, np.nan, dtype=np.float32)}, "non-finite"),
        ({"k": np.int32(0)}, "inconsistent"),
        ({"format": np.int32(1)}, "format"),
        ({"feature_names": np.array(["something", "else"])}, "other features|inconsistent"),
    ],
)
def test_an_inconsistent_artifact_is_refused(tmp_path: Path, changes: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "router.npz"
    _model().save(path)
    _rewrite(path, **changes)
    with pytest.raises(ConfigError, match=message):
        DifficultyModel.load(path)


def test_an_artifact_with_other_features_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "router.npz"
    renamed = ("something", *FEATURE_NAMES[1:])
    replace(_model(), feature_names=renamed).save(path)
    with pytest.raises(ConfigError, match="other features"):
        DifficultyModel.load(path)


def test_an_artifact_missing_a_part_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "router.npz"
    _model().save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != "gamma"}
    with path.open("wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ConfigError, match="router artifact"):
        DifficultyModel.load(path)


def test_a_missing_artifact_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        DifficultyModel.load(tmp_path / "nowhere.npz")


def test_the_shipped_artifact_loads() -> None:
    model = DifficultyModel.load(Path(agent.routing.__file__).parent / "default_router.npz")
    assert model.embedding_dim == 384 and model.feature_names == FEATURE_NAMES
    assert set(model.report["by_source"]) == {"routing_gsm8k_routing_dev", "routing_mmlu_routing_dev"}


def test_routing_curve_finds_the_cheapest_point_at_95_percent() -> None:
    # Weak right on the easy half, strong right everywhere: routing the hard half suffices.
    rows = [LabelledPrompt(f"q{i}", i < 50, True, "s", False) for i in range(100)]
    weak_ok = np.array([0.9 if i < 50 else 0.1 for i in range(100)], dtype=np.float32)
    curve = routing_curve(weak_ok, rows)
    assert curve["all_strong_accuracy"] == 1.0 and curve["all_weak_accuracy"] == 0.5
    assert curve["strong_share_at_95"] == 0.5


def test_training_reports_on_held_out_rows_only_and_never_on_contaminated_ones() -> None:
    rng = np.random.default_rng(3)
    rows = [LabelledPrompt(f"easy question {i}" if i % 2 else f"Prove theorem {i} step by step in detail", bool(i % 2), True,
                           "synthetic", i % 10 == 0) for i in range(200)]  # fmt: skip

    def embed(texts: list[str]) -> np.ndarray:
        return rng.standard_normal((len(texts), 8)).astype(np.float32)

    model = train_router(rows, embed, holdout=0.3, seed=2, provenance={"command": "test"})
    report = model.report
    # The 20 contaminated rows are neither trained on nor held out.
    assert report["contaminated_rows_left_out"] == 20
    assert report["train_rows"] + report["held_out_rows"] == 180 and report["held_out_rows"] > 0
    assert report["held_out_auc"] > 0.9  # the features alone separate the two kinds
    synthetic = report["by_source"]["synthetic"]
    assert report["command"] == "test" and synthetic["strong_share_at_95"] < 0.8 and synthetic["auc"] > 0.9
    assert model.neighbours.shape == (report["train_rows"], 8)
    with pytest.raises(InvalidRequest):
        train_router(rows[:5], embed)


def test_bad_training_data_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x", "weak_correct": true, "strong_correct": true}\n{"prompt": "y"}\n')
    with pytest.raises(InvalidRequest, match=r"bad.jsonl:2"):
        read_labelled(path)


def test_cross_validation_scores_every_clean_row_out_of_fold_and_no_contaminated_one() -> None:
    rows = [LabelledPrompt(f"easy question {i}" if i % 2 else f"Prove theorem {i} step by step in detail", bool(i % 2), True,
                           "mmlu" if i < 150 else "gsm8k", i % 10 == 0) for i in range(200)]  # fmt: skip
    rng = np.random.default_rng(4)
    inputs = inputs_for([r.prompt for r in rows], lambda t: rng.standard_normal((len(t), 8)).astype(np.float32))
    result = cross_validate(rows, inputs, folds=5, seeds=(1, 2))
    assert result["folds"] == 5 and result["seeds"] == [1, 2]
    # Rows per file, contaminated ones (every tenth) left out of the scoring.
    assert result["mmlu"]["rows"] == 135 and result["gsm8k"]["rows"] == 45
    assert result["mmlu"]["auc"] > 0.9 and result["mmlu"]["strong_share_at_95"] < 0.8  # features separate them
    # Labels shuffled against the prompts: out-of-fold scores know nothing, and the AUC says so.
    shuffled = [
        replace(r, weak_correct=bool(b))
        for r, b in zip(rows, rng.permutation([r.weak_correct for r in rows]), strict=True)
    ]
    assert cross_validate(shuffled, inputs, folds=5, seeds=(1, 2))["mmlu"]["auc"] < 0.7


def test_mt_bench_rows_are_read_with_the_strong_answer_as_the_bar(tmp_path: Path) -> None:
    path = tmp_path / "routing_mtbench.jsonl"
    rows = [
        {"prompt": "Write a haiku.", "weak_sufficient_turn1": True, "in_routellm_train_contamination_list": False},
        {"prompt": "Prove it.", "weak_sufficient_turn1": False, "in_routellm_train_contamination_list": True},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = read_labelled(path)
    assert (first.weak_correct, first.strong_correct, first.weak_ok, first.contaminated) == (True, True, True, False)
    assert (second.weak_correct, second.strong_correct, second.weak_ok, second.contaminated) == (False, True, False, True)


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(a positive outscores a negative), a tie counting 1/2: every pair, one by one."""
    wins = 0.0
    for p in scores[labels]:
        for n in scores[~labels]:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (labels.sum() * (~labels).sum())


@pytest.mark.parametrize("seed", range(5))
def test_auc_counts_a_tie_as_half_a_win(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=60).astype(np.float32)  # four values: most pairs are ties
    labels = rng.random(60) < 0.4
    assert _auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels))


def test_auc_of_equal_scores_is_one_half_whatever_the_order() -> None:
    scores = np.zeros(10, dtype=np.float32)
    for labels in (np.arange(10) < 4, np.arange(10) >= 6, np.arange(10) % 2 == 0):
        assert _auc(scores, labels) == 0.5
