"""Prompt optimiser: the same prompt in fewer tokens (see `agent.optimizer.optimizer`)."""

from __future__ import annotations

from agent.optimizer.optimizer import Optimized, PromptOptimizer

__all__ = ["Optimized", "PromptOptimizer"]
