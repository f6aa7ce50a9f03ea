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
    from agent.doctor import iter_checks, running_agent

    settings = obj.settings()
    console = Console()
    marks = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}
    failed = False
    # A group at a time, as each is checked: the same column widths for every group, so the rows
    # line up as one table.
    for number, group in enumerate(iter_checks(settings, lambda: running_agent(AgentClient.from_settings(settings)))):
        table = Table("", "area", "finding", "fix", show_lines=False, box=None, show_header=number == 0, expand=True)
        table.columns[0].width, table.columns[1].width = 1, 11
        table.columns[2].ratio, table.columns[3].ratio = 3, 2
        for check in group:
            table.add_row(marks[check.level], check.area, check.detail, check.fix)
            failed = failed or check.level == "fail"
        if group:
            console.print(table)
    if failed:
        sys.exit(1)
