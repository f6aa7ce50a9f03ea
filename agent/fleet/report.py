"""Admin reports over the whole fleet: DuckDB SQL over the hosts' Parquet segments.

The SQL reads two relations, ``requests`` and ``gpu``, each a ``read_parquet`` over the segment
files of the readable hosts (see ``catalog``). Nothing here depends on the files being on a
share: the same queries run unchanged over ``read_parquet('s3://bucket/fleet/*/*/*.parquet')``
or a warehouse table of the same columns (docs/ADMIN.md says how).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from agent.fleet.catalog import Catalog
from agent.fleet.segments import GPU_SCHEMA, REQUESTS_SCHEMA

if TYPE_CHECKING:
    import duckdb

    from agent.budgets.forecast import Forecast
    from agent.policy.model import Policy

FleetDimension = Literal["user", "department", "feature", "model", "host", "day"]
DIMENSIONS: tuple[FleetDimension, ...] = ("user", "department", "feature", "model", "host", "day")

# The key of a request row, and of a GPU minute (None: GPU time has no such key).
_REQUEST_KEY = {
    "user": "user_name",
    "department": "department",
    "feature": "feature",
    "model": "model",
    "host": "host_id",
    "day": "CAST(day AS VARCHAR)",
}
_GPU_KEY = {
    "user": "CASE WHEN kind IN ('user', 'os_user') THEN subject ELSE '(' || kind || ' GPU time)' END",
    "department": "CASE WHEN department <> '' THEN department ELSE '(' || kind || ' GPU time)' END",
    "feature": None,
    "model": None,
    "host": "host_id",
    "day": "CAST(day AS VARCHAR)",
}


@dataclass(frozen=True)
class FleetRow:
    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    unpriced_requests: int
    failed_requests: int
    gpu_cost_micro_usd: int
    cache_saved_micro_usd: int
    routing_saved_micro_usd: int
    compression_saved_micro_usd: int
    provider_cache_saved_micro_usd: int = 0  # the providers' prompt caches, beside our own savings


@dataclass(frozen=True)
class FleetReport:
    by: FleetDimension
    since: datetime | None
    until: datetime | None
    hosts: int
    rows: tuple[FleetRow, ...]
    # GPU cost that has no key in this dimension (feature, model): in the total only.
    unattributed_gpu_micro_usd: int

    def total(self, column: str) -> int:
        extra = self.unattributed_gpu_micro_usd if column == "gpu_cost_micro_usd" else 0
        return sum(int(getattr(r, column)) for r in self.rows) + extra


# The DuckDB type of each Parquet column type the segments use (for columns older segments lack).
_DUCK_TYPES = {"int64": "BIGINT", "int32": "INTEGER", "string": "VARCHAR", "bool": "BOOLEAN", "double": "DOUBLE",
               "date32[day]": "DATE", "timestamp[us, tz=UTC]": "TIMESTAMPTZ"}  # fmt: skip


def connect(catalog: Catalog) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the views ``requests`` and ``gpu`` over the catalog's segments
    (empty views of the right columns when there is nothing yet)."""
    import duckdb

    conn = duckdb.connect(":memory:")
    for name, schema in (("requests", REQUESTS_SCHEMA), ("gpu", GPU_SCHEMA)):
        files = catalog.files(name)
        if files:
            # By name: segments written before a column was added lack it, whatever the order; a
            # column no segment has yet (all from before it) is null, so every query sees them all.
            relation = conn.read_parquet(files, union_by_name=True)
            present = set(relation.columns)
            relation = relation.project(", ".join(
                f'"{f.name}"' if f.name in present else f'CAST(NULL AS {_DUCK_TYPES[str(f.type)]}) AS "{f.name}"'
                for f in schema
            ))  # fmt: skip
        else:
            relation = conn.from_arrow(schema.empty_table())
        relation.create_view(name)
    return conn


def hourly_spend(
    conn: duckdb.DuckDBPyConnection, since: datetime, *, exclude_host: str | None = None
) -> list[tuple[str, str, int]]:
    """The fleet's priced spend per department and UTC hour from ``since`` on: (department,
    "YYYY-MM-DDTHH", micro-USD), as the ledger's timestamps start. ``exclude_host``: leave one
    host's rows out (an agent adds its own from its ledger, published or not)."""
    where = "ts >= ? AND cost_micro_usd IS NOT NULL"
    params: list[Any] = [since]
    if exclude_host is not None:
        where += " AND host_id <> ?"
        params.append(exclude_host)
    rows = conn.execute(
        "SELECT department, epoch_us(ts) // 3600000000 AS hour, sum(cost_micro_usd)"  # noqa: S608 - fixed columns
        f" FROM requests WHERE {where} GROUP BY 1, 2",
        params,
    ).fetchall()
    return [(str(department), _utc_hour(int(hour)), int(spent)) for department, hour, spent in rows]


def daily_spend(
    source: Catalog | duckdb.DuckDBPyConnection,
    department: str | None,
    first: date,
    last: date,
    zone: ZoneInfo,
    *,
    exclude_host: str | None = None,
) -> list[int]:
    """The fleet's spend (micro-USD) per local day of ``zone`` from ``first`` to ``last``
    (inclusive), of one department or (None) the whole organisation: the series a fleet-wide
    budget's forecast is made from (``agent.budgets.forecast``). Users are left out on purpose:
    the share may hold them only as pseudonyms."""
    from agent.budgets.forecast import daily_from_hours

    since = datetime.combine(first, datetime.min.time(), zone)
    conn = connect(source) if isinstance(source, Catalog) else source
    try:
        hours = hourly_spend(conn, since, exclude_host=exclude_host)
    finally:
        if conn is not source:
            conn.close()
    chosen = ((hour, spent) for d, hour, spent in hours if department is None or d == department)
    return daily_from_hours(chosen, zone, first, last)


@dataclass(frozen=True)
class FleetBudgetForecast:
    """One department or organisation budget over the whole fleet: what the published rows say
    it spent this period, and where the period will end at the fleet's pace."""

    name: str
    scope: str
    subject: str  # the department; "*" for the organisation
    period: str
    action: str
    amount_micro_usd: int
    spent_micro_usd: int
    forecast: Forecast


def budget_forecasts(
    source: Catalog | duckdb.DuckDBPyConnection, policy: Policy, now: datetime
) -> list[FleetBudgetForecast]:
    """Every fleet-wide budget of ``policy`` (department and organisation scopes; a department
    budget matching "*" once per department with spend on the share), forecast from the fleet's
    published daily spend. One read of the share for all of them."""
    from agent.budgets.enforcer import project, spent_this_period
    from agent.budgets.fleet import FLEET_SCOPES
    from agent.budgets.forecast import HISTORY_DAYS, daily_from_hours
    from agent.policy.model import ANY

    zone = policy.zone
    today = now.astimezone(zone).date()
    first = today - timedelta(days=HISTORY_DAYS)
    conn = connect(source) if isinstance(source, Catalog) else source
    try:
        hours = hourly_spend(conn, datetime.combine(first, datetime.min.time(), zone))
    finally:
        if conn is not source:
            conn.close()
    by_department: dict[str, list[tuple[str, int]]] = {}
    for department, hour, spent in hours:
        by_department.setdefault(department, []).append((hour, spent))
    out = []
    for rule in policy.budgets:
        if rule.scope not in FLEET_SCOPES:
            continue
        if rule.scope == "organisation":
            subjects = {ANY: [h for spend in by_department.values() for h in spend]}
        elif rule.match == ANY:
            subjects = {d: spend for d, spend in sorted(by_department.items()) if d}
        else:
            subjects = {rule.match: by_department.get(rule.match, [])}
        for subject, subject_hours in subjects.items():
            daily = daily_from_hours(subject_hours, zone, first, today)
            spent = spent_this_period(daily, first, rule.period, policy.timezone, now)
            amount = rule.amount_micro_usd
            forecast = project(daily, rule.period, amount, spent, policy.timezone, now)
            out.append(FleetBudgetForecast(rule.name, rule.scope, subject, rule.period, rule.action, amount, spent,
                                           forecast))  # fmt: skip
    return out


def _utc_hour(index: int) -> str:
    """Hours since the epoch -> "YYYY-MM-DDTHH" (UTC)."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(hours=index)).strftime("%Y-%m-%dT%H")


def report(
    catalog: Catalog, by: FleetDimension, since: datetime | None = None, until: datetime | None = None
) -> FleetReport:
    conn = connect(catalog)
    try:
        return _report(conn, catalog, by, since, until)
    finally:
        conn.close()


def _window(column: str, since: datetime | None, until: datetime | None) -> tuple[str, list[Any]]:
    clauses, params = ["TRUE"], []
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(until)
    return " AND ".join(clauses), params


def _report(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    by: FleetDimension,
    since: datetime | None,
    until: datetime | None,
) -> FleetReport:
    where, params = _window("ts", since, until)
    request_rows = conn.execute(
        f"SELECT {_REQUEST_KEY[by]} AS key,"  # noqa: S608 - fixed column names
        " count(*) FILTER (WHERE parent_id = '') AS requests,"
        " coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
        " coalesce(sum(cost_micro_usd), 0),"
        " count(*) FILTER (WHERE cost_micro_usd IS NULL),"
        " count(*) FILTER (WHERE status <> 'ok'),"
        " coalesce(sum(cache_saved_micro_usd), 0),"
        " coalesce(sum(routing_saved_micro_usd), 0),"
        " coalesce(sum(compression_saved_micro_usd), 0),"
        " coalesce(sum(provider_cache_saved_micro_usd), 0)"
        f" FROM requests WHERE {where} GROUP BY 1",
        params,
    ).fetchall()
    gpu_where, gpu_params = _window("minute", since, until)
    gpu_key = _GPU_KEY[by]
    gpu: dict[str, int] = {}
    unattributed = 0
    if gpu_key is None:
        unattributed = int(
            conn.execute(f"SELECT coalesce(sum(cost_micro_usd), 0) FROM gpu WHERE {gpu_where}", gpu_params).fetchone()[  # noqa: S608
                0
            ]  # type: ignore[index]
        )
    else:
        for key, cost in conn.execute(
            f"SELECT {gpu_key}, coalesce(sum(cost_micro_usd), 0) FROM gpu WHERE {gpu_where} GROUP BY 1",  # noqa: S608
            gpu_params,
        ).fetchall():
            gpu[str(key)] = int(cost)
    rows: dict[str, FleetRow] = {}
    for key, *numbers in request_rows:
        (req, tin, tout, cost, unpriced, failed, cache, routing, compression, provider) = (int(n) for n in numbers)
        name = str(key)
        rows[name] = FleetRow(name, req, tin, tout, cost, unpriced, failed, gpu.pop(name, 0), cache, routing,
                              compression, provider)  # fmt: skip
    for name, cost in gpu.items():  # GPU time of keys with no request in the window (idle boxes)
        rows[name] = FleetRow(name, 0, 0, 0, 0, 0, 0, cost, 0, 0, 0)

    def order(r: FleetRow) -> tuple[int, str]:
        return (0, r.key) if by == "day" else (-(r.cost_micro_usd + r.gpu_cost_micro_usd), r.key)

    ordered = sorted(rows.values(), key=order)
    return FleetReport(by, since, until, len(catalog.hosts), tuple(ordered), unattributed)
