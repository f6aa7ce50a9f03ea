"""Runs `aifinops bench cache-quality` on the shared pairs files and writes the figures.

.venv/bin/python bench/cache_quality.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402

DATA = REPO.parent / "shared" / "data"
FILES = ("qqp_pairs_dev.jsonl", "gptcache_mock_pairs.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "AIFINOPS_HOME": home}
        env.setdefault("AIFINOPS_MODELS__DIR", str(REPO / ".cache" / "models"))
        env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))
        for name in FILES:
            cmd = [sys.executable, "-m", "agent", "bench", "cache-quality", "--pairs", str(DATA / name), "--json"]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            results[name] = json.loads(out)
            r = results[name]
            print(f"{name}: precision {r['precision']} recall {r['recall']} at {r['threshold']} ({r['pairs']} pairs)")
    lines = []
    for name, r in results.items():
        lines += [
            f"### `{name}`: {r['pairs']} pairs, {r['duplicates']} duplicates",
            "",
            f"Default (threshold {r['threshold']}, guard on): **precision {r['precision']}, recall {r['recall']}**, "
            f"{r['hits']} hits of which {r['wrong_answers_served']} wrong answers served.",
            "",
            "| threshold | precision (guard on) | recall (guard on) | precision (guard off) | recall (guard off) |",
            "|---|---|---|---|---|",
        ]
        for on, off in zip(r["sweep"], r["sweep_guard_off"], strict=True):
            lines.append(
                f"| {on['threshold']:.2f} | {on['precision']} | {on['recall']} | {off['precision']} | {off['recall']} |"
            )
        lines.append("")
    body = "\n".join(lines) + (
        "\nThe guard (numbers, dates, negation and names must agree) is the second stage; the sweep with it off\n"
        "shows what it buys. Each pair gets its own user scope, so q2 can only be served q1's answer.\n"
    )
    command = (
        ".venv/bin/aifinops bench cache-quality --pairs ../shared/data/<file> --json   # via bench/cache_quality.py"
    )
    update_section("cache-quality", "Semantic cache: quality on labelled pairs", command, body)


if __name__ == "__main__":
    main()
