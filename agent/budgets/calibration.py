"""How far each model's reported input tokens run above our estimate of them.

Budget holds are computed before a call from the o200k estimate of what is sent. A provider
counts with its own tokenizer and adds what we never see (tool schemas, images, its own
template), so a two-word prompt can be billed as a thousand tokens. Each answered call records
both numbers in the ledger (``input_tokens_expected`` and ``input_tokens``); the ratio of the
recent calls of a model, at its worst, scales that model's next holds.

A model with no answered call yet is *uncalibrated*: the enforcer lets one of its calls at a time
hold against a budget, so the first surprise costs at most one answer.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from fractions import Fraction

from agent.ledger.database import Database

# Calls per model the ratio is taken over (the largest of them), and read back at start.
WINDOW = 50
# What a call holds for its input: our estimate scaled by the model's ratio, plus this margin.
_INPUT_ESTIMATE_MARGIN = Fraction(11, 10)
_INPUT_ESTIMATE_SLACK_TOKENS = 16


def held_input_tokens(expected: int, ratio: Fraction | None) -> int:
    """The input tokens a budget hold pays for, when we estimate ``expected`` and the model's
    calibration ratio is ``ratio`` (None: uncalibrated)."""
    return math.ceil(expected * max(ratio or 1, 1) * _INPUT_ESTIMATE_MARGIN) + _INPUT_ESTIMATE_SLACK_TOKENS


class InputCalibration:
    def __init__(self, window: int = WINDOW) -> None:
        self._window = window
        self._ratios: dict[str, deque[Fraction]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_ledger(cls, db: Database, window: int = WINDOW) -> InputCalibration:
        """The last ``window`` answered calls of each model with both counts."""
        calibration = cls(window)
        rows = db.query(
            """
            SELECT model, input_tokens, input_tokens_expected FROM (
                SELECT model, input_tokens, input_tokens_expected,
                       row_number() OVER (PARTITION BY model ORDER BY ts DESC) AS n
                FROM requests
                WHERE input_tokens_expected > 0 AND tokens_estimated = 0 AND status = 'ok' AND input_tokens > 0
            ) WHERE n <= ? ORDER BY model, n DESC
            """,
            (window,),
        )
        for row in rows:
            calibration.observe(str(row["model"]), int(row["input_tokens_expected"]), int(row["input_tokens"]))
        return calibration

    def observe(self, model: str, expected: int, reported: int) -> None:
        """One answered call: we expected ``expected`` input tokens, the provider billed ``reported``."""
        if expected <= 0 or reported <= 0:
            return
        with self._lock:
            ratios = self._ratios.setdefault(model, deque(maxlen=self._window))
            ratios.append(Fraction(reported, expected))

    def ratio(self, model: str) -> Fraction | None:
        """The largest recent reported / expected ratio (never below 1), or None: uncalibrated."""
        with self._lock:
            ratios = self._ratios.get(model)
            if not ratios:
                return None
            return max(max(ratios), Fraction(1))

    def calibrated(self, model: str) -> bool:
        return self.ratio(model) is not None
