"""What the agent adds to a chat request as the prompt grows: 10, 1k, 10k and 100k tokens, sent
sequentially (concurrency 1) to a fast scripted upstream directly, through the agent, and through
a LiteLLM proxy when the `litellm` command is installed; the added p50 and p99 per size.

Two ways: the same prompt again and again (agent traffic resends its long system prompt and
history with every call: the agent counts and normalises a text it has seen from memory), and a
prompt never seen before on every request (every 50th word is a number unique to the request, so
no part of it was seen before either).

The agent runs as in bench/overhead.py (its own process, cache off, metrics on by default); the
prompt is varied English-like text (words drawn from this repository's README) of the given o200k
size, so tokenising cannot lean on repeated words.

    .venv/bin/python bench/prompt_overhead.py [--requests 300] [--sizes 10,1000,10000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.pricing.tokens import count_text_tokens  # noqa: E402
from bench.overhead import free_port, start_agent, wait_http  # noqa: E402
from bench.report import update_section  # noqa: E402


def prompt_of(tokens: int, rng: random.Random) -> str:
    words = (REPO / "README.md").read_text(encoding="utf-8").split()
    text: list[str] = []
    while True:
        text.extend(rng.choice(words) for _ in range(max(tokens // 8, 4)))
        if count_text_tokens(" ".join(text)) >= tokens:
            break
    while len(text) > 1 and count_text_tokens(" ".join(text[:-1])) >= tokens:  # trim to the size
        text.pop()
    return " ".join(text)


def unique_throughout(text: str, every: int = 50) -> str:
    """``text`` with every ``every``-th word a number unique to each request (bench/http_load.py's
    #SEQ#): no sentence, paragraph or piece of the prompt repeats from one request to the next."""
    words = text.split(" ")
    return " ".join("#SEQ#" if i % every == 0 else word for i, word in enumerate(words))


def run_load(url: str, token: str, body_file: Path, requests: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "http_load.py"), url, token, f"@{body_file}", "1",
                          str(requests)], capture_output=True, text=True, check=True)  # fmt: skip
    result = json.loads(out.stdout)
    if result["error_count"]:
        raise RuntimeError(f"{url}: {result['error_count']} errors, e.g. {result['errors']}")
    lat = result["latencies_ms"]
    return {"p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "n": len(lat)}


LITELLM_CONFIG = """model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:{port}/v1
      api_key: none
"""


LITELLM_KEY = "sk-bench-" + secrets.token_hex(16)  # the proxy refuses to start without a master key


def start_litellm(
    command: str | None, tmp: Path, up_port: int, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int] | None:
    if command is None:
        return None
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(port=up_port))
    process = subprocess.Popen([command, "--config", str(config), "--port", str(port)],
                               env={**env, "LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--sizes", default="10,1000,10000,100000")
    parser.add_argument("--litellm", default=shutil.which("litellm"), help="the litellm command (default: PATH's)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    rng = random.Random(21)
    up_port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    rows: list[tuple[int, int, bool, dict[str, dict[str, float]]]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        upstream = subprocess.Popen([sys.executable, "-m", "agent.benchmarks.upstream", "--port", str(up_port)],
                                    cwd=REPO, env=env)  # fmt: skip
        processes.append(upstream)
        try:
            agent, agent_port = start_agent(tmp / "agent", up_port, "", env)
            processes.append(agent)
            litellm = start_litellm(args.litellm, tmp, up_port, env)
            if litellm is not None:
                processes.append(litellm[0])
            wait_http(f"http://127.0.0.1:{agent_port}/api/v1/info")
            wait_http(f"http://127.0.0.1:{up_port}/v1/chat/completions")
            token = (tmp / "agent" / "config" / "token").read_text().strip()
            urls = {
                "direct": f"http://127.0.0.1:{up_port}/v1/chat/completions",
                "aifinops": f"http://127.0.0.1:{agent_port}/v1/chat/completions",
            }
            if litellm is not None:
                wait_http(f"http://127.0.0.1:{litellm[1]}/health/liveliness")
                urls["litellm"] = f"http://127.0.0.1:{litellm[1]}/v1/chat/completions"
            for size in sizes:
                text = prompt_of(size, rng)
                n = args.requests if size <= 10_000 else max(args.requests // 5, 30)
                for fresh in (False, True):
                    body_file = tmp / f"body-{size}-{fresh}.json"
                    content = unique_throughout(text) if fresh else text
                    messages = [{"role": "user", "content": content}]
                    body_file.write_text(json.dumps({"model": "bench-model", "messages": messages, "max_tokens": 16}))
                    for name, url in urls.items():
                        run_load(url, LITELLM_KEY if name == "litellm" else token, body_file, min(n, 20))  # warm-up
                    keys = {"litellm": LITELLM_KEY}
                    results = {name: run_load(url, keys.get(name, token), body_file, n) for name, url in urls.items()}
                    rows.append((size, count_text_tokens(text), fresh, results))
                    print(f"{size} tokens{' (new each time)' if fresh else ''}: " + "; ".join(
                        f"{k} p50 {v['p50']:.2f} p99 {v['p99']:.2f} ms" for k, v in results.items()), flush=True)  # fmt: skip
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(30)
    report(rows, args, litellm_installed=args.litellm is not None)


def report(rows: list[tuple[int, int, bool, dict[str, dict[str, float]]]], args: argparse.Namespace,
           litellm_installed: bool) -> None:  # fmt: skip
    head = ("| prompt (o200k tokens) | prompt | requests | direct p50 / p99 (ms) | aifinops p50 / p99 (ms) | "
            "aifinops added p50 / p99 (ms) |")  # fmt: skip
    rule = "|---|---|---|---|---|---|"
    if litellm_installed:
        head += " LiteLLM p50 / p99 (ms) | LiteLLM added p50 (ms) |"
        rule += "---|---|"
    table = [head, rule]
    for _size, tokens, fresh, r in rows:
        d, a = r["direct"], r["aifinops"]
        line = (f"| {tokens:,} | {'new each time' if fresh else 'the same again'} | {a['n']} | {d['p50']:.2f} / {d['p99']:.2f} | {a['p50']:.2f} / {a['p99']:.2f} | "
                f"{a['p50'] - d['p50']:.2f} / {a['p99'] - d['p99']:.2f} |")  # fmt: skip
        if "litellm" in r:
            x = r["litellm"]
            line += f" {x['p50']:.2f} / {x['p99']:.2f} | {x['p50'] - d['p50']:.2f} |"
        table.append(line)
    litellm_note = (
        ""
        if litellm_installed
        else (
            "\n\nLiteLLM was not installed on this run (`pip install 'litellm[proxy]'` puts a `litellm` command on "
            "the PATH; the bench then runs its proxy beside the agent on the same upstream)."
        )
    )
    body = (
        "Sequential requests (concurrency 1), non-streamed, `max_tokens` 16, cache off, metrics on (the "
        "default); the upstream is the scripted one of bench/overhead.py in its own process. \"The same "
        "again\" sends one prompt every time, as agent traffic resends its system prompt and history; \"new "
        "each time\" makes every 50th word a number unique to the request, so no sentence of it was seen "
        "before.\n\n"
        + "\n".join(table)
        + litellm_note
    )
    command = f".venv/bin/python bench/prompt_overhead.py --requests {args.requests} --sizes {args.sizes}"
    if args.litellm and args.litellm != shutil.which("litellm"):
        command += f" --litellm {args.litellm}"
    update_section("prompt-overhead", "Agent overhead by prompt size (10 to 100k tokens)", command, body)


if __name__ == "__main__":
    main()
