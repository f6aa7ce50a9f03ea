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
    from rich.live import Live
    from rich.table import Table

    from agent.api.client import AgentClient
    from agent.doctor import iter_checks, running_agent

    settings = obj.settings()
    table = Table("", "area", "finding", "fix", show_lines=False, box=None)
    marks = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}
    failed = False
    # At a terminal the rows appear as each group is checked (the first in about 0.25 s; the
    # runtimes and the agent come later); piped, the table is printed whole, as scripts read it.
    with Live(table, console=Console(), auto_refresh=False, vertical_overflow="visible") as live:
        for group in iter_checks(settings, lambda: running_agent(AgentClient.from_settings(settings))):
            for check in group:
                table.add_row(marks[check.level], check.area, check.detail, check.fix)
                failed = failed or check.level == "fail"
            live.refresh()
    if failed:
        sys.exit(1)
