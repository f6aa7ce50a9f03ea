"""One row per request, and the spend reports built from them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from agent.ledger.database import Database

Status = Literal["ok", "error", "aborted"]
SpendDimension = Literal["user", "department", "feature", "model", "provider", "route", "tier"]

# Report dimension -> column. A fixed map: user input never reaches the SQL text.
_DIMENSION_COLUMNS: dict[str, str] = {
    "user": "user_name",
    "department": "department",
    "feature": "feature",
    "model": "model",
    "provider": "provider",
    "route": "route",
    "tier": "tier",
}
SPEND_DIMENSIONS = tuple(_DIMENSION_COLUMNS)


@dataclass(frozen=True)
class RequestRecord:
    id: str
    ts: str
    user_id: int
    user_name: str
    department: str
    feature: str
    requested_model: str
    model: str
    provider: str
    route: str
    reason: str
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    cost_micro_usd: int | None
    price_source: str
    cost_saved_micro_usd: int
    cache_hit: bool
    latency_ms: int
    status: Status
    error_type: str
    stream: bool
    attempts: int
    # Routing (m003): the tier that answered ("" for a model in no tier), the router's score,
    # the local answer's confidence, and for a cascade's first call the request it belongs to.
    tier: str = ""
    route_score: float | None = None
    confidence: float | None = None
    parent_id: str = ""
    # Prompt optimiser: prompt tokens before and after it, and what it did.
    prompt_tokens_before: int | None = None
    prompt_tokens_after: int | None = None
    optimizer_note: str = ""
    # The local model had to be loaded for this request (after an idle unload): what it waited.
    model_load_ms: int | None = None
    # Budget hold (m008): the input tokens estimated before the call, and the micro-USD held.
    input_tokens_expected: int | None = None
    hold_micro_usd: int | None = None
    # Usage in full (m012): input read from / written to the provider's prompt cache (part of
    # input_tokens, billed at their own rates), reasoning tokens (part of output_tokens), and what
    # the provider's cache took off the bill (the same usage at the full input rate, less the cost).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    provider_cache_saved_micro_usd: int = 0


@dataclass(frozen=True)
class SpendRow:
    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    cost_saved_micro_usd: int
    unpriced_requests: int
    failed_requests: int
    # The provider's prompt cache: input tokens it served, and what that took off the bill.
    cache_read_tokens: int = 0
    provider_cache_saved_micro_usd: int = 0


_COLUMNS = tuple(RequestRecord.__dataclass_fields__)
# SQL text below is built only from the fixed column names above, never from input.
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608


def _values(record: RequestRecord) -> tuple[object, ...]:
    """The row's values in column order (``dataclasses.asdict`` deep-copies: 20x the time)."""
    return tuple(getattr(record, column) for column in _COLUMNS)


class RequestLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, record: RequestRecord) -> None:
        """Insert one row, atomically."""
        with self._db.transaction() as conn:
            conn.execute(_INSERT, _values(record))

    def record_many(self, records: Iterable[RequestRecord]) -> None:
        """Insert rows in one transaction (imports, history replays): all or none."""
        with self._db.transaction() as conn:
            conn.executemany(_INSERT, (_values(r) for r in records))

    def summary(
        self, since_day: str, user_id: int | None = None, dimensions: tuple[SpendDimension, ...] = ()
    ) -> SpendSummary:
        """Daily spend, spend per dimension and savings over whole UTC days, read from
        `spend_daily` (kept by a trigger on every request row): a dashboard costs the same over a
        million requests as over ten."""
        where, params = "day >= :day", {"day": since_day}
        if user_id is not None:
            where += " AND user_id = :user_id"
            params["user_id"] = str(user_id)
        daily = tuple(
            DaySpend(str(r["day"]), int(r["requests"]), int(r["cost_micro_usd"]))
            for r in self._db.query(
                f"SELECT day, sum(requests) AS requests, sum(cost_micro_usd) AS cost_micro_usd"  # noqa: S608
                f" FROM spend_daily WHERE {where} GROUP BY day ORDER BY day",
                params,
            )
        )
        by: dict[str, tuple[SpendRow, ...]] = {}
        for dimension in dimensions:
            if dimension == "user":
                raise ValueError("the daily rollup is per user id; report users with RequestLog.spend")
            column = _DIMENSION_COLUMNS[dimension]
            rows = self._db.query(
                f"SELECT {column} AS key, {_SUMS} FROM spend_daily WHERE {where}"  # noqa: S608 - fixed names
                f" GROUP BY {column} ORDER BY cost_micro_usd DESC, key",
                params,
            )
            by[dimension] = tuple(SpendRow(**r) for r in rows)
        saved = self._db.query(
            "SELECT coalesce(sum(cache_saved_micro_usd), 0) AS cache,"  # noqa: S608
            " coalesce(sum(compression_saved_micro_usd), 0) AS compression,"
            f" coalesce(sum(provider_cache_saved_micro_usd), 0) AS provider FROM spend_daily WHERE {where}",
            params,
        )[0]
        return SpendSummary(daily, by, int(saved["cache"]), int(saved["compression"]), int(saved["provider"]))

    def get(self, request_id: str) -> RequestRecord | None:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE id = ?"  # noqa: S608
        rows = self._db.query(sql, (request_id,))
        if not rows:
            return None
        row = rows[0]
        for flag in ("tokens_estimated", "cache_hit", "stream"):
            row[flag] = bool(row[flag])
        return RequestRecord(**row)

    def spend(self, by: SpendDimension, since_iso: str, user_id: int | None = None) -> list[SpendRow]:
        """Totals per value of `by` since a time; only `user_id`'s rows when given."""
        column = _DIMENSION_COLUMNS[by]
        where, params = "ts >= :since", {"since": since_iso}
        if user_id is not None:
            where += " AND user_id = :user_id"
            params["user_id"] = str(user_id)
        sql = (
            f"SELECT {column} AS key, sum(parent_id = '') AS requests,"  # noqa: S608
            " coalesce(sum(input_tokens), 0) AS input_tokens,"
            " coalesce(sum(output_tokens), 0) AS output_tokens,"
            " coalesce(sum(cost_micro_usd), 0) AS cost_micro_usd,"
            " coalesce(sum(cost_saved_micro_usd), 0) AS cost_saved_micro_usd,"
            " sum(cost_micro_usd IS NULL) AS unpriced_requests,"
            " sum(status != 'ok') AS failed_requests,"
            " coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,"
            " coalesce(sum(provider_cache_saved_micro_usd), 0) AS provider_cache_saved_micro_usd"
            f" FROM requests WHERE {where} GROUP BY {column} ORDER BY cost_micro_usd DESC, key"
        )
        return [SpendRow(**row) for row in self._db.query(sql, params)]


@dataclass(frozen=True)
class DaySpend:
    day: str  # UTC, YYYY-MM-DD
    requests: int
    cost_micro_usd: int


@dataclass(frozen=True)
class SpendSummary:
    """The dashboard's figures from the daily rollup: whole UTC days from `since_day` on."""

    daily: tuple[DaySpend, ...]
    by: dict[str, tuple[SpendRow, ...]]  # dimension -> rows, the most expensive first
    cache_saved_micro_usd: int
    compression_saved_micro_usd: int
    provider_cache_saved_micro_usd: int = 0  # the provider's prompt cache, beside our own savings


_SUMS = (
    "sum(requests) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,"
    " sum(cost_micro_usd) AS cost_micro_usd,"
    " sum(cache_saved_micro_usd + compression_saved_micro_usd) AS cost_saved_micro_usd,"
    " sum(unpriced_requests) AS unpriced_requests, sum(failed_requests) AS failed_requests,"
    " sum(cache_read_tokens) AS cache_read_tokens,"
    " sum(provider_cache_saved_micro_usd) AS provider_cache_saved_micro_usd"
)
