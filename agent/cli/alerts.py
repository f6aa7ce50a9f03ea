"""The `alerts` group, through the running agent: where each alert's delivery stands."""

from __future__ import annotations

import json
from typing import Any

import click

from agent.cli.common import _Context, _Group, main, pass_ctx


@main.group(cls=_Group)
def alerts() -> None:
    """Alerts posted to the policy's channels: pending and failed deliveries, a test alert, secrets."""


@alerts.command("list")
@click.option("--all", "everything", is_flag=True, help="Delivered ones too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def alerts_list(obj: _Context, everything: bool, as_json: bool, token: str | None) -> None:
    """Each alert whose delivery is pending (with its next try) or failed (with why); the events
    the caller may see (an admin: all)."""
    from agent.api.client import AgentClient

    client = AgentClient.from_settings(obj.settings(), token)
    shown: list[dict[str, Any]] = []
    since = 0
    while True:  # the events come a page at a time
        page = client.events(since)
        for event in page.events:
            for delivery in event.deliveries:
                if everything or delivery.state in ("pending", "failed"):
                    shown.append({"event_id": event.id, "ts": event.ts, "kind": event.kind, **delivery.model_dump()})
        if not page.events:
            break
        since = page.last_id
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    if not shown:
        click.echo("No alert is pending or failed." if not everything else "No alert was posted anywhere yet.")
    for d in shown:
        line = f"#{d['event_id']} {d['kind']} ({d['ts'][:19]}) -> {d['channel']}: {d['state']}"
        line += f", {d['attempts']} attempt(s)"
        if d["state"] == "pending":
            line += f", next try {str(d['next_at'])[:19]}"
        if d["last_error"]:
            line += f"; last error: {d['last_error']}"
        click.echo(line)


@alerts.command("test")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def alerts_test(obj: _Context, token: str | None) -> None:
    """Post a test alert to every channel of the policy in force and print how each went (admins)."""
    from agent.api.client import AgentClient

    sent = AgentClient.from_settings(obj.settings(), token).alerts_test()
    failed = False
    for d in sent.deliveries:
        if d.state == "delivered":
            note = f"; {d.last_error}" if d.last_error else ""
            click.echo(f"{d.channel}: delivered (test alert #{sent.id}){note}")
        else:
            failed = True
            retry = f"; retried until it goes through (next try {str(d.next_at)[:19]})" if d.state == "pending" else ""
            click.echo(f"{d.channel}: {d.state}: {d.last_error or 'no answer yet'}{retry}")
    if failed:
        raise SystemExit(1)


@alerts.command("set-secret")
@click.argument("name")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the value from standard input (scripts).")
def alerts_set_secret(name: str, from_stdin: bool) -> None:
    """Store a channel's secret (a webhook URL, an SMTP password) in this user's OS keyring, for a
    policy that names it as keyring:NAME. Run it as the user the agent runs as."""
    import re
    import sys

    from keyring.errors import KeyringError

    from agent.alerts import secrets

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}", name):
        raise click.BadParameter("letters, digits and . _ @ - only (as in keyring:NAME)", param_hint="NAME")
    if from_stdin:
        value = sys.stdin.read().strip()
    else:
        value = str(click.prompt(f"Value of {name}", hide_input=True)).strip()
    if not value:
        raise click.UsageError("the value is empty")
    try:
        secrets.store(name, value)
    except KeyringError as e:
        raise click.ClickException(
            f"the OS keyring cannot be written on this box ({type(e).__name__}: {e}); "
            "use an env: or file: reference instead (docs/ADMIN.md, Alert delivery)"
        ) from None
    click.echo(f"stored {name} in the OS keyring (service {secrets.KEYRING_SERVICE!r}); "
               f"the policy names it keyring:{name}")
