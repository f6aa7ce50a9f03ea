"""A real agent governed by a signed policy on a folder standing for the share, with a scripted
cloud upstream: what the budget and alert tests share (the fixture is in tests/integration/conftest.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.policy.model import parse_policy
from agent.policy.publish import Signed, publish
from agent.policy.signing import sign
from tests.conftest import RunningAgent

MODEL, OTHER = "scripted-model", "other-model"
PRICING = {
    "overrides": {
        MODEL: {"input_usd_per_mtok": "10", "output_usd_per_mtok": "30"},
        OTHER: {"input_usd_per_mtok": "10", "output_usd_per_mtok": "30"},
    }
}
ANSWER_MICRO_USD = 11 * 10 + 7 * 30  # the scripted usage: 11 prompt and 7 completion tokens
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def policy_text(version: int, budget_usd: str, action: str = "block", extra: str = "") -> bytes:
    return f"""
version = {version}
organisation = "Test"
timezone = "Europe/Berlin"
default_department = "general"

[[budgets]]
name = "user-daily"
scope = "user"
match = "*"
period = "day"
amount_usd = "{budget_usd}"
action = "{action}"
alerts = [50, 100]
{extra}
""".encode()


@dataclass
class Governed:
    agent: RunningAgent
    share: Path
    key: bytes

    def publish(self, body: bytes) -> None:
        publish(Signed(parse_policy(body), body, sign(body, self.key)), self.share)

    def wait_for_version(self, version: int, timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.agent.http() as http:
            while True:
                report: dict[str, Any] = http.get("/api/v1/budgets").json()
                if report["policy_version"] == version:
                    return report
                assert time.monotonic() < deadline, f"policy version {version} not in force: {report}"
                time.sleep(0.2)

    def ask(self, http: httpx.Client, max_tokens: int = 7, model: str = MODEL) -> httpx.Response:
        return http.post("/v1/chat/completions", json={"model": model, "messages": QUESTION, "max_tokens": max_tokens})
