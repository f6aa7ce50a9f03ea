"""The `alerts` group, through the running agent: where each alert's delivery stands."""

from __future__ import annotations

import json
from typing import Any

import click

from agent.cli.common import _Context, _Group, main, pass_ctx


@main.group(cls=_Group)
def alerts() -> None:
    """Alerts posted to the policy's channels (webhook_url): pending and failed deliveries."""


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
                if everything or delivery.state != "delivered":
                    shown.append({"event_id": event.id, "ts": event.ts, "kind": event.kind, **delivery.model_dump()})
        if not page.events:
            break
        since = page.last_id
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    if not shown:
        click.echo("Every alert was delivered." if not everything else "No alert was posted anywhere yet.")
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
            click.echo(f"{d.channel}: delivered (test alert #{sent.id})")
        else:
            failed = True
            retry = f"; retried until it goes through (next try {str(d.next_at)[:19]})" if d.state == "pending" else ""
            click.echo(f"{d.channel}: {d.state}: {d.last_error or 'no answer yet'}{retry}")
    if failed:
        raise SystemExit(1)
