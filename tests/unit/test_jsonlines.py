"""Labelled JSON-lines files: limits, blank lines, and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.benchmarks.cache_quality import Pair, read_pairs
from agent.errors import InvalidRequest


def test_pairs_are_read_up_to_the_limit_skipping_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"q1": "a", "q2": "b", "duplicate": true}\n\n{"q1": "c", "q2": "d", "duplicate": false}\n')
    assert read_pairs(path, None) == [Pair("a", "b", True), Pair("c", "d", False)]
    assert read_pairs(path, 1) == [Pair("a", "b", True)]


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '{"q1": "a"}'])
def test_a_bad_line_is_named(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"q1": "a", "q2": "b", "duplicate": true}\n' + bad + "\n")
    with pytest.raises(InvalidRequest, match=r"pairs.jsonl:2: expected a JSON object with q1, q2, duplicate"):
        read_pairs(path, None)
