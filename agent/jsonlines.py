"""Reading labelled JSON-lines files (evaluation pairs, routing data) with errors that name the line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import InvalidRequest

T = TypeVar("T")


def read_records(path: Path, make: Callable[[dict[str, Any]], T], expected: str) -> Iterator[T]:
    """One `make(row)` per non-blank line; a bad line raises InvalidRequest naming path:line."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError("not a JSON object")
                yield make(row)
            except (ValueError, KeyError, TypeError) as e:
                raise InvalidRequest(f"{path}:{number}: expected a JSON object with {expected} ({e})") from e
