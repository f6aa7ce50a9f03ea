"""Requests-per-minute and tokens-per-minute limits per key (a user, a department), in memory.

Algorithm: one token bucket per key and per limit, refilled continuously. A bucket holds at most
one minute's allowance (its capacity is the per-minute limit) and gains `limit / 60` every second.
A request takes 1 from the requests bucket and its token count from the tokens bucket; it is
admitted only when every bucket that applies holds enough, and then all of them are charged.
The same algorithm as GCRA, written with a level instead of a theoretical arrival time; O(1) per
check and a few floats per key.

What that promises, for a limit L per minute:

- burst: a key that stayed idle for a minute may spend its whole L at once, then L/60 per second;
- over any span of T seconds a key is admitted at most L + L*T/60, so in any 60-second window at
  most 2L (the limit plus one burst of L), and over long spans the average is L per minute;
- a refused request is told exactly how long to wait: retrying after that many seconds, with
  nothing else spent on the key meanwhile, succeeds. It is a float; the HTTP layer rounds it up
  to whole seconds, at least 1, for `Retry-After`.

Tokens are known only when a call ends: admit on an estimate, then `settle` with the real count.
Settling lower gives tokens back (never above the capacity); settling higher may take the level
below zero, which only delays later requests of that key until the debt is refilled.

Limits come from the policy and may change between calls. A changed limit keeps what the key has
used in the last refill window: with L=100 and 70 used, a new limit of 200 leaves 130 available at
once and a new limit of 50 leaves the key 20 in debt. `None` means no limit of that kind for this
call. A request needing more tokens than a whole minute's allowance can never be admitted: it
raises `RequestExceedsRateLimit` (HTTP 413) instead of returning a wait, and records nothing.

Thread-safe (one lock around each O(1) update); the clock is injectable for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.errors import RequestTooLarge

_WINDOW_S = 60.0
# A wait this short counts as none, so that retrying exactly after the returned wait succeeds in
# spite of float rounding in the refill.
_TOLERANCE_S = 1e-6
# Keys whose buckets are all full again are forgotten once the table has doubled since the last
# sweep (a full bucket behaves exactly like a new one), so memory follows the active keys and a
# check stays O(1) amortised.
_MIN_SWEEP = 1024


class RequestExceedsRateLimit(RequestTooLarge):
    """A request needs more tokens than its tokens-per-minute limit allows in a whole minute."""

    def __init__(self, key: str, tokens: int, tokens_per_minute: int) -> None:
        super().__init__(
            f"request needs {tokens} tokens but the limit for {key!r} is {tokens_per_minute} tokens per minute: "
            "it can never be admitted; ask for fewer tokens",
            code="exceeds_tokens_per_minute",
        )
        self.key = key
        self.tokens = tokens
        self.tokens_per_minute = tokens_per_minute


@dataclass(frozen=True)
class RateLimit:
    """The limits of one key for one call; None means no limit of that kind."""

    key: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


class _Bucket:
    __slots__ = ("capacity", "level", "updated_s")

    def __init__(self, capacity: int, now_s: float) -> None:
        self.capacity = capacity
        self.level = float(capacity)
        self.updated_s = now_s

    def refill(self, now_s: float) -> None:
        elapsed_s = now_s - self.updated_s
        if elapsed_s > 0:  # a clock that steps back refills nothing
            self.level = min(float(self.capacity), self.level + elapsed_s * self.capacity / _WINDOW_S)
            self.updated_s = now_s

    def resize(self, capacity: int) -> None:
        used = self.capacity - self.level
        self.capacity = capacity
        self.level = capacity - used

    def wait_s(self, amount: int) -> float:
        missing = amount - self.level
        return missing * _WINDOW_S / self.capacity if missing > 0 else 0.0

    def give_back(self, amount: float) -> None:
        self.level = min(float(self.capacity), self.level + amount)

    def full(self) -> bool:
        return self.level >= self.capacity


class _KeyState:
    __slots__ = ("requests", "tokens", "unbilled_tokens")

    def __init__(self) -> None:
        self.requests: _Bucket | None = None
        self.tokens: _Bucket | None = None
        # Extra tokens settled after the key was forgotten (a call longer than the refill): charged
        # to its tokens bucket as soon as one exists again.
        self.unbilled_tokens = 0

    def idle(self) -> bool:
        buckets = [bucket for bucket in (self.requests, self.tokens) if bucket is not None]
        return self.unbilled_tokens == 0 and all(bucket.full() for bucket in buckets)


class RateLimiter:
    """Token buckets per key; see the module docstring for the guarantees."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyState] = {}
        self._sweep_at = _MIN_SWEEP

    def acquire(
        self, key: str, requests_per_minute: int | None, tokens_per_minute: int | None, tokens: int
    ) -> float | None:
        """Admit one request of `tokens` tokens for `key` and record it (None), or return the
        seconds to wait before the same request would be admitted (recording nothing).

        Raises RequestExceedsRateLimit when `tokens` exceeds `tokens_per_minute` (never admissible)
        and ValueError for a limit below 1 or a negative token count.
        """
        return self.acquire_all((RateLimit(key, requests_per_minute, tokens_per_minute),), tokens)

    def acquire_all(self, limits: Sequence[RateLimit], tokens: int) -> float | None:
        """Like `acquire`, for several keys at once (a user and their department): all or nothing.

        The request is admitted and recorded on every key only if every key admits it; otherwise
        nothing is recorded and the wait is the longest of the waits.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        for limit in limits:
            _check_limit(limit, tokens)
        if len({limit.key for limit in limits}) != len(limits):
            raise ValueError(f"each key at most once per call, got {[limit.key for limit in limits]}")
        with self._lock:
            now_s = self._clock()
            charges: list[tuple[_Bucket, int]] = []
            for limit in limits:
                state = self._keys.get(limit.key)
                if state is None:
                    state = self._keys[limit.key] = _KeyState()
                if limit.requests_per_minute is not None:
                    state.requests = _current(state.requests, limit.requests_per_minute, now_s)
                    charges.append((state.requests, 1))
                if limit.tokens_per_minute is not None:
                    state.tokens = _current(state.tokens, limit.tokens_per_minute, now_s)
                    state.tokens.level -= state.unbilled_tokens
                    state.unbilled_tokens = 0
                    charges.append((state.tokens, tokens))
            wait_s = max((bucket.wait_s(amount) for bucket, amount in charges), default=0.0)
            if wait_s > _TOLERANCE_S:
                return wait_s
            for bucket, amount in charges:
                bucket.level -= amount
            if len(self._keys) >= self._sweep_at:
                self._sweep(now_s)
            return None

    def settle(self, key: str, estimated_tokens: int, actual_tokens: int, *, request_refund: bool = False) -> None:
        """Correct an admitted request's token estimate with the real count; with `request_refund`,
        also give back its request (a call that never went out, or an all-or-nothing rollback).

        Tokens given back never raise a bucket above its capacity; extra tokens may take it below
        zero, also for a key forgotten meanwhile (they are charged when it is next used).
        """
        if estimated_tokens < 0 or actual_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got {estimated_tokens} and {actual_tokens}")
        with self._lock:
            state = self._keys.get(key)
            if state is None:  # forgotten at full allowance: only extra tokens still matter
                if actual_tokens > estimated_tokens:
                    state = self._keys[key] = _KeyState()
                    state.unbilled_tokens = actual_tokens - estimated_tokens
                return
            now_s = self._clock()
            if state.tokens is not None:
                state.tokens.refill(now_s)
                state.tokens.give_back(estimated_tokens - actual_tokens)
            if request_refund and state.requests is not None:
                state.requests.refill(now_s)
                state.requests.give_back(1)

    def __len__(self) -> int:
        """How many keys are remembered (keys back at full allowance are forgotten now and then)."""
        with self._lock:
            return len(self._keys)

    def _sweep(self, now_s: float) -> None:
        idle = []
        for key, state in self._keys.items():
            for bucket in (state.requests, state.tokens):
                if bucket is not None:
                    bucket.refill(now_s)
            if state.idle():
                idle.append(key)
        for key in idle:
            del self._keys[key]
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._keys))


def _current(bucket: _Bucket | None, capacity: int, now_s: float) -> _Bucket:
    if bucket is None:
        return _Bucket(capacity, now_s)
    bucket.refill(now_s)
    if bucket.capacity != capacity:
        bucket.resize(capacity)
    return bucket


def _check_limit(limit: RateLimit, tokens: int) -> None:
    for name, value in (
        ("requests_per_minute", limit.requests_per_minute),
        ("tokens_per_minute", limit.tokens_per_minute),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} for {limit.key!r} must be >= 1 or None, got {value}")
    if limit.tokens_per_minute is not None and tokens > limit.tokens_per_minute:
        raise RequestExceedsRateLimit(limit.key, tokens, limit.tokens_per_minute)
