"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.benchmarks.upstream import ScriptedUpstream
from agent.policy.model import parse_policy
from agent.policy.publish import Signed, publish
from agent.policy.signing import generate_keypair, sign
from tests.conftest import RunningAgent
from tests.support.governed import MODEL, OTHER, PRICING, Governed


@pytest.fixture
def governed(
    start_agent: Callable[..., RunningAgent], upstream: ScriptedUpstream, tmp_path: Path
) -> Callable[..., Governed]:
    def start(body: bytes, **settings: Any) -> Governed:
        key, public = generate_keypair()
        share = tmp_path / "share"
        share.mkdir(exist_ok=True)
        publish(Signed(parse_policy(body), body, sign(body, key)), share)
        agent = start_agent(
            cloud=[{"name": "scripted", "base_url": upstream.base_url, "models": [MODEL, OTHER], "max_retries": 0}],
            pricing=PRICING,
            share={"path": str(share), "public_keys": [public], "sync_interval_s": 5},
            **({"cache": {"enabled": False}} | settings),  # by default every request reaches the provider
        )
        g = Governed(agent, share, key)
        g.wait_for_version(parse_policy(body).version)
        return g

    return start
