"""A cloud endpoint's retries back off with jitter: agents refused together do not retry in step."""

from __future__ import annotations

import random

from agent.retry import backoff_s


def test_the_cloud_backoff_doubles_and_is_jittered_within_half_of_it() -> None:
    rng = random.Random(11)
    for attempts in range(1, 8):
        full = 0.5 * 2 ** (attempts - 1)
        waits = [backoff_s(0.5, attempts, rng) for _ in range(50)]
        assert all(full / 2 <= w <= full for w in waits)
        assert len(set(waits)) == 50  # no two agents (or tries) wait the same
