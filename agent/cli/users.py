"""The `users` group: who may call the agent, and their tokens."""

from __future__ import annotations

from typing import Any

import click

from agent.cli.common import _Context, _fail, _Group, main, pass_ctx

# -- users ----------------------------------------------------------------------------------


@main.group(cls=_Group)
def users() -> None:
    """Users and their bearer tokens (run where the ledger is)."""


def _identity(obj: _Context) -> Any:
    from agent.identity import Identity
    from agent.ledger.database import Database
    from agent.ledger.users import UserStore

    settings = obj.settings()
    settings.paths.ensure()
    return Identity(UserStore(Database.open(settings.paths.ledger_file)))


@users.command("add")
@click.argument("name")
@click.option("--department", required=True, help="Department charged for this user's spend.")
@click.option("--admin", is_flag=True, help="May read everyone's spend.")
@pass_ctx
def users_add(obj: _Context, name: str, department: str, admin: bool) -> None:
    """Create a user and print their bearer token (shown once, stored only hashed)."""
    token = _identity(obj).add_user(name, department, admin=admin)
    click.echo(f"user {name} ({department}{', admin' if admin else ''}) created. Token (shown once):")
    click.echo(token)


@users.command("token")
@click.argument("name")
@pass_ctx
def users_token(obj: _Context, name: str) -> None:
    """Issue another token for an existing user (printed once)."""
    click.echo(_identity(obj).issue_token(name))


@users.command("list")
@pass_ctx
def users_list(obj: _Context) -> None:
    """Users, departments, roles and how many live tokens each has."""
    from rich.console import Console
    from rich.table import Table

    table = Table("user", "department", "role", "tokens", "created", "revoked")
    for u in _identity(obj).list_users():
        table.add_row(u.name, u.department, u.role, str(u.active_tokens), u.created_at[:19], (u.revoked_at or "")[:19])
    Console().print(table)


@users.command("revoke")
@click.argument("name")
@pass_ctx
def users_revoke(obj: _Context, name: str) -> None:
    """Revoke a user and all their tokens, effective on the next request."""
    if not _identity(obj).revoke(name):
        _fail(f"no active user {name!r}")
    click.echo(f"user {name} revoked")
