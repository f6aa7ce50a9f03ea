"""Run every benchmark in turn; each writes its own section of docs/BENCHMARKS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in (
    "overhead.py",
    "local_generation.py",
    "similarity.py",
    "cache_lookup.py",
    "cache_quality.py",
    "fleet.py",
    "forecast.py",
    "runaway_overhead.py",
):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
