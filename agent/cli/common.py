"""What every command group shares: the root group, the context, the error handling."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from agent.errors import AIFinOpsError

if TYPE_CHECKING:
    from rich.console import Console

    from agent.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


class _Context:
    def __init__(self, home: str | None, config: str | None) -> None:
        self.home = home
        self.config = config

    def settings(self, **agent_overrides: Any) -> Settings:
        from agent.settings import load_settings  # pydantic: only for the commands that read settings

        overrides = {"agent": {k: v for k, v in agent_overrides.items() if v is not None}}
        return load_settings(home=self.home, config_file=self.config, overrides=overrides)


def _fail(message: str) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Turns our errors into one red line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AIFinOpsError as e:
            _fail(e.message)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from agent.bundle import version_line

    click.echo(version_line())
    ctx.exit()


@click.group(cls=_Group)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version (a bundle's also its git commit and build time) and exit.",
)
@click.option("--home", envvar="AIFINOPS_HOME", help="Keep config, data, logs and cache under DIR.")
@click.option("--config", "config", envvar="AIFINOPS_CONFIG", help="Settings file (TOML).")
@click.pass_context
def main(ctx: click.Context, home: str | None, config: str | None) -> None:
    """aifinops: AI FinOps edge agent. Local models, cloud routing, per-user spend."""
    ctx.obj = _Context(home, config)


pass_ctx = click.make_pass_decorator(_Context)


def table_console() -> Console:
    """A console for a table: the terminal's width, or whole columns when piped or redirected
    (rich would squeeze them into 80)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)
