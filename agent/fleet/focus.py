"""FOCUS 1.2 chargeback rows over the fleet's segments, for FinOps tools that read FOCUS.

One ``Usage`` row per UTC day, host, user and model, split further by what sets its requests
apart (department, feature, tier, route, cache hit, provider, price source), and one row per
UTC day, host and GPU-time subject (a user, an OS user, idle or other time). DuckDB does the
whole mapping in SQL over the same ``requests`` and ``gpu`` views as the reports
(``report.connect``).

Money stays exact: integer micro-USD become ``DECIMAL(18,6)`` by a decimal multiplication, and
a row's unit price (it sums requests, so it is their average) is rounded half-up to 18 places
in integer arithmetic. Cached answers cost what the ledger says (0) and carry their saving in a
tag; a request or GPU minute with no known price counts 0 and is tagged
``aifinops/price_unknown: true``, never dropped. docs/ADMIN.md lists every column's source.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.errors import ConfigError
from agent.fleet.catalog import Catalog
from agent.fleet.report import connect

if TYPE_CHECKING:
    import duckdb

FOCUS_VERSION = "1.2"
ExportFormat = Literal["csv", "parquet"]
# What this export supports, in FOCUS's words (focus-validator --applicability-criteria): the
# rules behind each apply to it. Not claimed: regions and availability zones, commitment discounts,
# capacity reservations, several pricing categories or account types, other currencies.
APPLICABILITY_CRITERIA = (
    "ACCOUNT_NAMING_SUPPORTED",
    "BILLING_BASED_ON_PROVISIONED_RESOURCES_SUPPORTED",
    "NEGOTIATED_PRICING_SUPPORTED",
    "PUBLIC_PRICE_LIST_SUPPORTED",
    "RESOURCE_TYPE_ASSIGNMENT_SUPPORTED",
    "SUB_ACCOUNT_SUPPORTED",
    "TAGGING_SUPPORTED",
    "UNIT_PRICING_SUPPORTED",
    "USAGE_MEASUREMENT_SUPPORTED",
)
# Keys of tags the agent sets itself (FOCUS: provider-defined, so prefixed). `user`, `department`
# and `feature` are the organisation's own labels and keep their plain names.
TAG_PREFIX = "aifinops/"

# Exact money: integer micro-USD -> USD, and micro-USD per (quantity / 1000) -> USD per unit,
# rounded half up to 1e-18 USD (atto-USD) in integer arithmetic (DuckDB's decimal division
# would go through a double).
_MACROS = """
CREATE OR REPLACE TEMP MACRO usd(micros) AS
    CAST(CAST(micros AS DECIMAL(38, 0)) * CAST('0.000001' AS DECIMAL(18, 6)) AS DECIMAL(18, 6));
CREATE OR REPLACE TEMP MACRO unit_price(micros, quantity_milli) AS
    CAST(CASE WHEN quantity_milli = 0 THEN 0
              ELSE (CAST(micros AS HUGEINT) * 2000000000000000 + quantity_milli) // (2 * quantity_milli)
         END AS DECIMAL(38, 0)) * CAST('0.000000000000000001' AS DECIMAL(38, 18));
CREATE OR REPLACE TEMP MACRO quantity(quantity_milli) AS
    CAST(CAST(quantity_milli AS DECIMAL(38, 0)) * CAST('0.001' AS DECIMAL(18, 3)) AS DECIMAL(38, 3));
CREATE OR REPLACE TEMP MACRO usd_text(micros) AS CAST(usd(micros) AS VARCHAR);
"""

# A request with no tokens that still cost something (a local call priced by compute time that
# produced nothing) is priced per request: a price per token would not multiply back to its cost.
_REQUEST_CHARGES = """
WITH grouped AS (
    SELECT day, host_id, department, user_name, feature, model, provider, route, tier, cache_hit,
           price_source, cost_micro_usd IS NULL AS price_unknown,
           CASE WHEN input_tokens + output_tokens = 0 AND coalesce(cost_micro_usd, 0) <> 0
                THEN 'Requests' ELSE 'Tokens' END AS unit,
           count(*) AS calls,
           CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
           CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
           CAST(coalesce(sum(cost_micro_usd), 0) AS BIGINT) AS cost_micro_usd,
           CAST(sum(cache_saved_micro_usd) AS BIGINT) AS cache_saved_micro_usd,
           CAST(sum(routing_saved_micro_usd) AS BIGINT) AS routing_saved_micro_usd,
           CAST(sum(compression_saved_micro_usd) AS BIGINT) AS compression_saved_micro_usd,
           CAST(sum(cache_read_tokens) AS BIGINT) AS cache_read_tokens,
           CAST(sum(provider_cache_saved_micro_usd) AS BIGINT) AS provider_cache_saved_micro_usd
    FROM requests WHERE {where} GROUP BY ALL
)
SELECT 'requests' AS stream, day, host_id, nullif(department, '') AS department, cost_micro_usd,
       CASE WHEN price_unknown THEN calls ELSE 0 END AS unpriced,
       unit,
       1000 * CASE unit WHEN 'Requests' THEN calls ELSE input_tokens + output_tokens END AS quantity_milli,
       CASE WHEN cache_hit OR route = 'cache' THEN 'Semantic cache'
            WHEN route = 'local' THEN 'Local LLM' ELSE 'Cloud LLM' END AS service_name,
       'Generative AI' AS service_subcategory,
       CASE WHEN route = 'cloud' AND NOT cache_hit THEN provider ELSE $account_name END AS host_provider_name,
       nullif(provider, '') AS publisher_name,
       model AS sku_id,
       model || ':' || price_source || CASE unit WHEN 'Requests' THEN ':per-request' ELSE '' END AS sku_price_id,
       'Model usage' AS sku_meter,
       CASE WHEN cache_hit THEN 'Semantic-cache answers of ' || model
            ELSE model || ' ' || lower(unit) || ' via ' || provider END AS description,
       input_tokens, output_tokens,
       json_merge_patch('{{}}', json_object(
           'user', nullif(user_name, ''),
           'department', nullif(department, ''),
           'feature', nullif(feature, ''),
           '{p}tier', nullif(tier, ''),
           '{p}route', nullif(route, ''),
           '{p}cache_hit', CASE WHEN cache_hit THEN true END,
           '{p}cache_saved_usd', CASE WHEN cache_hit THEN usd_text(cache_saved_micro_usd) END,
           '{p}routing_saved_usd', CASE WHEN routing_saved_micro_usd <> 0 THEN usd_text(routing_saved_micro_usd) END,
           '{p}compression_saved_usd',
               CASE WHEN compression_saved_micro_usd <> 0 THEN usd_text(compression_saved_micro_usd) END,
           '{p}cached_input_tokens', CASE WHEN cache_read_tokens <> 0 THEN cache_read_tokens END,
           '{p}provider_cache_saved_usd',
               CASE WHEN provider_cache_saved_micro_usd <> 0 THEN usd_text(provider_cache_saved_micro_usd) END,
           '{p}price_unknown', CASE WHEN price_unknown THEN true END
       )) AS tags
FROM grouped
"""

_GPU_CHARGES = """
WITH grouped AS (
    SELECT day, host_id, kind, subject, department, cost_micro_usd IS NULL AS price_unknown,
           count(*) AS minutes,
           CAST(round(sum(seconds) * 1000) AS BIGINT) AS milliseconds,
           CAST(coalesce(sum(cost_micro_usd), 0) AS BIGINT) AS cost_micro_usd
    FROM gpu WHERE {where} GROUP BY ALL
)
SELECT 'gpu' AS stream, day, host_id, nullif(department, '') AS department, cost_micro_usd,
       CASE WHEN price_unknown THEN minutes ELSE 0 END AS unpriced,
       'GPU-Seconds' AS unit,
       milliseconds AS quantity_milli,
       'GPU time' AS service_name,
       'AI Platforms' AS service_subcategory,
       $account_name AS host_provider_name,
       $account_name AS publisher_name,
       'gpu-time' AS sku_id,
       'gpu-time:' || host_id AS sku_price_id,
       'GPU time' AS sku_meter,
       'GPU time (' || kind || ')' AS description,
       NULL::BIGINT AS input_tokens, NULL::BIGINT AS output_tokens,
       json_merge_patch('{{}}', json_object(
           'user', CASE WHEN kind = 'user' THEN subject END,
           'department', nullif(department, ''),
           '{p}gpu_time', kind,
           '{p}os_user', CASE WHEN kind = 'os_user' THEN subject END,
           '{p}price_unknown', CASE WHEN price_unknown THEN true END
       )) AS tags
FROM grouped
"""

# The FOCUS 1.2 columns (all of them: those that do not apply are null), then our own (x_).
_FOCUS_COLUMNS = """
    NULL::VARCHAR AS AvailabilityZone,
    usd(cost_micro_usd) AS BilledCost,
    $account_id AS BillingAccountId,
    $account_name AS BillingAccountName,
    'Organization' AS BillingAccountType,
    'USD' AS BillingCurrency,
    {billing_period_end} AS BillingPeriodEnd,
    {billing_period_start} AS BillingPeriodStart,
    NULL::VARCHAR AS CapacityReservationId,
    NULL::VARCHAR AS CapacityReservationStatus,
    'Usage' AS ChargeCategory,
    NULL::VARCHAR AS ChargeClass,
    description || ' on ' || coalesce(hostname, host_id) AS ChargeDescription,
    'Usage-Based' AS ChargeFrequency,
    {charge_period_end} AS ChargePeriodEnd,
    {charge_period_start} AS ChargePeriodStart,
    NULL::VARCHAR AS CommitmentDiscountCategory,
    NULL::VARCHAR AS CommitmentDiscountId,
    NULL::VARCHAR AS CommitmentDiscountName,
    NULL::DECIMAL(38, 3) AS CommitmentDiscountQuantity,
    NULL::VARCHAR AS CommitmentDiscountStatus,
    NULL::VARCHAR AS CommitmentDiscountType,
    NULL::VARCHAR AS CommitmentDiscountUnit,
    quantity(quantity_milli) AS ConsumedQuantity,
    unit AS ConsumedUnit,
    usd(cost_micro_usd) AS ContractedCost,
    unit_price(cost_micro_usd, quantity_milli) AS ContractedUnitPrice,
    usd(cost_micro_usd) AS EffectiveCost,
    NULL::VARCHAR AS InvoiceId,
    $account_name AS InvoiceIssuerName,
    usd(cost_micro_usd) AS ListCost,
    unit_price(cost_micro_usd, quantity_milli) AS ListUnitPrice,
    'Standard' AS PricingCategory,
    'USD' AS PricingCurrency,
    unit_price(cost_micro_usd, quantity_milli) AS PricingCurrencyContractedUnitPrice,
    usd(cost_micro_usd) AS PricingCurrencyEffectiveCost,
    unit_price(cost_micro_usd, quantity_milli) AS PricingCurrencyListUnitPrice,
    quantity(quantity_milli) AS PricingQuantity,
    unit AS PricingUnit,
    $account_name AS ProviderName,
    coalesce(publisher_name, $account_name) AS PublisherName,
    NULL::VARCHAR AS RegionId,
    NULL::VARCHAR AS RegionName,
    host_id AS ResourceId,
    hostname AS ResourceName,
    'Host' AS ResourceType,
    'AI and Machine Learning' AS ServiceCategory,
    service_name AS ServiceName,
    service_subcategory AS ServiceSubcategory,
    sku_id AS SkuId,
    sku_meter AS SkuMeter,
    NULL::VARCHAR AS SkuPriceDetails,
    sku_price_id AS SkuPriceId,
    department AS SubAccountId,
    department AS SubAccountName,
    CASE WHEN department IS NOT NULL THEN 'Department' END AS SubAccountType,
    CAST(tags AS VARCHAR) AS Tags,
    host_provider_name AS x_HostProviderName,
    input_tokens AS x_InputTokens,
    output_tokens AS x_OutputTokens,
    $account_name AS x_ServiceProviderName
"""

# The four periods are UTC midnights: the charge's day and the billing month.
_PERIODS = {
    "billing_period_end": "date_trunc('month', day) + INTERVAL 1 MONTH",
    "billing_period_start": "date_trunc('month', day)",
    "charge_period_end": "day + INTERVAL 1 DAY",
    "charge_period_start": "day",
}
_TIMESTAMP = {
    # Parquet: a UTC timestamp (the connection's time zone is UTC).
    "parquet": "CAST(CAST({} AS TIMESTAMP) AS TIMESTAMPTZ)",
    # CSV: ISO 8601 with the Z that FOCUS asks for.
    "csv": "strftime(CAST({} AS TIMESTAMP), '%Y-%m-%dT%H:%M:%SZ')",
}


@dataclass(frozen=True)
class FocusAccount:
    """Who the chargeback is from: FOCUS BillingAccountId/Name and InvoiceIssuerName."""

    account_id: str = "aifinops"
    name: str = "AIFinOps fleet"


@dataclass(frozen=True)
class FocusExport:
    path: Path
    format: ExportFormat
    since: date | None
    until: date | None  # exclusive
    request_rows: int
    gpu_rows: int
    billed_micro_usd: int
    unpriced_requests: int  # exported at cost 0, tagged aifinops/price_unknown
    unpriced_gpu_minutes: int

    @property
    def rows(self) -> int:
        return self.request_rows + self.gpu_rows


def format_of(path: Path) -> ExportFormat:
    """The file format a path's suffix asks for."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    raise ConfigError(f"{path.name}: a FOCUS export is a .csv or a .parquet file")


def day_window(since: datetime | None, until: datetime | None) -> tuple[date | None, date | None]:
    """Whole UTC days: the day ``since`` falls in, up to the day ``until`` falls in (included
    unless ``until`` is its midnight). A FOCUS charge period is a whole day."""
    first = since.astimezone(UTC).date() if since is not None else None
    end: date | None = None
    if until is not None:
        moment = until.astimezone(UTC)
        end = moment.date() if moment.timetz() == time(0, tzinfo=UTC) else moment.date() + timedelta(days=1)
    return first, end


def export(
    catalog: Catalog,
    out: Path,
    *,
    since: date | None = None,
    until: date | None = None,
    account: FocusAccount = FocusAccount(),
    fmt: ExportFormat | None = None,
) -> FocusExport:
    """Write the FOCUS rows of the days ``[since, until)`` (all days: None) to ``out``, replacing
    it whole (a temporary file is renamed over it). Raises OSError when it cannot be written."""
    fmt = fmt or format_of(out)
    conn = connect(catalog)
    try:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(_MACROS)
        conn.execute("CREATE TEMP TABLE hosts (host_id VARCHAR, hostname VARCHAR)")
        if catalog.hosts:
            conn.executemany(
                "INSERT INTO hosts VALUES (?, ?)", [(h.host_id, h.hostname or None) for h in catalog.hosts]
            )
        _charges(conn, since, until, account)
        _write(conn, out, fmt, account)
        summary = conn.execute(
            "SELECT count(*) FILTER (WHERE stream = 'requests'), count(*) FILTER (WHERE stream = 'gpu'),"
            " coalesce(sum(cost_micro_usd), 0),"
            " coalesce(sum(unpriced) FILTER (WHERE stream = 'requests'), 0),"
            " coalesce(sum(unpriced) FILTER (WHERE stream = 'gpu'), 0) FROM charges"
        ).fetchone()
    finally:
        conn.close()
    assert summary is not None  # noqa: S101 - an aggregate always has a row
    request_rows, gpu_rows, billed, unpriced_requests, unpriced_gpu = (int(n) for n in summary)
    return FocusExport(out, fmt, since, until, request_rows, gpu_rows, billed, unpriced_requests, unpriced_gpu)


def _charges(conn: duckdb.DuckDBPyConnection, since: date | None, until: date | None, account: FocusAccount) -> None:
    clauses, params = ["TRUE"], dict[str, object](account_name=account.name)
    if since is not None:
        clauses.append("day >= $since")
        params["since"] = since
    if until is not None:
        clauses.append("day < $until")
        params["until"] = until
    where = " AND ".join(clauses)
    requests = _REQUEST_CHARGES.format(where=where, p=TAG_PREFIX)
    gpu = _GPU_CHARGES.format(where=where, p=TAG_PREFIX)
    conn.execute(
        f"CREATE TEMP TABLE charges AS SELECT * FROM ({requests}) UNION ALL BY NAME SELECT * FROM ({gpu})",  # noqa: S608
        params,
    )


def _write(conn: duckdb.DuckDBPyConnection, out: Path, fmt: ExportFormat, account: FocusAccount) -> None:
    import duckdb

    # A crash leaves an obvious leftover next to the output, never a half-written export under
    # the real name.
    partial = out.with_name(f".{out.name}.partial")
    columns = _FOCUS_COLUMNS.format(**{name: _TIMESTAMP[fmt].format(sql) for name, sql in _PERIODS.items()})
    select = (
        f"SELECT {columns} FROM charges LEFT JOIN hosts USING (host_id)"  # noqa: S608 - fixed SQL text
        " ORDER BY ChargePeriodStart, ResourceId, ServiceName, SkuId, Tags"
    )
    relation = conn.sql(select, params={"account_id": account.account_id, "account_name": account.name})
    try:
        try:
            if fmt == "csv":
                relation.write_csv(str(partial), header=True)
            else:
                relation.write_parquet(str(partial), compression="zstd")
        except duckdb.IOException as e:
            raise OSError(str(e).removeprefix("IO Error: ")) from e
        os.replace(partial, out)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
