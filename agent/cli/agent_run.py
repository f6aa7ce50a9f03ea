"""The `agent` group: run the agent in the foreground."""

from __future__ import annotations

import click

from agent.cli.common import _Context, _Group, main, pass_ctx

# -- agent ----------------------------------------------------------------------------------


@main.group(cls=_Group)
def agent() -> None:
    """Run the background agent."""


@agent.command("run")
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8765).")
@pass_ctx
def agent_run(obj: _Context, host: str | None, port: int | None) -> None:
    """Serve the OpenAI-compatible API until SIGTERM/SIGINT."""
    from agent.logs import setup_logging
    from agent.server import run_agent

    settings = obj.settings(host=host, port=port)
    settings.paths.ensure()
    setup_logging(settings.paths.log_dir, settings.agent.log_level)
    run_agent(settings)
