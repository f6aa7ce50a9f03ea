"""Which tier answers a request routed as ``auto``, and why. Pure decisions: no I/O.

The tiers, cheapest first, are ``local`` (llama.cpp on this box), ``cheap`` and ``strong``
(cloud models). The router reads the prompt's features, the learned difficulty score (the
probability that a cheaper tier's answer is good enough, see ``difficulty.py``) and the caller's
budget state, and returns a ``Decision``: the tier, the score and a short reason a person can
read in the ledger ("code + long answer requested, score 0.31 < 0.50 -> strong").

Without a usable trained artifact (missing, corrupt, trained with other features) or without an
embedding, the score comes from hand-written rules over the same features, and every reason
says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from agent.routing.features import FEATURE_NAMES, prompt_features
from agent.settings import RoutingSection

Tier = Literal["local", "cheap", "strong"]
TIERS: tuple[Tier, ...] = ("local", "cheap", "strong")  # cheapest first

F32 = npt.NDArray[np.float32]

_SMALL_TALK = re.compile(
    r"^\W*(hi|hello|hey|hiya|good (morning|afternoon|evening)|thanks?( you)?|thank you( so much)?|ok(ay)?|"
    r"cool|great|nice|bye|goodbye|see you|cheers|how are you( doing)?|what'?s up|yes|no|sure)\b[\w\s,!.?']{0,40}$",
    re.I,
)
# Features that make a prompt too hard for the small local model, with their words for reasons.
_HARD_SIGNALS = {
    "code": "code",
    "math": "math",
    "steps": "multi-step instructions",
    "long_answer": "long answer requested",
}
_LONG_PROMPT_TOKENS = 1500


class DifficultyScorer(Protocol):
    """The learned score (agent.routing.difficulty.DifficultyModel)."""

    def weak_ok_probability(self, inputs: F32) -> F32: ...


@dataclass(frozen=True)
class RouteSignals:
    """What the router knows about one request."""

    prompt: str  # the latest user message
    prompt_tokens: int  # the whole conversation, as sent
    user_turns: int = 1
    max_tokens: int | None = None  # what the client allowed for the answer
    embedding: F32 | None = None  # of the latest user message, shared with the semantic cache
    budget_used: float | None = None  # the caller's highest budget share used (0..1+), None: no budget


@dataclass(frozen=True)
class Decision:
    tier: Tier
    score: float | None  # P(a cheaper tier's answer is good enough); None when not computed
    reason: str
    source: Literal["model", "rules", "single-tier"]


class Router:
    def __init__(
        self,
        tiers: Mapping[Tier, str],
        settings: RoutingSection,
        model: DifficultyScorer | None,
        model_problem: str = "",
    ) -> None:
        """``tiers`` maps each configured tier to its model name; ``model_problem`` says why
        there is no trained model (shown in every rules-based reason)."""
        self.tiers: dict[Tier, str] = {t: tiers[t] for t in TIERS if tiers.get(t)}
        if not self.tiers:
            raise ValueError("no tier is configured")
        self.settings = settings
        self.model = model
        self.model_problem = model_problem if model is None else ""

    @property
    def available(self) -> tuple[Tier, ...]:
        return tuple(self.tiers)

    @property
    def wants_embedding(self) -> bool:
        return self.model is not None and len(self.tiers) > 1

    def with_tiers(self, tiers: Mapping[Tier, str]) -> Router:
        """The same router between other models (a department's tiers from the policy)."""
        router = Router(tiers, self.settings, self.model)
        router.model_problem = self.model_problem
        return router

    def with_threshold(self, threshold: float) -> Router:
        """The same router at another threshold (for sweeps)."""
        settings = self.settings.model_copy(update={"threshold": threshold})
        router = Router(self.tiers, settings, self.model)
        router.model_problem = self.model_problem
        return router

    # -- the decision ---------------------------------------------------------------------

    def score(self, signals: RouteSignals, features: F32 | None = None) -> tuple[float, Literal["model", "rules"]]:
        """P(a cheaper tier's answer is good enough), from the trained model when it can run."""
        features = prompt_features(signals.prompt) if features is None else features
        if self.model is not None and signals.embedding is not None:
            inputs = np.concatenate([signals.embedding.astype(np.float32), features])[None, :]
            try:
                return float(self.model.weak_ok_probability(inputs)[0]), "model"
            except ValueError:  # an artifact made for another embedding model: shapes differ
                self.model, self.model_problem = None, "router artifact does not fit the embedding model"
        return _rules_score(features, signals), "rules"

    def decide(self, signals: RouteSignals, scored: tuple[float, Literal["model", "rules"]] | None = None) -> Decision:
        """The tier for these signals; ``scored`` reuses a score from ``score()`` (for sweeps)."""
        available = self.available
        if len(available) == 1:
            return Decision(available[0], None, f"only the {available[0]} tier is configured", "single-tier")
        features = prompt_features(signals.prompt)
        named = dict(zip(FEATURE_NAMES, features.tolist(), strict=True))
        hard = [words for name, words in _HARD_SIGNALS.items() if named.get(name, 0.0) > 0]
        if signals.prompt_tokens > _LONG_PROMPT_TOKENS:
            hard.append("long prompt")
        if signals.user_turns > 3:
            hard.append(f"{signals.user_turns}-turn conversation")

        score, source = scored or self.score(signals, features)
        threshold = self.settings.threshold
        local_ok = "local" in self.tiers and not hard and signals.prompt_tokens <= self.settings.local_max_prompt_tokens
        cloud = [t for t in available if t != "local"]
        what = " + ".join(hard) if hard else "no code, math or steps"
        if local_ok and _SMALL_TALK.match(signals.prompt.strip()):
            tier: Tier = "local"
            why = "short small talk"
        elif "long answer requested" in hard and len(hard) >= 2:
            tier = available[-1]  # a clear case: a long piece of code, math or a multi-step plan
            why = f"{what}, score {score:.2f}"
        elif score >= threshold:
            local = local_ok and score >= self.settings.local_threshold
            tier = "local" if local or not cloud else cloud[0]
            why = f"{what}, score {score:.2f} >= {threshold:.2f}"
            if tier != "local" and "local" in self.tiers:
                why += f" (local needs {self.settings.local_threshold:.2f}, a short prompt, no code/math/steps)"
        else:
            tier = available[-1]
            why = f"{what}, score {score:.2f} < {threshold:.2f}"
        used = signals.budget_used
        if used is not None and used >= self.settings.budget_downgrade_at and tier != available[0]:
            cheaper = available[available.index(tier) - 1]
            why += f" -> {tier}, but {used:.0%} of the budget is used -> {cheaper}"
            tier = cheaper
        else:
            why += f" -> {tier}"
        if source == "rules":
            why = f"rules ({self.model_problem or 'no embedding'}): {why}"
        return Decision(tier, round(score, 4), why, source)


def _rules_score(features: F32, signals: RouteSignals) -> float:
    """A hand-written stand-in for the trained score: hard signals lower it."""
    named = dict(zip(FEATURE_NAMES, features.tolist(), strict=True))

    def f(name: str) -> float:
        return float(named.get(name, 0.0))

    score = 0.75 - 0.25 * f("code") - 0.25 * f("math") - 0.15 * f("steps") - 0.15 * f("long_answer")
    score += 0.1 * f("short_answer")
    if signals.prompt_tokens > _LONG_PROMPT_TOKENS:
        score -= 0.1
    if signals.max_tokens is not None and signals.max_tokens > 1000:
        score -= 0.1
    return float(min(max(score, 0.05), 0.95))
