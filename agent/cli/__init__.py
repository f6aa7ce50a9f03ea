"""`aifinops`: the command line. Every command has --help; long ones show progress.

One module per command group (as simonw/llm keeps its commands): each defines its commands on
the root group in ``agent.cli.common``; importing them here registers them, in help order.
"""

from __future__ import annotations

from agent.cli import (  # noqa: F401 - imported for the commands they register
    agent_run,
    alerts,
    anomalies,
    bench,
    cache,
    doctor,
    fleet,
    gpu,
    models,
    policy,
    router,
    spend,
    users,
)
from agent.cli.common import main

__all__ = ["main"]
