"""Hand-made signals of how hard a prompt is: length, code, math, steps, asked-for length.

Each feature is a float in a small range so that a linear model can weigh them next to the
embedding. ``FEATURE_NAMES`` lists them in order; a trained artifact records the list it was
trained with.
"""

from __future__ import annotations

import math
import re

import numpy as np
import numpy.typing as npt

FEATURE_NAMES = (
    "log_chars",
    "lines",
    "code",
    "math",
    "digits",
    "steps",
    "long_answer",
    "short_answer",
    "questions",
    "choices",
)

_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|;\s*$|\{\s*$|#include|\bSELECT\b|=>|\bfunction\b", re.M)
_MATH = re.compile(
    r"[=+\-*/^%]\s*\d|\d\s*[=+\-*/^%]|\b(solve|calculate|compute|prove|equation|integral|derivative)\b", re.I
)
_STEPS = re.compile(r"\bstep[- ]by[- ]step\b|\bfirst\b.*\bthen\b|^\s*\d+[.)]\s", re.I | re.M | re.S)
_LONG = re.compile(r"\b(essay|detailed|in detail|explain|elaborate|comprehensive|write a|report|article|story)\b", re.I)
_SHORT = re.compile(r"\b(one word|briefly|short answer|yes or no|true or false|just the|only the)\b", re.I)
_CHOICE = re.compile(r"^\s*\(?[A-D][).:]\s", re.M)


def prompt_features(text: str) -> npt.NDArray[np.float32]:
    lines = text.count("\n") + 1
    chars = len(text)
    digits = sum(c.isdigit() for c in text)
    return np.array(
        [
            math.log1p(chars) / 10,
            min(lines, 50) / 50,
            min(len(_CODE.findall(text)), 5) / 5,
            min(len(_MATH.findall(text)), 5) / 5,
            min(digits / max(chars, 1) * 10, 1.0),
            1.0 if _STEPS.search(text) else 0.0,
            1.0 if _LONG.search(text) else 0.0,
            1.0 if _SHORT.search(text) else 0.0,
            min(text.count("?"), 5) / 5,
            min(len(_CHOICE.findall(text)), 4) / 4,
        ],
        dtype=np.float32,
    )
