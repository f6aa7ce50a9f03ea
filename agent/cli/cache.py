"""The `cache` group, through the running agent."""

from __future__ import annotations

import click

from agent.cli.common import _Context, _Group, main, pass_ctx

# -- cache (through the running agent) --------------------------------------------------------


@main.group(cls=_Group)
def cache() -> None:
    """The semantic cache: what it holds and saved; empty it."""


@cache.command("stats")
@click.option("--all", "everything", is_flag=True, help="The whole cache (admins), not just your scope.")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def cache_stats(obj: _Context, everything: bool, token: str | None) -> None:
    """Entries, hits and money saved in your cache scope."""
    from agent.api.client import AgentClient

    stats = AgentClient.from_settings(obj.settings(), token).cache_stats(everything)
    if not stats.enabled:
        click.echo("the semantic cache is disabled (cache.enabled = false)")
        return
    click.echo(
        f"scope {stats.scope}: {stats.entries} entries, {stats.hits} hits, saved ${stats.saved_usd}, "
        f"{stats.bytes / 1e6:.1f} MB"
        + (f", {stats.corrupt_rows_skipped} corrupt rows skipped" if stats.corrupt_rows_skipped else "")
    )


@cache.command("clear")
@click.option("--all", "everything", is_flag=True, help="Empty the whole cache (admins).")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def cache_clear(obj: _Context, everything: bool, token: str | None) -> None:
    """Remove the cached answers of your scope (or all of them)."""
    from agent.api.client import AgentClient

    cleared = AgentClient.from_settings(obj.settings(), token).cache_clear(everything)
    click.echo(f"removed {cleared.removed} entries from {cleared.scope}")
