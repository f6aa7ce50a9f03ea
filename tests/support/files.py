"""Reading the agent's files from a test without disturbing the agent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def file_contains(path: Path, needle: str) -> bool:
    """Whether the file's bytes contain `needle`, read in another process: opening and closing
    a SQLite file in the agent's own process would drop the agent's POSIX locks on it (a
    documented SQLite pitfall)."""
    check = "import sys; print(sys.argv[2].encode() in open(sys.argv[1], 'rb').read())"
    out = subprocess.run([sys.executable, "-c", check, str(path), needle], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"
