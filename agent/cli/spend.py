"""`spend`, `budgets` and `chat`, through the running agent."""

from __future__ import annotations

import json
from typing import Any

import click

from agent.cli.common import _Context, _fail, main, pass_ctx, table_console

# -- spend and chat (through the running agent) ---------------------------------------------


@main.command()
@click.option(
    "--by",
    "by",
    default="user",
    show_default=True,
    type=click.Choice(["user", "department", "feature", "model", "provider", "route", "tier"]),
)
@click.option("--since", default="30d", show_default=True, help="e.g. 7d, 24h, 2w or an ISO date.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def spend(obj: _Context, by: str, since: str, as_json: bool, token: str | None) -> None:
    """Spend grouped by user, department, feature, model, provider or route."""
    from agent.api.client import AgentClient

    report = AgentClient.from_settings(obj.settings(), token).spend(by, since)
    if as_json:
        click.echo(json.dumps(report.model_dump(), indent=2))
        return
    from rich.table import Table

    title = f"spend by {by} since {report.since[:19]}Z ({'everyone' if report.scope == 'all' else 'you'})"
    # Savings side by side: our semantic cache and optimiser ("saved"), the provider's prompt cache
    # (its cached input tokens, billed at the cached rate: what that took off the bill).
    table = Table(by, "requests", "input tok", "cached in", "output tok", "cost USD", "saved USD", "provider cache USD",
                  "unpriced", "failed", title=title)  # fmt: skip
    for r in report.rows:
        table.add_row(
            r.key or "-",
            str(r.requests),
            str(r.input_tokens),
            str(r.cache_read_tokens),
            str(r.output_tokens),
            r.cost_usd,
            r.cost_saved_usd,
            r.provider_cache_saved_usd,
            str(r.unpriced_requests),
            str(r.failed_requests),
        )
    table.add_section()
    table.add_row("total", "", "", "", "", report.total_cost_usd, "", "", str(report.unpriced_requests), "")
    table_console().print(table)
    if report.unpriced_requests:
        click.secho(f"{report.unpriced_requests} request(s) have no known price: totals exclude them.", fg="yellow")


@main.command()
@click.option("--all", "everything", is_flag=True, help="Every budget of everyone (admins).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def budgets(obj: _Context, everything: bool, as_json: bool, token: str | None) -> None:
    """Your budgets (or, with --all, everyone's): spent, in flight, remaining, when they reset."""
    from agent.api.client import AgentClient

    report = AgentClient.from_settings(obj.settings(), token).budgets(everything)
    if as_json:
        click.echo(json.dumps(report.model_dump(), indent=2))
        return
    if report.policy_version is None:
        click.echo("No policy received yet: no budgets are enforced (see aifinops doctor).")
        return
    from rich.table import Table

    table = Table("budget", "for", "period", "spent USD", "in flight", "of USD", "left USD", "resets (UTC)", "over",
                  "forecast USD (80%)", "breaks (UTC)",
                  title=f"budgets, policy version {report.policy_version}")  # fmt: skip
    for b in report.budgets:
        forecast = (f"{b.forecast_usd} ({b.forecast_low_usd}-{b.forecast_high_usd})" if b.forecast_usd
                    else f"- ({b.forecast_note})" if b.forecast_note else "-")  # fmt: skip
        breaks = b.breach_at[:16].replace("T", " ") if b.breach_at else "-"
        table.add_row(b.name, f"{b.scope} {b.subject}", b.period, b.spent_usd, b.reserved_usd, b.amount_usd,
                      b.remaining_usd, b.resets_at[:16].replace("T", " "), b.action, forecast, breaks)  # fmt: skip
    table_console().print(table)


@main.command()
@click.argument("question")
@click.option("--model", default="auto", show_default=True, help="local, a cloud model, or auto.")
@click.option("--max-tokens", type=int, default=None, help="Cap the answer's length.")
@click.option("--feature", default="cli-chat", show_default=True, help="Feature tag for chargeback.")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def chat(obj: _Context, question: str, model: str, max_tokens: int | None, feature: str, token: str | None) -> None:
    """Ask through the agent and stream the answer, then print what it cost."""
    from agent.api.client import AgentClient
    from agent.errors import AgentApiError

    client = AgentClient.from_settings(obj.settings(), token)
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": question}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    try:
        info = client.chat(body, lambda text: click.echo(text, nl=False), feature)
    except AgentApiError as e:
        _fail(f"{e.status_code}: {e.message}")
    click.echo()
    cost, route = (info.cost_usd, info.route) if info is not None else ("unknown", "")
    click.secho(f"[{route}] cost ${cost}", dim=True, err=True)
