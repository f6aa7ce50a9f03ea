"""The command line imports its heavy libraries only in the commands that use them.

Every `aifinops` call pays for what `agent.cli` imports before it prints anything: the openai SDK
alone takes half a second. Each check runs in a fresh interpreter, so nothing this test process
has already imported hides an import. (How long the commands take is measured in
bench/cli_startup.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("openai", "numpy", "numba", "pyarrow", "duckdb", "onnxruntime", "llama_cpp", "sqlite_utils", "rich")

# Runs `aifinops ARGS...` in-process (the exit code is the child's), then prints the heavy
# modules left in sys.modules as JSON on the last line of stdout.
PROBE = textwrap.dedent(
    """
    import json, sys
    from agent.cli import main

    heavy, argv = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    try:
        main(argv, prog_name="aifinops")
    except SystemExit as e:
        code = e.code
    print()
    print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
    """
)


def run_probe(*argv: str, heavy: tuple[str, ...] = HEAVY, **env: str) -> tuple[object, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(heavy), json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome["code"], outcome["loaded"]


def every_command() -> list[list[str]]:
    """The path of every command and group under `aifinops`, e.g. ["fleet", "report"]."""
    import click

    from agent.cli import main

    paths: list[list[str]] = []

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name in group.list_commands(click.Context(group)):
            command = group.get_command(click.Context(group), name)
            assert command is not None
            paths.append([*prefix, name])
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])

    walk(main, [])
    return paths


def test_the_help_lists_every_command_without_a_heavy_import() -> None:
    code, loaded = run_probe("--help")
    assert code == 0
    assert loaded == []
    commands = {path[0] for path in every_command()}
    assert {"agent", "chat", "spend", "budgets", "doctor", "fleet", "gpu", "bench", "users"} <= commands


@pytest.mark.parametrize("command", every_command(), ids=" ".join)
def test_each_commands_help_imports_nothing_heavy(command: list[str]) -> None:
    code, loaded = run_probe(*command, "--help")
    assert code == 0
    assert loaded == []


@pytest.mark.parametrize("command", [["spend"], ["budgets"], ["spend", "--json"], ["cache", "stats"], ["chat", "hi"]])
def test_asking_an_agent_that_is_not_there_imports_nothing_heavy(command: list[str]) -> None:
    """The client's path (settings, token, HTTP) up to its error: port 1 has no agent. (rich is
    not counted here: httpx imports it, for its own command line.)"""
    heavy = tuple(m for m in HEAVY if m != "rich")
    code, loaded = run_probe(*command, heavy=heavy, AIFINOPS_PORT="1", AIFINOPS_TOKEN="afo_x")
    assert code == 1
    assert loaded == []


def test_the_probe_sees_a_heavy_import() -> None:
    """The guard can fail: doctor loads the runtimes it checks, and the probe says so."""
    _code, loaded = run_probe("doctor", AIFINOPS_PORT="1")
    assert {"llama_cpp", "onnxruntime", "rich"} <= set(loaded)
