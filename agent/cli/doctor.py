"""`aifinops doctor`: check the install and the running agent."""

from __future__ import annotations

import sys

from agent.cli.common import _Context, main, pass_ctx

# -- doctor ---------------------------------------------------------------------------------


@main.command()
@pass_ctx
def doctor(obj: _Context) -> None:
    """Check models, runtimes, GPU, share, keys and paths; say what to fix."""
    from rich.console import Console
    from rich.table import Table

    from agent.api.client import AgentClient
    from agent.doctor import run_checks, running_agent

    settings = obj.settings()
    checks = run_checks(settings, running_agent(AgentClient.from_settings(settings)))
    table = Table("", "area", "finding", "fix", show_lines=False, box=None)
    marks = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}
    for check in checks:
        table.add_row(marks[check.level], check.area, check.detail, check.fix)
    Console().print(table)
    if any(c.level == "fail" for c in checks):
        sys.exit(1)
