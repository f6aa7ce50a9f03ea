"""Write a benchmark's figures into its own section of docs/BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = """# Benchmarks

Every figure below was written by the command shown above it; rerun it to refresh its section.
Timings are from a shared 2-core x86_64 machine without a GPU unless a section says otherwise.
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, commit {commit or '?'}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def update_section(name: str, title: str, command: str, body: str) -> None:
    text = DOC.read_text() if DOC.exists() else HEADER
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n```\n{command}\n```\n\n"
        f"Machine: {machine()}\n\n{body.strip()}\n<!-- /bench:{name} -->"
    )
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
