"""The router's decisions, as pure functions of the signals: clear cases, threshold, budget."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.routing.features import FEATURE_NAMES
from agent.routing.router import Router, RouteSignals, Tier
from agent.settings import RoutingSection

ALL_TIERS: dict[Tier, str] = {"local": "local", "cheap": "cheap-model", "strong": "strong-model"}
CLOUD_TIERS: dict[Tier, str] = {"cheap": "cheap-model", "strong": "strong-model"}
DIM = 8

GREETING = "Hi there! How are you today?"
PROOF = (
    "Prove that there are infinitely many prime numbers. Write a detailed, rigorous proof, "
    "step by step, and explain each step: first state the assumption, then derive the contradiction."
)
FACT = "Which river flows through the city of Vienna?"


class FixedScore:
    """A scorer whose P(weak ok) is the embedding's first component: the router's input, exposed."""

    def weak_ok_probability(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if inputs.shape != (1, DIM + len(FEATURE_NAMES)):  # as a matrix product would
            raise ValueError(f"shapes do not fit: {inputs.shape}")
        return inputs[:, 0].astype(np.float32)


def embedding(score: float) -> npt.NDArray[np.float32]:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[0] = score
    return vector


def signals(prompt: str, score: float | None = None, **extra: object) -> RouteSignals:
    tokens = len(prompt.split())
    vector = None if score is None else embedding(score)
    return RouteSignals(prompt=prompt, prompt_tokens=tokens, embedding=vector, **extra)  # type: ignore[arg-type]


def router(tiers: dict[Tier, str] = ALL_TIERS, **settings: object) -> Router:
    return Router(tiers, RoutingSection.model_validate(settings), FixedScore())


def test_a_greeting_stays_local_whatever_the_score() -> None:
    decision = router().decide(signals(GREETING, score=0.01))
    assert decision.tier == "local"
    assert "small talk" in decision.reason
    assert decision.reason.endswith("-> local")


def test_a_long_proof_request_goes_strong_whatever_the_score() -> None:
    decision = router().decide(signals(PROOF, score=0.99))
    assert decision.tier == "strong"
    assert "math" in decision.reason and "long answer requested" in decision.reason
    assert decision.reason.endswith("-> strong")


def test_the_threshold_turns_the_learned_score_into_a_tier() -> None:
    r = router(threshold=0.5, local_threshold=0.8)
    easy, middling, hard = (r.decide(signals(FACT, score=s)) for s in (0.9, 0.6, 0.3))
    assert (easy.tier, middling.tier, hard.tier) == ("local", "cheap", "strong")
    assert (easy.score, middling.score, hard.score) == pytest.approx((0.9, 0.6, 0.3))
    assert easy.source == middling.source == hard.source == "model"
    assert "score 0.30 < 0.50 -> strong" in hard.reason
    assert "score 0.60 >= 0.50" in middling.reason and middling.reason.endswith("-> cheap")


def test_without_a_local_tier_easy_prompts_go_to_the_cheapest_cloud_tier() -> None:
    decision = router(CLOUD_TIERS).decide(signals(GREETING, score=0.9))
    assert decision.tier == "cheap"


def test_a_long_prompt_never_stays_local() -> None:
    r = router(local_max_prompt_tokens=5)
    decision = r.decide(signals(FACT, score=0.99))
    assert decision.tier == "cheap"


@pytest.mark.parametrize(
    ("budget_used", "expected"),
    [(None, "strong"), (0.5, "strong"), (0.8, "cheap"), (1.3, "cheap")],
)
def test_near_a_budget_limit_the_router_takes_the_next_cheaper_tier(budget_used: float | None, expected: str) -> None:
    decision = router(budget_downgrade_at=0.8).decide(signals(FACT, score=0.1, budget_used=budget_used))
    assert decision.tier == expected
    if expected == "cheap":
        assert "of the budget is used -> cheap" in decision.reason


def test_the_budget_never_pushes_below_the_cheapest_tier() -> None:
    decision = router().decide(signals(GREETING, score=0.9, budget_used=1.0))
    assert decision.tier == "local"


def test_one_tier_means_no_decision_to_make() -> None:
    decision = router({"local": "local"}).decide(signals(PROOF, score=0.0))
    assert (decision.tier, decision.score, decision.source) == ("local", None, "single-tier")
    assert decision.reason == "only the local tier is configured"


def test_without_a_model_the_rules_decide_and_the_reason_says_why() -> None:
    r = Router(ALL_TIERS, RoutingSection(), None, "router artifact unavailable")
    proof, fact = r.decide(signals(PROOF)), r.decide(signals(FACT))
    assert proof.tier == "strong" and proof.source == "rules"
    assert proof.reason.startswith("rules (router artifact unavailable): ")
    assert fact.tier in ("local", "cheap") and fact.source == "rules"
    assert not r.wants_embedding


def test_without_an_embedding_the_rules_decide() -> None:
    decision = router().decide(signals(FACT))
    assert decision.source == "rules"
    assert decision.reason.startswith("rules (no embedding): ")


def test_an_artifact_for_another_embedding_falls_back_to_rules_and_stays_there() -> None:
    r = router()
    wrong = RouteSignals(prompt=FACT, prompt_tokens=8, embedding=np.zeros(DIM + 3, dtype=np.float32))
    first = r.decide(wrong)
    assert first.source == "rules" and "does not fit the embedding model" in first.reason
    assert r.decide(signals(FACT, score=0.2)).source == "rules"


def test_no_tier_at_all_is_refused() -> None:
    with pytest.raises(ValueError, match="no tier"):
        Router({}, RoutingSection(), None)


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_a_higher_threshold_never_sends_a_prompt_to_a_cheaper_tier(score: float, t1: float, t2: float) -> None:
    low, high = sorted((t1, t2))
    base = router(CLOUD_TIERS)
    order = ["cheap", "strong"]
    at_low = base.with_threshold(low).decide(signals(FACT, score=score))
    at_high = base.with_threshold(high).decide(signals(FACT, score=score))
    assert order.index(at_high.tier) >= order.index(at_low.tier)
