"""An idle agent's log stays quiet: ten simulated minutes of every scheduled job (policy sync,
fleet publish and budget refresh on a share, GPU sampling from a replayed trace, idle unload
checks), some run by the scheduler itself and the rest called directly, write no INFO line;
and the JSON format writes one parseable object per line."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.logs import setup_logging
from agent.policy.model import parse_policy
from agent.policy.publish import Signed, publish
from agent.policy.signing import generate_keypair, sign
from agent.server import AgentThread
from agent.settings import load_settings
from tests.support.policies import department_budget

GPU_TRACE = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "idle_1h.csv"
SIMULATED_S = 600


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Path]:
    """setup_logging into a folder of the test's, undone afterwards (it configures the root logger)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {name: logging.getLogger(name).level for name in ("apscheduler", "httpx", "httpcore")}
    yield tmp_path / "logs"
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    for name, old in chatty.items():
        logging.getLogger(name).setLevel(old)


def idle_agent(tmp_path: Path, chat_model_path: Path) -> AgentThread:
    share = tmp_path / "share"
    share.mkdir()
    key, public = generate_keypair()
    body = department_budget("100")
    publish(Signed(parse_policy(body), body, sign(body, key)), share)
    settings = load_settings(
        home=tmp_path / "home",
        overrides={
            "agent": {"port": 0},
            "share": {"path": str(share), "public_keys": [public], "sync_interval_s": 5},
            "fleet": {"publish_interval_s": 5, "budget_refresh_s": 5},
            "gpu": {"trace": str(GPU_TRACE), "sample_interval_s": 0.5, "usd_per_hour": {"default": "1"}},
        },
    )
    return AgentThread(settings).start()


def info_lines(log_file: Path, offset: int) -> list[str]:
    with log_file.open(encoding="utf-8") as f:
        f.seek(offset)
        return [line for line in f if " INFO " in line or " WARNING " in line or " ERROR " in line]


def test_ten_idle_minutes_write_no_info_line(logged: Path, tmp_path: Path, chat_model_path: Path) -> None:
    setup_logging(logged, "INFO")
    agent = idle_agent(tmp_path, chat_model_path)
    try:
        # Start-up is over (and has said what it says) once the share's policy is applied.
        deadline = time.monotonic() + 60
        while agent.services.policy.current is None:
            assert time.monotonic() < deadline, "the agent did not finish starting"
            time.sleep(0.1)
        time.sleep(0.5)
        log_file = logged / "agent.log"
        start = log_file.stat().st_size
        scheduler = agent.services.scheduler
        jobs = scheduler.get_jobs()
        assert {"policy-sync", "fleet-publish", "fleet-budgets", "gpu-sample", "unload-local"} <= {j.id for j in jobs}
        for job in jobs:  # through the scheduler itself: its "Running job" lines are what used to flood
            for _ in range(3):
                job.modify(next_run_time=datetime.now(UTC))
                scheduler.wakeup()
                time.sleep(0.2)
        for job in jobs:  # the rest of ten minutes' runs, called directly
            runs = math.ceil(SIMULATED_S / job.trigger.interval.total_seconds())
            for _ in range(runs):
                job.func(*job.args, **job.kwargs)
        assert agent.services.gpu_sampler is not None and agent.services.gpu_sampler.minutes_written > 0
        for handler in logging.getLogger().handlers:
            handler.flush()
        assert info_lines(log_file, start) == []
    finally:
        agent.stop()


def test_json_lines(logged: Path) -> None:
    setup_logging(logged, "INFO", fmt="json")
    log = logging.getLogger("agent.test")
    log.info("policy version %d applied", 7)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed with key sk-abcdef123456")
    for handler in logging.getLogger().handlers:
        handler.flush()
    lines = [json.loads(line) for line in (logged / "agent.log").read_text(encoding="utf-8").splitlines()]
    assert [(r["level"], r["logger"], r["message"]) for r in lines] == [
        ("INFO", "agent.test", "policy version 7 applied"),
        ("ERROR", "agent.test", "it failed with key sk-***"),
    ]
    assert "ValueError: boom" in lines[1]["exc"] and datetime.fromisoformat(lines[0]["ts"]).tzinfo is not None
