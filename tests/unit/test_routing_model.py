"""The difficulty model: features, training, the artifact, and the held-out routing curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import ConfigError, InvalidRequest
from agent.routing.difficulty import DifficultyModel, fit_logistic
from agent.routing.features import FEATURE_NAMES, prompt_features
from agent.routing.training import LabelledPrompt, read_labelled, routing_curve, train_router


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


def test_logistic_regression_learns_a_separable_problem() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 5)).astype(np.float32)
    y = x[:, 0] + 0.5 * x[:, 1] > 0
    weights, bias, mean, scale = fit_logistic(x, y)
    model = DifficultyModel(weights, bias, mean, scale, FEATURE_NAMES, {})
    p = model.weak_ok_probability(x)
    assert ((p > 0.5) == y).mean() > 0.95
    assert weights[0] > abs(weights[2]) and weights[1] > abs(weights[3])


def _model(dim: int = 4) -> DifficultyModel:
    ones = np.ones(dim, dtype=np.float32)
    return DifficultyModel(ones, 0.5, ones * 0, ones, FEATURE_NAMES, {"held_out_auc": 0.7})


def test_the_artifact_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "router.npz"
    _model().save(path)
    loaded = DifficultyModel.load(path)
    assert loaded.report == {"held_out_auc": 0.7} and loaded.bias == 0.5
    x = np.ones((2, 4), dtype=np.float32)
    assert np.allclose(loaded.weak_ok_probability(x), _model().weak_ok_probability(x))


@pytest.mark.parametrize("content", [b"", b"not an npz at all", b"PK\x03\x04truncated"])
def test_a_corrupt_artifact_is_a_clear_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "router.npz"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="router artifact"):
        DifficultyModel.load(path)


def test_an_artifact_with_other_features_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "router.npz"
    model = _model()
    DifficultyModel(model.weights, 0.0, model.mean, model.scale, ("something", "else"), {}).save(path)
    with pytest.raises(ConfigError, match="other features"):
        DifficultyModel.load(path)


def test_a_missing_artifact_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        DifficultyModel.load(tmp_path / "nowhere.npz")


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
    assert report["train_rows"] + report["held_out_rows"] == 200
    assert 0 < report["held_out_rows"] <= 180  # the 20 contaminated rows always train
    assert report["held_out_auc"] > 0.9  # the features alone separate the two kinds
    assert report["command"] == "test" and report["by_source"]["synthetic"]["strong_share_at_95"] < 0.8
    with pytest.raises(InvalidRequest):
        train_router(rows[:5], embed)


def test_bad_training_data_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x", "weak_correct": true, "strong_correct": true}\n{"prompt": "y"}\n')
    with pytest.raises(InvalidRequest, match=r"bad.jsonl:2"):
        read_labelled(path)
