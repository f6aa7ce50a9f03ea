"""Hand-made signals of how hard a prompt is: length, code, math, steps, asked-for length.

The second half describes word problems (how many numbers and sentences, percentages,
fractions, money, quantity words): on GSM8K the weak model fails more on longer problems with
more quantities, which the embedding alone hardly sees.

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
    "numbers",
    "sentences",
    "words",
    "question_words",
    "max_digits",
    "percent",
    "fraction",
    "decimal",
    "quantity_words",
    "money",
)

_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|;\s*$|\{\s*$|#include|\bSELECT\b|=>|\bfunction\b", re.M)
_MATH = re.compile(
    r"[=+\-*/^%]\s*\d|\d\s*[=+\-*/^%]|\b(solve|calculate|compute|prove|equation|integral|derivative)\b", re.I
)
_STEPS = re.compile(r"\bstep[- ]by[- ]step\b|\bfirst\b.*\bthen\b|^\s*\d+[.)]\s", re.I | re.M | re.S)
_LONG = re.compile(r"\b(essay|detailed|in detail|explain|elaborate|comprehensive|write a|report|article|story)\b", re.I)
_SHORT = re.compile(r"\b(one word|briefly|short answer|yes or no|true or false|just the|only the)\b", re.I)
_CHOICE = re.compile(r"^\s*\(?[A-D][).:]\s", re.M)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"[.?!](?:\s|$)")
_LAST_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_FRACTION = re.compile(r"\d/\d|\b(half|third|quarter|twice|double|triple)\b", re.I)
_DECIMAL = re.compile(r"\d\.\d")
_QUANTITY = re.compile(r"\b(each|per|every|times|total|remaining|left|more than|less than|fewer)\b", re.I)
_MONEY = re.compile(r"\$\s?\d")


def prompt_features(text: str) -> npt.NDArray[np.float32]:
    lines = text.count("\n") + 1
    chars = len(text)
    digits = sum(c.isdigit() for c in text)
    numbers = _NUMBER.findall(text)
    last_sentence = _LAST_SENTENCE.split(text.strip())[-1]
    longest_number = max((len(n.replace(",", "")) for n in numbers), default=0)
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
            min(math.log1p(len(numbers)) / 3, 1.0),
            min(math.log1p(max(1, len(_SENTENCE_END.findall(text)))) / 3, 1.0),
            min(math.log1p(len(text.split())) / 6, 1.0),
            min(math.log1p(len(last_sentence.split())) / 4, 1.0),
            min(longest_number, 10) / 10,
            1.0 if "%" in text or "percent" in text.lower() else 0.0,
            1.0 if _FRACTION.search(text) else 0.0,
            1.0 if _DECIMAL.search(text) else 0.0,
            min(len(_QUANTITY.findall(text)), 8) / 8,
            1.0 if _MONEY.search(text) else 0.0,
        ],
        dtype=np.float32,
    )
