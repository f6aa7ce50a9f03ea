"""Rate limits: token buckets per key on a fake clock, exact waits, settlement, threads, and bounds."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.budgets.ratelimit import RateLimit, RateLimiter, RequestExceedsRateLimit
from agent.errors import RequestTooLarge


class FakeClock:
    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> RateLimiter:
    return RateLimiter(clock)


def test_a_burst_up_to_the_limit_passes_then_the_next_is_refused(limiter: RateLimiter) -> None:
    for _ in range(10):
        assert limiter.acquire("user:ann", 10, None, 0) is None
    assert limiter.acquire("user:ann", 10, None, 0) == pytest.approx(6.0)  # one request every 6 s


def test_the_wait_is_exact(clock: FakeClock, limiter: RateLimiter) -> None:
    for _ in range(60):
        assert limiter.acquire("k", 60, None, 0) is None
    clock.advance(0.25)
    wait = limiter.acquire("k", 60, None, 0)
    assert wait == pytest.approx(0.75)
    assert wait is not None
    clock.advance(wait - 0.001)
    assert limiter.acquire("k", 60, None, 0) == pytest.approx(0.001)  # a refusal records nothing
    clock.advance(0.001)
    assert limiter.acquire("k", 60, None, 0) is None  # exactly after the wait: admitted


def test_the_bucket_refills_continuously_up_to_one_minute(clock: FakeClock, limiter: RateLimiter) -> None:
    for _ in range(30):
        assert limiter.acquire("k", 30, None, 0) is None
    clock.advance(10)  # 30/60 per second: 5 back
    assert [limiter.acquire("k", 30, None, 0) is None for _ in range(6)] == [True] * 5 + [False]
    clock.advance(3600)  # never more than the limit
    assert sum(limiter.acquire("k", 30, None, 0) is None for _ in range(40)) == 30


def test_tokens_per_minute(clock: FakeClock, limiter: RateLimiter) -> None:
    assert limiter.acquire("k", None, 1000, 600) is None
    assert limiter.acquire("k", None, 1000, 400) is None
    assert limiter.acquire("k", None, 1000, 100) == pytest.approx(6.0)  # 100 tokens at 1000/60 per s
    assert limiter.acquire("k", None, 1000, 0) is None  # nothing requested, not in debt
    clock.advance(6)
    assert limiter.acquire("k", None, 1000, 100) is None


def test_both_limits_must_allow(clock: FakeClock, limiter: RateLimiter) -> None:
    # requests run out first
    for _ in range(3):
        assert limiter.acquire("a", 3, 10_000, 10) is None
    assert limiter.acquire("a", 3, 10_000, 10) == pytest.approx(20.0)
    # tokens run out first
    assert limiter.acquire("b", 100, 600, 600) is None
    assert limiter.acquire("b", 100, 600, 60) == pytest.approx(6.0)
    # both short: the longer wait, and nothing recorded on either
    assert limiter.acquire("c", 1, 60, 30) is None
    assert limiter.acquire("c", 1, 60, 60) == pytest.approx(60.0)
    clock.advance(30)
    assert limiter.acquire("c", 1, 60, 60) == pytest.approx(30.0)  # requests: 30 s more; tokens: 0
    clock.advance(30)
    assert limiter.acquire("c", 1, 60, 60) is None


def test_keys_are_independent(limiter: RateLimiter) -> None:
    assert limiter.acquire("user:ann", 1, None, 0) is None
    assert limiter.acquire("user:ann", 1, None, 0) is not None
    assert limiter.acquire("user:bob", 1, None, 0) is None
    assert limiter.acquire("dept:eng", None, 100, 100) is None
    assert limiter.acquire("dept:ops", None, 100, 100) is None


def test_no_limits_admit_everything(limiter: RateLimiter) -> None:
    assert all(limiter.acquire("k", None, None, 10**9) is None for _ in range(1000))


def test_settle_gives_back_an_overestimate_and_charges_an_underestimate(clock: FakeClock, limiter: RateLimiter) -> None:
    assert limiter.acquire("k", None, 1200, 1000) is None  # estimate (max_tokens)
    limiter.settle("k", estimated_tokens=1000, actual_tokens=200)  # really used 200
    assert limiter.acquire("k", None, 1200, 1000) is None  # 1000 left
    limiter.settle("k", estimated_tokens=1000, actual_tokens=1500)  # used 500 more than estimated
    # level: 1200 - 200 - 1500 = -500: even an empty request waits for the debt
    assert limiter.acquire("k", None, 1200, 0) == pytest.approx(25.0)  # 500 tokens at 20/s
    assert limiter.acquire("k", None, 1200, 100) == pytest.approx(30.0)
    clock.advance(30)
    assert limiter.acquire("k", None, 1200, 100) is None


def test_settle_never_lifts_a_bucket_above_its_limit(limiter: RateLimiter) -> None:
    assert limiter.acquire("k", None, 100, 10) is None
    limiter.settle("k", estimated_tokens=10, actual_tokens=0)
    limiter.settle("k", estimated_tokens=50, actual_tokens=0)  # a bogus refund
    assert limiter.acquire("k", None, 100, 100) is None
    assert limiter.acquire("k", None, 100, 1) is not None


def test_settle_can_give_back_the_request(limiter: RateLimiter) -> None:
    assert limiter.acquire("k", 1, 100, 50) is None
    limiter.settle("k", 50, 0, request_refund=True)  # e.g. a rollback: the call never went out
    assert limiter.acquire("k", 1, 100, 100) is None
    limiter.settle("unknown", 10, 0, request_refund=True)  # nothing to correct


def test_a_request_larger_than_the_minute_allowance_can_never_pass(limiter: RateLimiter) -> None:
    with pytest.raises(RequestExceedsRateLimit) as caught:
        limiter.acquire("user:ann", 10, 1000, 1001)
    error = caught.value
    assert isinstance(error, RequestTooLarge) and error.status_code == 413
    assert (error.key, error.tokens, error.tokens_per_minute) == ("user:ann", 1001, 1000)
    assert error.code == "exceeds_tokens_per_minute" and "1000 tokens per minute" in error.message
    # nothing was recorded: the whole allowance is still there
    assert limiter.acquire("user:ann", 1, 1000, 1000) is None


def test_a_raised_limit_adds_headroom_and_a_lowered_one_keeps_the_usage(clock: FakeClock, limiter: RateLimiter) -> None:
    assert limiter.acquire("k", None, 100, 70) is None
    assert limiter.acquire("k", None, 200, 130) is None  # 70 used of 200: 130 left at once
    assert limiter.acquire("k", None, 200, 1) is not None
    clock.advance(60)  # full again (200)
    assert limiter.acquire("k", None, 100, 70) is None  # 30 left of 100
    assert limiter.acquire("k", None, 50, 0) == pytest.approx(24.0)  # 70 used of 50: 20 in debt at 50/60 per s
    clock.advance(24)
    assert limiter.acquire("k", None, 50, 0) is None


def test_a_limit_that_is_lifted_and_restored(clock: FakeClock, limiter: RateLimiter) -> None:
    assert limiter.acquire("k", 1, None, 0) is None
    assert limiter.acquire("k", None, None, 0) is None  # no limit for this call: not counted
    assert limiter.acquire("k", 1, None, 0) == pytest.approx(60.0)


def test_acquire_all_is_all_or_nothing(clock: FakeClock, limiter: RateLimiter) -> None:
    user, dept = RateLimit("user:ann", 10, None), RateLimit("dept:eng", 2, None)
    assert limiter.acquire_all([user, dept], 0) is None
    assert limiter.acquire_all([user, dept], 0) is None
    assert limiter.acquire_all([user, dept], 0) == pytest.approx(30.0)  # the department is out
    # the refusal charged nobody: ann still has 8 of her own
    assert sum(limiter.acquire("user:ann", 10, None, 0) is None for _ in range(10)) == 8
    with pytest.raises(ValueError, match="at most once"):
        limiter.acquire_all([user, user], 0)


@pytest.mark.parametrize(
    ("rpm", "tpm", "tokens", "match"),
    [(0, None, 0, "requests_per_minute"), (None, -5, 0, "tokens_per_minute"), (None, None, -1, "tokens")],
)
def test_nonsense_arguments_are_refused(
    limiter: RateLimiter, rpm: int | None, tpm: int | None, tokens: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        limiter.acquire("k", rpm, tpm, tokens)


def test_a_clock_that_steps_back_refills_nothing(clock: FakeClock, limiter: RateLimiter) -> None:
    assert limiter.acquire("k", 1, None, 0) is None
    clock.advance(-30)
    assert limiter.acquire("k", 1, None, 0) == pytest.approx(60.0)
    clock.advance(90)
    assert limiter.acquire("k", 1, None, 0) is None


def test_keys_back_at_full_allowance_are_forgotten(clock: FakeClock, limiter: RateLimiter) -> None:
    for n in range(3000):
        assert limiter.acquire(f"user:{n}", 5, None, 0) is None
    assert len(limiter) == 3000  # sweeps (at 1024 and 2048 keys) only drop full buckets; none is full yet
    clock.advance(60)
    for n in range(3000, 5000):
        assert limiter.acquire(f"user:{n}", 5, None, 0) is None
    assert len(limiter) == 2000  # the first 3000 were full again and were dropped
    # and forgetting one is invisible: a forgotten key starts full, as it would have been
    assert sum(limiter.acquire("user:1", 5, None, 0) is None for _ in range(6)) == 5


def test_extra_tokens_settled_after_the_key_was_forgotten_still_count(clock: FakeClock, limiter: RateLimiter) -> None:
    assert limiter.acquire("user:ann", None, 1200, 100) is None
    clock.advance(600)  # a ten-minute stream: ann's bucket is full again, and a sweep forgets her
    for n in range(1100):
        assert limiter.acquire(f"user:{n}", None, 1200, 0) is None
    assert len(limiter) < 1100
    limiter.settle("user:ann", estimated_tokens=100, actual_tokens=700)  # 600 more than reserved
    limiter.settle("user:bob", estimated_tokens=100, actual_tokens=50)  # a refund to nobody: no-op
    assert limiter.acquire("user:ann", None, 1200, 600) is None  # 1200 - 600 extra
    assert limiter.acquire("user:ann", None, 1200, 1) == pytest.approx(0.05)


@pytest.fixture
def fast_thread_switches() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # make the interpreter switch threads mid-update as often as it can
    yield
    sys.setswitchinterval(before)


def contest(limiter: RateLimiter, threads: int = 16, tries: int = 200) -> int:
    """How many of `threads` x `tries` concurrent requests for ann of engineering are admitted."""
    admitted = [0] * threads
    start = threading.Barrier(threads)

    def worker(index: int) -> None:
        start.wait()
        for _ in range(tries):
            if limiter.acquire_all([RateLimit("user:ann", 1500, None), RateLimit("dept:eng", None, 7000)], 7) is None:
                admitted[index] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return sum(admitted)


@pytest.mark.usefixtures("fast_thread_switches")
def test_sixteen_threads_never_get_more_than_the_limit() -> None:
    for _ in range(10):  # a lost update shows in some rounds only
        limiter = RateLimiter(FakeClock())
        # 3200 tries while the clock stands still: exactly what the department's bucket holds, no more
        assert contest(limiter) == 7000 // 7
        # and each admission charged ann exactly once: 500 of her 1500 requests are left
        assert sum(limiter.acquire("user:ann", 1500, None, 0) is None for _ in range(600)) == 500


# -- properties ----------------------------------------------------------------------------------

calls = st.lists(
    st.tuples(st.integers(0, 90), st.integers(0, 400), st.booleans()),  # seconds later, tokens, key
    min_size=1,
    max_size=80,
)
limits = st.tuples(st.integers(1, 20), st.integers(400, 5000))


@settings(max_examples=200, deadline=None)
@given(steps=calls, limit=limits)
def test_decisions_match_an_exact_token_bucket(steps: list[tuple[int, int, bool]], limit: tuple[int, int]) -> None:
    """The float implementation decides exactly as the same algorithm in rational arithmetic."""
    rpm, tpm = limit
    clock = FakeClock(0.0)
    limiter = RateLimiter(clock)
    levels = {key: [Fraction(rpm), Fraction(tpm), Fraction(0)] for key in (True, False)}  # requests, tokens, at
    now = Fraction(0)
    for later_s, tokens, key in steps:
        now += later_s
        clock.now_s = float(now)
        level = levels[key]
        for i, capacity in ((0, rpm), (1, tpm)):
            level[i] = min(Fraction(capacity), level[i] + (now - level[2]) * capacity / 60)
        level[2] = now
        wait = max(Fraction(0), (1 - level[0]) * 60 / rpm, (tokens - level[1]) * 60 / tpm)
        got = limiter.acquire(f"user:{key}", rpm, tpm, tokens)
        if wait == 0:
            assert got is None
            level[0] -= 1
            level[1] -= tokens
        else:
            assert got == pytest.approx(float(wait), rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(0, 30), st.integers(0, 300)), min_size=1, max_size=120),
    limit=limits,
)
def test_no_window_gets_more_than_the_limit_plus_one_burst(
    steps: list[tuple[float, int]], limit: tuple[int, int]
) -> None:
    """Over any span of T seconds at most L + L*T/60 are admitted: 2L in any 60-second window."""
    rpm, tpm = limit
    clock = FakeClock(0.0)
    limiter = RateLimiter(clock)
    admitted: list[tuple[float, int]] = []
    for later_s, tokens in steps:
        clock.advance(later_s)
        if limiter.acquire("k", rpm, tpm, tokens) is None:
            admitted.append((clock.now_s, tokens))
    for first in range(len(admitted)):
        requests = used = 0
        for last in range(first, len(admitted)):
            span_s = admitted[last][0] - admitted[first][0]
            requests += 1
            used += admitted[last][1]
            assert requests <= rpm + rpm * span_s / 60 + 1e-6
            assert used <= tpm + tpm * span_s / 60 + 1e-6
            if span_s < 60:
                assert requests <= 2 * rpm and used <= 2 * tpm


@settings(max_examples=300, deadline=None)
@given(
    start_s=st.floats(0, 1e7),
    limit=limits,
    steps=st.lists(st.tuples(st.floats(0, 5), st.integers(0, 400)), min_size=1, max_size=40),
)
def test_retrying_after_the_wait_succeeds(
    start_s: float, limit: tuple[int, int], steps: list[tuple[float, int]]
) -> None:
    """On any clock reading, a refused request is admitted once its wait has passed, not before."""
    rpm, tpm = limit
    clock = FakeClock(start_s)
    limiter = RateLimiter(clock)
    for later_s, tokens in steps:
        clock.advance(later_s)
        wait = limiter.acquire("k", rpm, tpm, tokens)
        if wait is not None:
            assert wait > 0
            if wait > 0.01:
                clock.advance(wait * 0.999)
                assert limiter.acquire("k", rpm, tpm, tokens) is not None
                clock.advance(wait * 0.001)
            else:
                clock.advance(wait)
            assert limiter.acquire("k", rpm, tpm, tokens) is None
