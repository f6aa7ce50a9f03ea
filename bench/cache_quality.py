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
            print(f"{name}: precision {r['precision']} recall {r['recall']} ({r['pairs']} pairs)")
    lines = []
    for name, r in results.items():
        left_out = r.get("left_out_as_trained", 0)
        lines += [
            f"### `{name}`: {r['pairs']} pairs, {r['duplicates']} duplicates"
            + (f" ({left_out} pairs the verifier trained or calibrated on left out)" if left_out else ""),
            "",
            f"Shipped defaults (min_precision {r['min_precision']}: verifier score >= {r['decision_threshold']}, "
            f"similarity floor {r['floor']}, guard on): **precision {r['precision']}, recall {r['recall']}**, "
            f"{r['hits']} hits of which {r['wrong_answers_served']} wrong answers served.",
            "",
            "| cache.min_precision | verifier score from | precision | recall | hits | wrong |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['min_precision']:.2f} | {row['decision_threshold']} | {row['precision']} | {row['recall']} "
            f"| {row['hits']} | {row['wrong']} |"
            for row in r["sweep"]
        ]
        lines += ["", "The similarity alone (verifier off, guard on), on the same pairs:", "",
                  "| threshold | precision | recall |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {row['threshold']:.2f} | {row['precision']} | {row['recall']} |" for row in r["similarity_only"]]
        lines.append("")
    body = "\n".join(lines) + (
        "\nEach pair gets its own user scope, so q2 can only be served q1's answer. The verifier's own training\n"
        "report (agent/cache/default_verifier.md) has the same split's figures from the training command.\n"
    )
    command = (
        ".venv/bin/aifinops bench cache-quality --pairs ../shared/data/<file> --json   # via bench/cache_quality.py"
    )
    update_section("cache-quality", "Semantic cache: quality on labelled pairs", command, body)


if __name__ == "__main__":
    main()
