"""Runs `aifinops bench routing` on the rows the shipped router never saw; writes the section.

The default artifact was trained by `aifinops router train --holdout 0.2 --seed 1` on the two
dev files (see agent/routing/default_router.md). Its nearest-neighbour memory holds the training
rows, so scoring a training row would find itself: only the held-out rows are honest. This script
rebuilds that exact split (agent.routing.training.holdout_mask), writes the held-out rows of each
file to .cache/bench/routing/, and runs the real command on them; then on MT-Bench, which the
router never trained on (open-ended chat judged by GPT-4: a cross-distribution check); then the
method's 5-fold cross-validation on the dev files (`aifinops router cv`), the steadier figure.

.venv/bin/python bench/routing.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.routing.training import holdout_mask, read_labelled  # noqa: E402
from bench.report import update_section  # noqa: E402

DATA = REPO.parent / "shared" / "data"
FILES = ("routing_mmlu_routing_dev.jsonl", "routing_gsm8k_routing_dev.jsonl")
MTBENCH = "routing_mtbench.jsonl"
OUT = REPO / ".cache" / "bench" / "routing"
HOLDOUT, SEED = 0.2, 1  # as recorded in the artifact's report


def held_out_files() -> dict[str, Path]:
    """The held-out rows of each file, as JSON lines in the original format."""
    rows = [row for name in FILES for row in read_labelled(DATA / name)]
    lines = [line for name in FILES for line in (DATA / name).read_text(encoding="utf-8").split("\n") if line.strip()]
    assert len(lines) == len(rows)
    mask = holdout_mask(rows, HOLDOUT, SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name in FILES:
        stem = Path(name).stem
        path = OUT / f"{stem}.heldout.jsonl"
        kept = [line for line, row, m in zip(lines, rows, mask, strict=True) if m and row.source == stem]
        path.write_text("\n".join(kept) + "\n", encoding="utf-8")
        out[name] = path
    return out


def main() -> None:
    report = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import numpy as n;print(str(n.load('agent/routing/default_router.npz')['report']))",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert report["holdout"] == HOLDOUT and report["seed"] == SEED, "the artifact was trained with another split"
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "AIFINOPS_HOME": home}
        env.setdefault("AIFINOPS_MODELS__DIR", str(REPO / ".cache" / "models"))
        for name, path in [*held_out_files().items(), (MTBENCH, DATA / MTBENCH)]:
            cmd = [sys.executable, "-m", "agent", "bench", "routing", "--prompts", str(path), "--json"]
            results[name] = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
            r = results[name]
            print(f"{name}: {r['rows']} rows, strong share at 95% {r['strong_share_at_95']}", flush=True)
        cmd = [sys.executable, "-m", "agent", "router", "cv", "--json"] + [f"--data={DATA / f}" for f in FILES]
        cv = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    lines = [
        "| file (held-out rows) | rows | all-weak acc. | all-strong acc. | strong share at 95% | cost reduction at 95% "
        "| goal | RouteLLM (cost reduction) | decision p50 / p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    goals = {FILES[0]: ("<= 0.40", "45%"), FILES[1]: ("<= 0.50", "35%"), MTBENCH: ("(report only)", "")}
    for name, r in results.items():
        goal, anchor = goals[name]
        lines.append(
            f"| `{name}` | {r['rows']} | {r['all_weak_accuracy']} | {r['all_strong_accuracy']} | "
            f"**{r['strong_share_at_95']}** | {r['cost_reduction_at_95']} | {goal} | {anchor} | "
            f"{r['decision_ms_p50']} / {r['decision_ms_p99']} |"
        )
    prices = next(iter(results.values()))["prices"]
    lines += [
        "",
        f"Prices: cheap `{prices['cheap']['model']}`, strong `{prices['strong']['model']}` (genai-prices), "
        f"{prices['output_tokens_per_answer']} output tokens assumed per answer. Decision time excludes the "
        "embedding (shared with the cache, measured in its section).",
        "",
    ]
    for name, r in results.items():
        lines += [
            f"Sweep, `{name}`:",
            "",
            "| threshold | strong share | accuracy | quality retained | cost reduction |",
        ]
        lines.append("|---|---|---|---|---|")
        for p in r["sweep"][:: max(1, len(r["sweep"]) // 12)]:
            lines.append(
                f"| {p['threshold']} | {p['strong_share']} | {p['accuracy']} | {p['quality_retained']} | "
                f"{p['cost_reduction']} |"
            )
        lines.append("")
    lines += [
        "Cross-validated (`aifinops router cv`, 5 folds stratified by file, fold seeds 1-3, out-of-fold scores",
        "pooled per file; contaminated rows neither trained on nor scored):",
        "",
        "| file | rows | strong share at 95% | AUC | goal |",
        "|---|---|---|---|---|",
    ]
    for name in FILES:
        r = cv[Path(name).stem]
        lines.append(f"| `{name}` | {r['rows']} | **{r['strong_share_at_95']}** | {r['auc']} | {goals[name][0]} |")
    lines += [
        "",
        "The held-out rows are one 20% split (121 GSM8K rows: about +-0.1 between splits); the cross-validated",
        "figures are the steadier estimate. Neither goal is met: see agent/routing/default_router.md for the",
        "methods tried and RouteLLM's published figures on the same data.",
    ]
    command = (
        ".venv/bin/aifinops bench routing --prompts .cache/bench/routing/<file>.heldout.jsonl --json"
        "   # via bench/routing.py"
    )
    command += "\n.venv/bin/aifinops router cv --data ../shared/data/routing_mmlu_routing_dev.jsonl --data ../shared/data/routing_gsm8k_routing_dev.jsonl --json"
    update_section("routing", "Router: held-out MMLU and GSM8K, MT-Bench, cross-validation", command, "\n".join(lines))


if __name__ == "__main__":
    main()
