"""GPU minute rollups and who each minute is charged to (tables from migration m005)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from agent.gpu.attribution import Charge
from agent.ledger.database import Database


class Rollup(Protocol):
    """One GPU minute (agent.gpu.rollup.MinuteRollup)."""

    @property
    def gpu_index(self) -> int: ...
    @property
    def gpu_name(self) -> str: ...
    @property
    def minute(self) -> datetime: ...
    @property
    def busy_s(self) -> float: ...
    @property
    def idle_s(self) -> float: ...
    @property
    def unknown_s(self) -> float: ...
    @property
    def energy_wh(self) -> float | None: ...
    @property
    def util_avg_pct(self) -> float | None: ...
    @property
    def peak_mem_used_mib(self) -> float | None: ...
    @property
    def mem_total_mib(self) -> float | None: ...
    @property
    def samples(self) -> int: ...


@dataclass(frozen=True)
class GpuSpend:
    key: str
    seconds: float
    cost_micro_usd: int
    unpriced_minutes: int


# Spend dimension -> how a charge row names it. Fixed SQL text: nothing from input reaches it.
_GROUPS = {
    "user": "CASE WHEN kind = 'user' THEN subject WHEN kind = 'os_user' THEN 'os:' || subject ELSE kind END",
    "department": "CASE WHEN kind = 'idle' THEN 'idle:' || department ELSE department END",
}


class GpuLedger:
    def __init__(self, db: Database) -> None:
        self._db = db

    def save_minute(self, rollup: Rollup, charges: Sequence[Charge]) -> None:
        """One GPU minute and its charges, in one transaction (a minute seen again replaces it)."""
        minute = _iso(rollup.minute)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO gpu_minutes (gpu_index, gpu_name, minute, busy_s, idle_s, unknown_s,"
                " energy_wh, util_avg_pct, peak_mem_used_mib, mem_total_mib, samples)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rollup.gpu_index,
                    rollup.gpu_name,
                    minute,
                    rollup.busy_s,
                    rollup.idle_s,
                    rollup.unknown_s,
                    rollup.energy_wh,
                    rollup.util_avg_pct,
                    rollup.peak_mem_used_mib,
                    rollup.mem_total_mib,
                    rollup.samples,
                ),
            )
            conn.execute("DELETE FROM gpu_charges WHERE minute = ? AND gpu_index = ?", (minute, rollup.gpu_index))
            conn.executemany(
                "INSERT INTO gpu_charges (minute, gpu_index, kind, subject, department, seconds, cost_micro_usd)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(minute, rollup.gpu_index, c.kind, c.subject, c.department, c.seconds, c.cost_micro_usd)
                 for c in charges],
            )  # fmt: skip

    def spend(self, by: str, since: datetime, user_name: str | None = None) -> list[GpuSpend]:
        """GPU cost per user (``os:<name>`` for other processes' owners, ``idle``/``other``) or
        per department (``idle:<department>`` for idle time); only ``user_name``'s when given."""
        group = _GROUPS.get(by)
        if group is None:
            return []
        where, params = "minute >= ?", [_iso(since)]
        if user_name is not None:
            where += " AND kind = 'user' AND subject = ?"
            params.append(user_name)
        rows = self._db.query(
            f"SELECT {group} AS key, sum(seconds) AS seconds, coalesce(sum(cost_micro_usd), 0) AS cost,"  # noqa: S608
            f" sum(cost_micro_usd IS NULL) AS unpriced FROM gpu_charges WHERE {where} GROUP BY 1 ORDER BY cost DESC",
            tuple(params),
        )
        return [GpuSpend(r["key"], float(r["seconds"]), int(r["cost"]), int(r["unpriced"])) for r in rows]

    def minutes(self) -> int:
        return int(self._db.query("SELECT count(*) AS n FROM gpu_minutes")[0]["n"])


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
