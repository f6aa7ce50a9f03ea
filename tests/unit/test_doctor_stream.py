"""`aifinops doctor` shows its first checks before the slow ones run (the runtimes, the agent)."""

from __future__ import annotations

from pathlib import Path

from agent.doctor import iter_checks
from agent.settings import load_settings


def test_the_first_checks_come_before_the_agent_is_asked(tmp_path: Path) -> None:
    asked: list[str] = []
    checks = iter_checks(load_settings(home=tmp_path), lambda: asked.append("agent"))  # type: ignore[arg-type, func-returns-value]
    first = next(checks)
    assert {c.area for c in first} <= {"paths", "ledger"} and not asked  # shown while the rest is still to check
    rest = [c for group in checks for c in group]
    assert asked == ["agent"] and rest[-1].area == "agent" and rest[-1].detail == "not reachable"
