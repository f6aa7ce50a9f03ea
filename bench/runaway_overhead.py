"""What the runaway watch costs a request: ``RunawayWatch.observe`` timed over many calls (each
request feeds four tests: its user, department, feature and model), for users with baselines (the
common case) and new users (their department's per-member baseline); then the share of a core at
10 requests/s.

    .venv/bin/python bench/runaway_overhead.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    import numpy as np

    from agent.budgets.anomaly import Baseline
    from agent.budgets.runaway import RunawayWatch
    from agent.ledger.database import Database
    from agent.ledger.events import EventLog

    with tempfile.TemporaryDirectory() as tmp:
        db = Database.open(Path(tmp) / "bench.db")
        watch = RunawayWatch(db, EventLog(db), lambda: None)
        # 500 users with a baseline of 30 requests an hour (the test then never alarms at 10/s spread over them).
        watch._baselines = {f"user:u{i}": Baseline(np.full(168, 30.0)) for i in range(500)}
        busy = Baseline(np.full(168, 15_000.0))  # the 500 together
        watch._baselines |= {"member:eng": Baseline(np.full(168, 30.0)), "department:eng": busy,
                             "feature:chat": busy, "model:gpt-4o-mini": busy}  # fmt: skip
        start = datetime(2026, 3, 2, 9, tzinfo=UTC)
        moments = [start + timedelta(seconds=i * 0.1) for i in range(args.calls)]
        results = {}
        for label, users in (("with a baseline", [f"u{i % 500}" for i in range(args.calls)]),
                             ("new users (their department's)", [f"new{i % 500}" for i in range(args.calls)])):  # fmt: skip
            runs = []
            for _ in range(5):
                t0 = time.perf_counter()
                for user, moment in zip(users, moments, strict=True):
                    watch.observe(user, "eng", "chat", "gpt-4o-mini", moment)
                runs.append((time.perf_counter() - t0) / args.calls * 1e6)
            results[label] = statistics.median(runs)
        db.close()
    lines = ["| case | per request (µs, median of 5 runs) | share of a core at 10 requests/s |", "|---|---|---|"]
    for label, us in results.items():
        lines.append(f"| {label} | {us:.2f} | {us * 10 / 1e6:.6%} |")
        print(f"{label}: {us:.2f} µs per request")
    body = "\n".join(lines) + (
        f"\n\n{args.calls} calls per run, 500 users in one department, one call every 0.1 s of request time, each watched as user, department, feature and model. Goal (issue 19): <= 20 µs "
        "per request and <= 1% of a core at 10 requests/s. Learning the baselines is the scheduler's hourly job, "
        "off the request path."
    )
    update_section("runaway-overhead", "Runaway watch: cost per request", ".venv/bin/python bench/runaway_overhead.py", body)


if __name__ == "__main__":
    main()
