"""What was worked out from a long text, kept for when the same text comes again.

Agent traffic resends the same long system prompt and chat history with every call: counting its
tokens or normalising it once, not once per call and per step, is most of what a long prompt
costs the agent. Bounded by the characters of the texts it keeps, least recently used out first;
each process keeps its own, and only derived values (counts, normalised copies of a message for
that same message), never anything served to another caller.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class TextMemo(Generic[T]):
    def __init__(self, *, min_chars: int = 2_000, max_chars: int = 8_000_000) -> None:
        self.min_chars = min_chars  # shorter texts are cheap to work out again
        self.max_chars = max_chars
        self._values: OrderedDict[str, T] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, text: str) -> T | None:
        if len(text) < self.min_chars:
            return None
        with self._lock:
            value = self._values.get(text)
            if value is not None:
                self._values.move_to_end(text)
            return value

    def put(self, text: str, value: T) -> None:
        if len(text) < self.min_chars or len(text) > self.max_chars:
            return
        with self._lock:
            if text in self._values:
                return
            self._values[text] = value
            self._chars += len(text)
            while self._chars > self.max_chars:
                dropped, _ = self._values.popitem(last=False)
                self._chars -= len(dropped)
