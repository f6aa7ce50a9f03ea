"""Local generation through the agent vs raw llama-cpp-python: same model, prompt, settings.

Both sides generate the same number of tokens (greedy, a long answer capped by max_tokens),
one request at a time, alternating, with the same thread count. The figure is the ratio of
tokens per second, end to end as a client sees it (agent) vs the library call (raw).

    .venv/bin/python bench/local_generation.py [--runs 5] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a detailed essay about the history of lighthouses."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    import openai
    from llama_cpp import Llama

    from agent.identity import read_token_file
    from agent.models.catalog import find_asset
    from agent.models.store import ModelStore
    from agent.server import AgentThread
    from agent.settings import LocalModelConfig, load_settings

    models_dir = Path(os.environ.get("AIFINOPS_MODELS__DIR") or REPO / ".cache" / "models")
    asset = find_asset("smollm2-135m-instruct")
    assert asset is not None
    path = ModelStore(models_dir).pull(asset)
    threads = LocalModelConfig().threads()

    raw = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(
            home=home,
            overrides={
                "agent": {"port": 0, "log_level": "WARNING"},
                "models": {"dir": str(models_dir)},
                "cache": {"enabled": False},  # the same prompt again would be a cache hit
                "local_models": [{"name": "local", "n_threads": threads, "max_tokens": args.max_tokens}],
            },
        )
        agent = AgentThread(settings).start()
        client = openai.OpenAI(base_url=f"{agent.base_url}/v1", api_key=read_token_file(settings.paths.token_file))
        raw_tps, agent_tps, tokens = [], [], set()
        try:
            for run in range(args.runs + 1):  # the first round warms both up and is not counted
                started = time.perf_counter()
                r = raw.create_chat_completion(PROMPT, max_tokens=args.max_tokens, temperature=0, seed=1)
                raw_s = time.perf_counter() - started
                started = time.perf_counter()
                a = client.chat.completions.create(
                    model="local", messages=PROMPT, max_tokens=args.max_tokens, temperature=0, seed=1
                )  # type: ignore[arg-type]
                agent_s = time.perf_counter() - started
                assert a.usage is not None
                if run:
                    raw_tps.append(r["usage"]["completion_tokens"] / raw_s)
                    agent_tps.append(a.usage.completion_tokens / agent_s)
                    tokens.add((r["usage"]["completion_tokens"], a.usage.completion_tokens))
        finally:
            agent.stop()
            raw.close()
    raw_med, agent_med = statistics.median(raw_tps), statistics.median(agent_tps)
    ratio = agent_med / raw_med
    print(
        f"raw {raw_med:.1f} tok/s, agent {agent_med:.1f} tok/s, ratio {ratio:.3f}; tokens (raw, agent) {sorted(tokens)}"
    )
    body = (
        "| path | median tokens/s (prompt + generation, end to end) |\n|---|---|\n"
        f"| raw llama-cpp-python `create_chat_completion` | {raw_med:.1f} |\n"
        f"| through the agent (`openai` SDK, HTTP, ledger row) | {agent_med:.1f} |\n\n"
        f"Ratio agent / raw: **{ratio:.3f}** (goal >= 0.95). {args.runs} alternating runs after one warm-up, "
        f"SmolLM2-135M-Instruct Q4_1, {threads} thread(s), greedy, max_tokens {args.max_tokens}; "
        f"completion tokens per run (raw, agent): {sorted(tokens)}."
    )
    update_section(
        "local-generation",
        "Local generation: agent vs raw llama-cpp-python",
        "make setup-test && .venv/bin/python bench/local_generation.py",
        body,
    )


if __name__ == "__main__":
    main()
