"""The `anomalies` group, through the running agent: users throttled after a runaway."""

from __future__ import annotations

import json

import click

from agent.cli.common import _Context, _Group, main, pass_ctx


@main.group(cls=_Group)
def anomalies() -> None:
    """Runaways caught by the agent: who is throttled, and lifting it (admins)."""


@anomalies.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def anomalies_list(obj: _Context, as_json: bool, token: str | None) -> None:
    """The users held to a multiple of their usual rate after a runaway."""
    from agent.api.client import AgentClient

    throttled = AgentClient.from_settings(obj.settings(), token).throttles().throttled
    if as_json:
        click.echo(json.dumps([t.model_dump() for t in throttled], indent=2))
        return
    if not throttled:
        click.echo("Nobody is throttled.")
    for t in throttled:
        click.echo(f"{t.user}: {t.limit_per_hour:.0f} requests an hour since {t.since} ({t.reason})")


@anomalies.command("clear")
@click.argument("user")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def anomalies_clear(obj: _Context, user: str, token: str | None) -> None:
    """Lift USER's throttle: their requests go through at once."""
    from agent.api.client import AgentClient

    AgentClient.from_settings(obj.settings(), token).clear_throttle(user)
    click.echo(f"{user}: throttle lifted")
