"""The `fleet` group: publish this box's ledger to the share; admin reports over every host."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agent.cli.common import _Context, _fail, _Group, main, pass_ctx, table_console

if TYPE_CHECKING:
    from agent.fleet.catalog import Catalog
    from agent.policy.model import Policy


@main.group(cls=_Group)
def fleet() -> None:
    """Every agent's spend on the share: publish, report, hosts."""


_SHARE = click.option("--share", type=click.Path(file_okay=False), help="The share (default: share.path).")


def _share(obj: _Context, share: str | None) -> Path:
    if share:
        return Path(share)
    configured = obj.settings().share_dir
    if configured is None:
        _fail("no share: set share.path in the config or pass --share")
    return configured


def _catalog(obj: _Context, share: str | None) -> Catalog:
    from agent.fleet.catalog import scan

    root = _share(obj, share)
    if not root.is_dir():
        _fail(f"the share {root} is not reachable")
    try:
        catalog = scan(root, obj.settings().paths.cache_dir / "fleet-checksums.json")
    except OSError as e:
        _fail(f"the share's fleet folder cannot be read: {e}")
    for bad in catalog.skipped:
        click.secho(f"skipped host {bad.name}: {bad.reason}", fg="yellow", err=True)
    return catalog


@fleet.command("publish")
@pass_ctx
def fleet_publish(obj: _Context) -> None:
    """Publish this box's finished ledger rows to the share now (the agent does it every
    fleet.publish_interval_s)."""
    from agent.fleet.publisher import build_publisher
    from agent.ledger.database import Database
    from agent.ledger.policies import PolicyStore

    settings = obj.settings()
    if settings.share_dir is None:
        _fail("no share: set share.path in the config")
    if not settings.fleet.publish:
        _fail("publishing is off (fleet.publish = false)")
    settings.paths.ensure()
    db = Database.open(settings.paths.ledger_file)
    try:
        last = PolicyStore(db).last_good()
        publisher = build_publisher(settings, db, policy_version=lambda: last.version if last else None)
        if publisher is None:
            _fail("no publisher: set share.path and fleet.publish = true")
        try:
            outcome = publisher.publish_once()
        except OSError as e:
            _fail(f"the share did not take the rows ({e}); they wait in the ledger for the next publish")
    finally:
        db.close()
    rows = ", ".join(f"{n} {stream}" for stream, n in outcome.rows.items())
    click.echo(f"published {rows} row(s) in {outcome.segments} segment(s) to {publisher.host_dir}")
    if outcome.compacted:
        click.echo(f"compacted {outcome.compacted} segment(s)")
    if outcome.backlog_rows:
        click.echo(f"{outcome.backlog_rows} row(s) still to publish")


@fleet.command("report")
@click.option("--by", "by", default="department", show_default=True,
              type=click.Choice(["user", "department", "feature", "model", "host", "day"]))  # fmt: skip
@click.option("--since", default="30d", show_default=True, help="e.g. 7d, 24h, 2w or an ISO date.")
@click.option("--until", default=None, help="An ISO date or time (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_SHARE
@pass_ctx
def fleet_report(obj: _Context, by: str, since: str, until: str | None, as_json: bool, share: str | None) -> None:
    """Spend over every host on the share, with GPU cost and savings (DuckDB over the Parquet)."""
    from agent.errors import InvalidRequest
    from agent.fleet.report import report
    from agent.money import format_usd
    from agent.timespans import parse_since

    try:
        start = parse_since(since)
        end = parse_since(until) if until else None
    except InvalidRequest as e:
        _fail(e.message)
    catalog = _catalog(obj, share)
    result = report(catalog, by, start, end)  # type: ignore[arg-type]
    names = {h.host_id: h.hostname for h in catalog.hosts}
    money = ("cost_micro_usd", "gpu_cost_micro_usd", "cache_saved_micro_usd", "routing_saved_micro_usd",
             "compression_saved_micro_usd", "provider_cache_saved_micro_usd")  # fmt: skip
    if as_json:
        body = {
            "by": by,
            "since": start.isoformat(),
            "until": end.isoformat() if end else None,
            "hosts": result.hosts,
            "skipped_hosts": [{"name": s.name, "reason": s.reason} for s in catalog.skipped],
            "rows": [
                {**asdict(r), **{m.replace("_micro_usd", "_usd"): format_usd(getattr(r, m)) for m in money}}
                | ({"hostname": names.get(r.key, "")} if by == "host" else {})
                for r in result.rows
            ],
            "total": {m.replace("_micro_usd", "_usd"): format_usd(result.total(m)) for m in money},
        }
        click.echo(json.dumps(body, indent=2))
        return
    from rich.table import Table

    title = f"fleet spend by {by} since {start.isoformat()[:19]}Z, {result.hosts} host(s)"
    table = Table(by, "requests", "input tok", "output tok", "cost USD", "unpriced", "failed", "GPU USD",
                  "saved: cache", "routing", "compression", "provider cache", title=title)  # fmt: skip
    for r in result.rows:
        key = f"{names.get(r.key) or '?'} ({r.key[:8]})" if by == "host" else r.key
        table.add_row(key or "-", str(r.requests), str(r.input_tokens), str(r.output_tokens),
                      format_usd(r.cost_micro_usd), str(r.unpriced_requests), str(r.failed_requests),
                      format_usd(r.gpu_cost_micro_usd), format_usd(r.cache_saved_micro_usd),
                      format_usd(r.routing_saved_micro_usd), format_usd(r.compression_saved_micro_usd),
                      format_usd(r.provider_cache_saved_micro_usd))  # fmt: skip
    table.add_section()
    totals = {m: format_usd(result.total(m)) for m in money}
    table.add_row("total", str(result.total("requests")), "", "", totals["cost_micro_usd"],
                  str(result.total("unpriced_requests")), "", totals["gpu_cost_micro_usd"],
                  totals["cache_saved_micro_usd"], totals["routing_saved_micro_usd"],
                  totals["compression_saved_micro_usd"], totals["provider_cache_saved_micro_usd"])  # fmt: skip
    table_console().print(table)
    if not catalog.hosts:
        click.echo(f"No host has published to {catalog.share_dir / 'fleet'} yet: agents with this share publish "
                   "every fleet.publish_interval_s; `aifinops fleet publish` on a box does it now.")  # fmt: skip
    if result.unattributed_gpu_micro_usd:
        gpu_usd = format_usd(result.unattributed_gpu_micro_usd)
        click.echo(f"GPU time has no {by}: its {gpu_usd} USD is in the total only.")
    unpriced = result.total("unpriced_requests")
    if unpriced:
        click.secho(f"{unpriced} request(s) have no known price: totals exclude them.", fg="yellow")


@fleet.command("budgets")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, exists=True),
              help="A policy file (default: the last policy this box received).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the budgets as JSON.")
@_SHARE
@pass_ctx
def fleet_budgets(obj: _Context, policy_file: str | None, as_json: bool, share: str | None) -> None:
    """Department and organisation budgets over the whole fleet: spent this period by every
    host (published rows), and where the period will end at the fleet's pace (80% interval)."""
    from agent.fleet.report import budget_forecasts
    from agent.money import format_usd

    policy = _policy(obj, policy_file)
    catalog = _catalog(obj, share)
    now = datetime.now(UTC)
    rows = []
    for b in budget_forecasts(catalog, policy, now):
        f = b.forecast
        rows.append({
            "name": b.name, "scope": b.scope, "subject": b.subject, "period": b.period, "action": b.action,
            "amount_usd": format_usd(b.amount_micro_usd), "spent_usd": format_usd(b.spent_micro_usd),
            "remaining_usd": format_usd(max(b.amount_micro_usd - b.spent_micro_usd, 0)),
            "forecast_usd": format_usd(f.forecast_micro_usd) if f.forecast_micro_usd is not None else None,
            "forecast_low_usd": format_usd(f.low_micro_usd) if f.low_micro_usd is not None else None,
            "forecast_high_usd": format_usd(f.high_micro_usd) if f.high_micro_usd is not None else None,
            "breach_at": f.breach_at.astimezone(UTC).isoformat(timespec="seconds") if f.breach_at else None,
            "forecast_note": f.problem,
        })  # fmt: skip
    if as_json:
        skipped = [{"name": s.name, "reason": s.reason} for s in catalog.skipped]
        body = {"policy_version": policy.version, "hosts": len(catalog.hosts), "skipped_hosts": skipped,
                "budgets": rows}  # fmt: skip
        click.echo(json.dumps(body, indent=2))
        return
    from rich.table import Table

    title = f"fleet budgets, policy version {policy.version}, {len(catalog.hosts)} host(s)"
    table = Table("budget", "for", "period", "spent USD", "of USD", "left USD", "forecast USD (80%)", "breaks (UTC)",
                  title=title)  # fmt: skip
    for r in rows:
        forecast = (f"{r['forecast_usd']} ({r['forecast_low_usd']}-{r['forecast_high_usd']})" if r["forecast_usd"]
                    else f"- ({r['forecast_note']})")  # fmt: skip
        breaks = str(r["breach_at"])[:16].replace("T", " ") if r["breach_at"] else "-"
        table.add_row(str(r["name"]), f"{r['scope']} {r['subject']}", str(r["period"]), str(r["spent_usd"]),
                      str(r["amount_usd"]), str(r["remaining_usd"]), forecast, breaks)  # fmt: skip
    table_console().print(table)
    if not rows:
        click.echo("The policy has no department or organisation budget with spend on the share.")
    click.echo("Spent: the rows the hosts have published (every fleet.publish_interval_s); each agent's own "
               "view (aifinops budgets) adds its rows not published yet.")  # fmt: skip


def _policy(obj: _Context, policy_file: str | None) -> Policy:
    from agent.errors import PolicyError
    from agent.ledger.policies import last_good_in
    from agent.policy.model import parse_policy

    if policy_file is not None:
        try:
            return parse_policy(Path(policy_file).read_bytes())
        except (OSError, PolicyError) as e:
            _fail(f"the policy {policy_file} cannot be used: {e}")
    last = last_good_in(obj.settings().paths.ledger_file)
    if last is None:
        _fail("this box has received no policy yet: pass --policy FILE")
    return parse_policy(last.body)


@fleet.command("export")
@click.option("--format", "export_format", type=click.Choice(["focus"]), default="focus", show_default=True,
              help="The schema: FOCUS 1.2 (FinOps Open Cost and Usage Specification) chargeback rows.")  # fmt: skip
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The file to write, replaced whole: FILE.csv or FILE.parquet.")  # fmt: skip
@click.option("--since", default="30d", show_default=True,
              help="First UTC day: e.g. 7d, 2w or an ISO date (from the start of its day).")  # fmt: skip
@click.option("--until", default=None, help="End, exclusive: an ISO date (default: through today).")
@click.option("--account-id", default="aifinops", show_default=True,
              help="FOCUS BillingAccountId: who charges back.")  # fmt: skip
@click.option("--account-name", default="AIFinOps fleet", show_default=True,
              help="FOCUS BillingAccountName, ProviderName and InvoiceIssuerName.")  # fmt: skip
@_SHARE
@pass_ctx
def fleet_export(obj: _Context, export_format: str, out: str, since: str, until: str | None, account_id: str,
                 account_name: str, share: str | None) -> None:  # fmt: skip
    """Write every host's spend as FOCUS 1.2 chargeback rows (one per UTC day, host, user and
    model, labels as tags; GPU time per day, host and subject) for FinOps tools."""
    from agent.errors import InvalidRequest
    from agent.fleet.focus import FOCUS_VERSION, TAG_PREFIX, FocusAccount, day_window, export, format_of
    from agent.money import format_usd
    from agent.timespans import parse_since

    del export_format  # FOCUS is the only one
    try:
        first, end = day_window(parse_since(since), parse_since(until) if until else None)
    except InvalidRequest as e:
        _fail(e.message)
    if not account_id.strip() or not account_name.strip():
        _fail("--account-id and --account-name must not be empty")
    path = Path(out)
    fmt = format_of(path)
    catalog = _catalog(obj, share)
    try:
        result = export(catalog, path, since=first, until=end, account=FocusAccount(account_id, account_name), fmt=fmt)
    except OSError as e:
        _fail(f"could not write {path}: {e}")
    days = f"{first or 'the first day'} to {end - timedelta(days=1) if end else 'today'}"
    click.echo(
        f"wrote {result.rows} FOCUS {FOCUS_VERSION} row(s) ({result.request_rows} request, {result.gpu_rows} GPU)"
        f" for {days} (UTC) from {len(catalog.hosts)} host(s) to {path}: BilledCost"
        f" {format_usd(result.billed_micro_usd)} USD"
    )
    if result.unpriced_requests or result.unpriced_gpu_minutes:
        click.secho(
            f"{result.unpriced_requests} request(s) and {result.unpriced_gpu_minutes} GPU minute(s) have no known"
            f" price: exported at cost 0 with the tag {TAG_PREFIX}price_unknown = true.",
            fg="yellow",
        )


@fleet.command("hosts")
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as JSON.")
@_SHARE
@pass_ctx
def fleet_hosts(obj: _Context, as_json: bool, share: str | None) -> None:
    """Each host on the share: last publish, agent version, policy version in force, backlog."""
    catalog = _catalog(obj, share)
    now = datetime.now(UTC)
    rows = []
    for h in catalog.hosts:
        m = h.manifest
        rows.append({
            "host_id": h.host_id,
            "hostname": h.hostname,
            "published_at": h.published_at,
            "agent_version": str(m.get("agent_version") or ""),
            "policy_version": m.get("policy_version"),
            "backlog_rows": m.get("backlog_rows"),
            "segments": len(h.segments),
            "rows": sum(s.rows for s in h.segments),
        })  # fmt: skip
    if as_json:
        skipped = [{"name": s.name, "reason": s.reason} for s in catalog.skipped]
        click.echo(json.dumps({"hosts": rows, "skipped_hosts": skipped}, indent=2))
        return
    from rich.table import Table

    table = Table("host", "id", "last publish (UTC)", "ago", "agent", "policy", "backlog", "segments", "rows",
                  title=f"fleet hosts on {catalog.share_dir}")  # fmt: skip
    for r in rows:
        ago = _ago(now, str(r["published_at"]))
        table.add_row(str(r["hostname"]), str(r["host_id"])[:8], str(r["published_at"])[:19].replace("T", " "), ago,
                      str(r["agent_version"]), str(r["policy_version"] or "-"), str(r["backlog_rows"]),
                      str(r["segments"]), str(r["rows"]))  # fmt: skip
    table_console().print(table)
    if not rows and not catalog.skipped:
        click.echo("No host has published yet (agents publish every fleet.publish_interval_s).")


def _ago(now: datetime, iso: str) -> str:
    try:
        seconds = (now - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"
