"""Runs `aifinops bench compress` and `aifinops bench replay` on the shared files; writes both sections.

.venv/bin/python bench/pipeline.py [--only compress|replay]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402

DATA = REPO.parent / "shared" / "data"

COMPRESS_RUNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("prompts_vicuna_bench.jsonl", ()),
    ("routing_mtbench.jsonl", ()),
    ("routing_mmlu_routing_dev.jsonl", ("--limit", "200", "--concat", "8")),
    ("routing_mmlu_routing_dev.jsonl", ("--limit", "200", "--concat", "8", "--lossy")),
)
REPLAY_RUNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("prompts_vicuna_bench.jsonl", ("--repeat", "2")),
    ("routing_mtbench.jsonl", ()),
    ("qqp_pairs_dev.jsonl", ("--limit", "200")),
    ("prompts_vicuna_bench.jsonl", ("--cascade",)),
)


def aifinops(env: dict[str, str], *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "agent", "bench", *args, "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def compress(env: dict[str, str]) -> None:
    lines = [
        "| file | options | conversations | tokens before -> after | ratio (all / long) | ms per 1k tokens | "
        "numbers and names checked / prompts that lost one |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, options in COMPRESS_RUNS:
        r = aifinops(env, "compress", "--prompts", str(DATA / name), *options)
        print(name, options, json.dumps(r)[:300], flush=True)
        lines.append(
            f"| `{name}` | `{' '.join(options) or '(defaults)'}` | {r['conversations']} | "
            f"{r['tokens_before']} -> {r['tokens_after']} | {r['ratio']} / {r['long_ratio']} | "
            f"{r['ms_per_1k_tokens']} | {r['terms_checked']} / {r['conversations_losing_terms']} |"
        )
    body = "\n".join(lines) + (
        "\n\nLossless steps (on by default) barely change clean prompts: the dev files hold no repeated\n"
        "blocks, markup or long histories. Lossy compression (off by default, per policy) keeps about\n"
        "0.6 of a long prompt's tokens and never drops a number, a name, code or the question, but it\n"
        "can change meaning elsewhere (an MMLU option `C. Not wrong, Wrong` became `C. Not Wrong`), and\n"
        "on 2 cores it costs seconds per 1k tokens (one llama.cpp pass with logits for every token).\n"
    )
    command = ".venv/bin/aifinops bench compress --prompts ../shared/data/<file> [options] --json   # bench/pipeline.py"
    update_section("compress", "Prompt optimiser: compression", command, body)


def replay(env: dict[str, str]) -> None:
    lines = [
        "| file | options | requests | answered by | paid (USD) | all-strong | all-cheap | saved vs all-strong | "
        "by cache | by routing | by compression |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, options in REPLAY_RUNS:
        r = aifinops(env, "replay", "--prompts", str(DATA / name), *options)
        print(name, options, json.dumps(r)[:300], flush=True)
        by = r["saved_by"]
        answered = ", ".join(f"{k} {v}" for k, v in r["answered_by"].items())
        lines.append(
            f"| `{name}` | `{' '.join(options) or '(defaults)'}` | {r['requests']} | {answered} | "
            f"{r['total_cost_usd']} | {r['all_strong_cost_usd']} | {r['all_cheap_cost_usd']} | "
            f"{r['saved_vs_all_strong']} | {by['cache']} | {by['routing']} | {by['compression']} |"
        )
    prices = r["prices"]
    body = "\n".join(lines) + (
        f"\n\nTiers: local SmolLM2-135M (priced at {prices['local_usd_per_hour']} USD per compute hour), "
        f"cheap `{prices['cheap']}`, strong `{prices['strong']}` (genai-prices), answered by the scripted\n"
        f"OpenAI-compatible server with a {prices['cloud_answer_tokens']}-token answer; baselines price every "
        "request at the original prompt and that answer length.\nThe shares add up: cache + routing + "
        "compression = saved vs all-strong. Routing includes what cascade attempts cost.\n"
    )
    command = ".venv/bin/aifinops bench replay --prompts ../shared/data/<file> [options] --json   # bench/pipeline.py"
    update_section("replay", "Whole pipeline: replayed prompts, cost against all-strong and all-cheap", command, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=("compress", "replay"), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "AIFINOPS_HOME": home}
        env.setdefault("AIFINOPS_MODELS__DIR", str(REPO / ".cache" / "models"))
        env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))
        if args.only in (None, "compress"):
            compress(env)
        if args.only in (None, "replay"):
            replay(env)


if __name__ == "__main__":
    main()
