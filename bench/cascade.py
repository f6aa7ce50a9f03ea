"""The cascade's local half: what the confidence signal costs, and how it separates answers.

1. Overhead. The same greedy generation (prompt tokens, max_tokens, one thread count) on a plain
   `llama_cpp.Llama` and on the provider's scoring subclass, alternating runs, median tok/s;
   plus the per-token cost of the log-softmax alone, and `logits_all=True` + `logprobs` (the
   expensive way) for comparison.
2. Separation. The provider answers, greedy, short max_tokens:
   - questions whose answer is known: small sums ("What is 12 + 7?", the last number of the
     answer must be the sum) and capitals of 60 countries (the answer must name the city):
     confidence of right vs wrong answers;
   - MMLU rows from the shared routing file, asked for the letter. The file has no gold
     letter (only whether Mixtral / GPT-4 got it right), so it reports the confidence
     distribution, by the row's difficulty label.
   For a sweep of thresholds: the share escalated, the accuracy of the answers kept local, and the
   cascade's extra latency (the local generation time spent on requests that escalate).

    .venv/bin/python bench/cascade.py [--runs 7] [--max-tokens 128] [--rows 60] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402

DATA = REPO.parent / "shared" / "data"
MMLU = DATA / "routing_mmlu_routing_dev.jsonl"
ESSAY = "Write a detailed essay about the history of lighthouses."
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "Delhi", "Russia": "Moscow", "Canada": "Ottawa",
    "Australia": "Canberra", "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Mexico": "Mexico City",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Nigeria": "Abuja", "South Africa": "Pretoria", "Turkey": "Ankara",
    "Greece": "Athens", "Poland": "Warsaw", "Sweden": "Stockholm", "Norway": "Oslo", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Switzerland": "Bern",
    "Austria": "Vienna", "Hungary": "Budapest", "the Czech Republic": "Prague", "Ireland": "Dublin",
    "Iceland": "Reykjavik", "Ukraine": "Kyiv|Kiev", "Romania": "Bucharest", "Bulgaria": "Sofia",
    "Serbia": "Belgrade", "Croatia": "Zagreb", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "the Philippines": "Manila", "South Korea": "Seoul", "Pakistan": "Islamabad", "Iran": "Tehran",
    "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Peru": "Lima", "Chile": "Santiago", "Colombia": "Bogota",
    "Venezuela": "Caracas", "Cuba": "Havana", "Morocco": "Rabat", "Ethiopia": "Addis Ababa", "Ghana": "Accra",
    "New Zealand": "Wellington", "Mongolia": "Ulaanbaatar|Ulan Bator", "Nepal": "Kathmandu",
    "Kazakhstan": "Astana", "Uruguay": "Montevideo",
}  # fmt: skip


@dataclass(frozen=True)
class Answer:
    confidence: float | None
    local_s: float  # wall time of the local call: what an escalated request waits before the cloud
    right: bool | None  # None when there is no gold answer
    label: str  # known answers: "sums, right" etc.; MMLU: the row's difficulty


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def auc(positive: list[float], negative: list[float]) -> float | None:
    """P(confidence of a positive > of a negative), ties count half."""
    if not positive or not negative:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def measure_overhead(path: Path, threads: int, runs: int, max_tokens: int) -> dict[str, Any]:
    import numpy as np
    from llama_cpp import Llama

    from agent.providers.local_llama import _answer_confidence, _logprob, _scoring_llama

    opts: dict[str, Any] = {"model_path": str(path), "n_ctx": 2048, "n_threads": threads, "n_threads_batch": threads}
    plain = Llama(**opts, verbose=False)
    scoring = _scoring_llama()(**opts, verbose=False)
    prompt = plain.tokenize(f"<|im_start|>user\n{ESSAY}<|im_end|>\n<|im_start|>assistant\n".encode(), special=True)

    def generate(llm: Any) -> tuple[float, int]:
        llm.reset()  # each run evaluates the whole prompt
        started = time.perf_counter()
        text = "".join(
            c["choices"][0]["text"]
            for c in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True)
        )
        if llm is scoring:
            _answer_confidence(llm, llm.sampled, text)
        return time.perf_counter() - started, len(llm.tokenize(text.encode(), add_bos=False))

    plain_tps, scoring_tps, counts = [], [], set()
    for run in range(runs + 1):  # the first round warms both up and is not counted
        p_s, p_n = generate(plain)
        s_s, s_n = generate(scoring)
        if run:
            plain_tps.append(p_n / p_s)
            scoring_tps.append(s_n / s_s)
            counts.add((p_n, s_n))
    scoring.close()

    logits = np.random.default_rng(0).normal(0, 4, plain.n_vocab()).astype(np.float32)
    scratch = np.empty_like(logits)
    loops = 2000
    started = time.perf_counter()
    for i in range(loops):
        _logprob(logits, i, scratch)
    logprob_us = (time.perf_counter() - started) / loops * 1e6
    plain.close()

    full = Llama(**opts, logits_all=True, verbose=False)
    full_tps = []
    for run in range(min(runs, 2) + 1):
        full.reset()
        started = time.perf_counter()
        out: Any = full.create_completion(prompt, max_tokens=max_tokens, temperature=0, logprobs=1)
        if run:
            full_tps.append(out["usage"]["completion_tokens"] / (time.perf_counter() - started))
    full.close()
    # Best runs: on a shared machine the other load only ever slows a run down.
    plain_best, scoring_best = max(plain_tps), max(scoring_tps)
    return {
        "plain_tps": plain_best,
        "scoring_tps": scoring_best,
        "plain_median_tps": statistics.median(plain_tps),
        "scoring_median_tps": statistics.median(scoring_tps),
        "logits_all_tps": max(full_tps),
        "overhead_us_per_token": (1 / scoring_best - 1 / plain_best) * 1e6,
        "logprob_us": logprob_us,
        "tokens": sorted(counts),
    }


def known_questions(n: int) -> list[tuple[str, str, Callable[[str], bool]]]:
    """(set, question, is the answer right) for n small sums and up to n capitals."""
    rng = random.Random(0)

    def last_number_is(total: int) -> Callable[[str], bool]:
        return lambda text: (m := re.findall(r"-?\d+", text)) != [] and int(m[-1]) == total

    def names(city: str) -> Callable[[str], bool]:
        return lambda text: any(c.lower() in plain(text) for c in city.split("|"))

    sums = [(rng.randrange(1, 21), rng.randrange(1, 21)) for _ in range(n)]
    return [("sums", f"What is {a} + {b}? Reply with the number only.", last_number_is(a + b)) for a, b in sums] + [
        ("capitals", f"What is the capital of {country}? Reply with the city only.", names(city))
        for country, city in list(CAPITALS.items())[:n]
    ]


def plain(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


def mmlu_rows(n: int) -> list[dict[str, Any]]:
    with MMLU.open(encoding="utf-8") as f:  # not splitlines(): prompts hold U+2028 and the like
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if not r.get("in_routellm_train_contamination_list")]
    return random.Random(0).sample(rows, n)


async def answer_all(provider: Any, questions: list[str], max_tokens: int) -> list[tuple[str, float | None, float]]:
    from agent.providers.base import CallProgress, ChatParams, Message

    out = []
    for i, question in enumerate(questions):
        progress = CallProgress()
        started = time.perf_counter()
        completion = await provider.complete(
            "local", (Message("user", question),), ChatParams(max_tokens=max_tokens, temperature=0), progress
        )
        out.append((completion.text, progress.confidence, time.perf_counter() - started))
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{len(questions)}", file=sys.stderr)
    return out


def separation(threads: int, rows: int) -> tuple[list[Answer], list[Answer], dict[str, int]]:
    from agent.models.store import ModelStore
    from agent.providers.local_llama import LocalLlamaProvider
    from agent.settings import LocalModelConfig

    models_dir = Path(os.environ.get("AIFINOPS_MODELS__DIR") or REPO / ".cache" / "models")
    provider = LocalLlamaProvider(LocalModelConfig(n_threads=threads), ModelStore(models_dir))
    known = known_questions(rows)
    mmlu = mmlu_rows(rows)

    async def run() -> tuple[list[Any], list[Any]]:
        try:
            a = await answer_all(provider, [q for _, q, _ in known], 12)
            b = await answer_all(provider, [r["prompt"] + "\nReply with the letter only." for r in mmlu], 8)
            return a, b
        finally:
            await provider.close()

    known_out, mmlu_out = asyncio.run(run())
    known_answers = []
    for (kind, _, is_right), (text, conf, s) in zip(known, known_out, strict=True):
        right = is_right(text)
        known_answers.append(Answer(conf, s, right, f"{kind}, {'right' if right else 'wrong'}"))
    letters: dict[str, int] = {}
    mmlu_answers = []
    for row, (text, conf, s) in zip(mmlu, mmlu_out, strict=True):
        letter = re.search(r"\b([ABCD])\b", text)
        key = letter.group(1) if letter else "none"
        letters[key] = letters.get(key, 0) + 1
        mmlu_answers.append(Answer(conf, s, None, row["difficulty"]))
    return known_answers, mmlu_answers, letters


def distribution_rows(answers: list[Answer], labels: list[str]) -> list[str]:
    lines = []
    for label in [*labels, "all"]:
        conf = [a.confidence for a in answers if (label == "all" or a.label == label) and a.confidence is not None]
        if conf:
            lines.append(
                f"| {label} | {len(conf)} | {pct(conf, 0.1):.2f} | {pct(conf, 0.25):.2f} | {statistics.median(conf):.2f} "
                f"| {pct(conf, 0.75):.2f} | {pct(conf, 0.9):.2f} |"
            )
    return lines


def sweep_rows(answers: list[Answer]) -> list[str]:
    lines = []
    for t in THRESHOLDS:
        escalated = [a for a in answers if a.confidence is None or a.confidence < t]
        kept = [a for a in answers if a not in escalated]
        share = len(escalated) / len(answers)
        extra_ms = sum(a.local_s for a in escalated) / len(answers) * 1000
        per_escalated = statistics.median([a.local_s for a in escalated]) * 1000 if escalated else 0.0
        graded = [a for a in kept if a.right is not None]
        kept_acc = f"{sum(a.right is True for a in graded) / len(graded):.2f}" if graded else "-"
        lines.append(f"| {t:.1f} | {share:.2f} | {kept_acc} | {per_escalated:.0f} | {extra_ms:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed generation runs per side (after one warm-up)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per overhead run")
    parser.add_argument("--rows", type=int, default=60, help="questions per separation set")
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    args = parser.parse_args()

    from agent.models.catalog import find_asset
    from agent.models.store import ModelStore
    from agent.settings import LocalModelConfig

    models_dir = Path(os.environ.get("AIFINOPS_MODELS__DIR") or REPO / ".cache" / "models")
    asset = find_asset("smollm2-135m-instruct")
    assert asset is not None
    path = ModelStore(models_dir).pull(asset)
    threads = LocalModelConfig().threads()

    o = measure_overhead(path, threads, args.runs, args.max_tokens)
    print(
        f"plain {o['plain_tps']:.1f} tok/s, with confidence {o['scoring_tps']:.1f} tok/s, "
        f"logits_all+logprobs {o['logits_all_tps']:.1f} tok/s; overhead {o['overhead_us_per_token']:.0f} us/token "
        f"(log-softmax alone {o['logprob_us']:.0f} us); tokens {o['tokens']}",
        file=sys.stderr,
    )
    known, mmlu, letters = separation(threads, args.rows)

    def known_auc(kind: str) -> str:
        right = [a.confidence for a in known if a.label == f"{kind}, right" and a.confidence is not None]
        wrong = [a.confidence for a in known if a.label == f"{kind}, wrong" and a.confidence is not None]
        value = auc(right, wrong)
        return f"{kind}: accuracy {len(right) / (len(right) + len(wrong)):.2f}, AUC " + (
            f"**{value:.2f}**" if value is not None else "n/a"
        )

    easy = [a.confidence for a in mmlu if a.label == "easy" and a.confidence is not None]
    not_easy = [a.confidence for a in mmlu if a.label != "easy" and a.confidence is not None]
    mmlu_auc = auc(easy, not_easy)
    local_ms = statistics.median([a.local_s for a in mmlu]) * 1000

    head = "| answers | n | p10 | p25 | median | p75 | p90 |\n|---|---|---|---|---|---|---|"
    sweep_head = (
        "| threshold | share escalated | accuracy of answers kept local | median local time of an escalated "
        "request (ms) | extra latency per request, all requests (ms) |\n|---|---|---|---|---|"
    )
    body = "\n".join(
        [
            "Confidence = geometric mean of the probabilities of the answer's tokens, read from the last-token",
            "logits after each sampling step (no `logits_all`). SmolLM2-135M-Instruct Q4_1, "
            f"{threads} thread(s), greedy.",
            "",
            f"| generation ({args.max_tokens} generated tokens, time incl. the prompt, {args.runs} alternating runs) "
            "| best tokens/s | median tokens/s |",
            "|---|---|---|",
            f"| plain `Llama` | {o['plain_tps']:.1f} | {o['plain_median_tps']:.1f} |",
            f"| with the confidence signal | {o['scoring_tps']:.1f} | {o['scoring_median_tps']:.1f} |",
            f"| `logits_all=True` + `logprobs=1` (best of {min(args.runs, 2)}) | {o['logits_all_tps']:.1f} | |",
            "",
            f"Overhead of the signal: {o['overhead_us_per_token']:.0f} us per token from the best runs (within the "
            f"noise of a shared machine); {o['logprob_us']:.0f} us per token for the log-softmax alone "
            "(49,152 logits), the figure to trust.",
            "",
            f"### Questions with a known answer ({len(known)}: sums `What is a + b?` with 1 <= a, b <= 20, "
            "and capitals of countries; max_tokens 12)",
            "",
            "Local accuracy and AUC of the confidence for right vs wrong answers (0.5 = no separation): "
            f"{known_auc('sums')}; {known_auc('capitals')}.",
            "",
            head,
            *distribution_rows(known, ["sums, right", "sums, wrong", "capitals, right", "capitals, wrong"]),
            "",
            sweep_head,
            *sweep_rows(known),
            "",
            f"### MMLU ({len(mmlu)} rows of `routing_mmlu_routing_dev.jsonl`, not contaminated, letter asked, "
            "max_tokens 8)",
            "",
            "The file has no gold letter, so no right/wrong for the local answer: the distribution is split by the",
            "row's difficulty label (easy: Mixtral right; hard: only GPT-4 right; both_fail). AUC of confidence for",
            f"easy vs the rest: {mmlu_auc if mmlu_auc is None else round(mmlu_auc, 2)}; letters answered: "
            f"{dict(sorted(letters.items()))}; median local time {local_ms:.0f} ms.",
            "",
            head,
            *distribution_rows(mmlu, ["easy", "hard", "both_fail"]),
            "",
            sweep_head,
            *sweep_rows(mmlu),
        ]
    )
    print(body)
    if args.write:
        update_section(
            "cascade",
            "Cascade: local confidence signal, its cost and how it separates answers",
            "make setup-test && .venv/bin/python bench/cascade.py --write",
            body,
        )


if __name__ == "__main__":
    main()
