"""How long `aifinops` takes to say something: `--help`, `spend` and `budgets` (with no agent
there: their error; and against a running agent), `doctor`, and `chat` (its first token). Each command is a new process
(`python -m agent ...`, as the `aifinops` script runs it); the time is from the start of the
process to its first byte on stdout or stderr, and to its exit. Then `-X importtime` of
`aifinops spend`: the imports that cost the most.

    .venv/bin/python bench/cli_startup.py [--runs 15] [--baseline REF]

--baseline REF also runs the same commands from REF's agent/ and native/ (`git archive`, into a
temporary folder; same interpreter and packages), alternating with this tree's run by run.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.overhead import free_port, stop, wait_http  # noqa: E402
from bench.report import update_section  # noqa: E402

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


@dataclass(frozen=True)
class Case:
    label: str
    args: tuple[str, ...]
    with_agent: bool  # against the running agent; otherwise a port where nothing listens


CHAT = ("chat", "--model", "local", "--max-tokens", "4", "Hi")
CASES = (
    Case("`aifinops --help`", ("--help",), with_agent=False),
    Case("`aifinops spend`, no agent (its error)", ("spend",), with_agent=False),
    Case("`aifinops budgets`, no agent (its error)", ("budgets",), with_agent=False),
    Case("`aifinops spend`, agent running", ("spend",), with_agent=True),
    Case("`aifinops budgets`, agent running", ("budgets",), with_agent=True),
    Case("`aifinops doctor`, agent running", ("doctor",), with_agent=True),
    Case("`aifinops chat --model local --max-tokens 4 Hi`, agent running", CHAT, with_agent=True),
)


@dataclass(frozen=True)
class Timing:
    first_output_ms: float
    exit_ms: float


def run_once(tree: Path, args: tuple[str, ...], env: dict[str, str]) -> Timing:
    """One `python -m agent ARGS` from `tree` (its agent/ is the one imported)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *args], cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    first: float | None = None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif first is None:
                    first = time.perf_counter()
    proc.wait()
    end = time.perf_counter()
    return Timing(((first or end) - t0) * 1000, (end - t0) * 1000)


def top_imports(tree: Path, args: tuple[str, ...], env: dict[str, str], count: int) -> list[tuple[str, float]]:
    """The imports that took longest, counting what each imported in turn (ms)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agent", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    rows: dict[str, float] = {}
    for line in result.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            rows[match.group(4)] = int(match.group(2)) / 1000
    return sorted(rows.items(), key=lambda kv: -kv[1])[:count]


def start_agent(home: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "agent", "--home", str(home), "agent", "run", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/api/v1/info")
    return proc


def extract(ref: str, into: Path) -> Path:
    """REF's agent/ and native/ packages, to import instead of this tree's."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref, "agent", "native"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--baseline", metavar="REF", help="also time REF's code (e.g. HEAD~1), run for run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aifinops-bench-cli-") as tmp:
        home = Path(tmp) / "home"
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIFINOPS_", "PYTHONDONTWRITEBYTECODE"))}
        # Compiled bytecode, as an installed package has it, kept out of the source folders.
        base = keep | {"PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache"), "AIFINOPS_HOME": str(home),
                       "AIFINOPS_AGENT__LOG_LEVEL": "WARNING", "COLUMNS": "200"}  # fmt: skip
        if "AIFINOPS_MODELS__DIR" in os.environ:
            base["AIFINOPS_MODELS__DIR"] = os.environ["AIFINOPS_MODELS__DIR"]
        port, nobody = free_port(), free_port()
        trees = {"now": REPO}
        if args.baseline:
            trees["baseline"] = extract(args.baseline, Path(tmp) / "baseline")
        agent = start_agent(home, port, base)
        try:
            timings: dict[tuple[str, str], list[Timing]] = {}
            for run in range(-1, args.runs):  # run -1 writes the bytecode and is not counted
                for case in CASES:
                    env = base | {"AIFINOPS_AGENT__PORT": str(port if case.with_agent else nobody)}
                    for name, tree in trees.items():
                        timing = run_once(tree, case.args, env)
                        if run >= 0:
                            timings.setdefault((case.label, name), []).append(timing)
                print(f"run {run + 1}/{args.runs}", flush=True)
            no_agent = base | {"AIFINOPS_AGENT__PORT": str(nobody)}
            imports = top_imports(REPO, ("spend",), no_agent, 14)
            baseline_imports = top_imports(trees["baseline"], ("spend",), no_agent, 14) if args.baseline else []
        finally:
            stop(agent)

    columns = ["now"] + (["baseline"] if args.baseline else [])
    header = " | ".join(f"{c}: first output ms | {c}: exit ms" for c in columns)
    lines = [f"| command | {header} |", "|---" + "|---:" * (2 * len(columns)) + "|"]
    for case in CASES:
        cells = []
        for c in columns:
            ts = timings[(case.label, c)]
            cells += [median([t.first_output_ms for t in ts]), median([t.exit_ms for t in ts])]
        lines.append(f"| {case.label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    importtime = "\n".join(f"| `{name}` | {ms:.0f} |" for name, ms in imports)
    baseline_note = baseline_line = ""
    if args.baseline:
        baseline_line = (
            f"\nBaseline: {args.baseline}'s agent/ and native/, same interpreter, alternating with this tree."
        )
        before = "\n".join(f"| `{name}` | {ms:.0f} |" for name, ms in baseline_imports)
        baseline_note = f"""

The same for the baseline ({args.baseline}):

| module | cumulative ms |
|---|---:|
{before}"""
    body = f"""Each command a new process (`python -m agent ...`, as the `aifinops` script runs it), median of
{args.runs} runs after one that compiles the bytecode (kept under a temporary `PYTHONPYCACHEPREFIX`, as an
installed package has it); "first output" is the first byte on stdout or stderr, "exit" the process's end.
"No agent": the agent's port has no listener (the command's error is its output). "Agent running":
a real agent on 127.0.0.1 in the same home (its token file; no policy, so `budgets` says so in one
line). `doctor` loads the runtimes it checks (llama.cpp, onnxruntime, the router's model), so its
time is mostly its checks. `chat`: the same question each run, so after the first (uncounted) run
the semantic cache may answer it; its first output is the answer's first text.{baseline_line}

{table}

`python -X importtime -m agent spend` (no agent): the {len(imports)} imports that took longest, each with
what it imported in turn (so nested ones repeat their parents' time; importtime's overhead included):

| module | cumulative ms |
|---|---:|
{importtime}{baseline_note}"""
    print(body)
    command = f".venv/bin/python bench/cli_startup.py --runs {args.runs}"
    if args.baseline:
        command += f" --baseline {args.baseline}"
    update_section("cli-startup", "Command line: time to first output", command, body)


if __name__ == "__main__":
    main()
