"""Minute rollups as the agent's sampler job records them in the ledger (table ``gpu_minutes``)."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.gpu.rollup import MinuteRollup
from agent.ledger.database import Database

_COLUMNS = (
    "gpu_index, gpu_name, minute, busy_s, idle_s, unknown_s, energy_wh, util_avg_pct, "
    "peak_mem_used_mib, mem_total_mib, samples"
)


def load_rollups(db: Database, since: datetime) -> list[MinuteRollup]:
    """Rollups from the minute that contains ``since`` on, by minute then GPU; [] when the
    sampler has recorded nothing (no ``gpu_minutes`` table yet).

    ``minute`` is stored as ISO-8601 UTC text in the form ``datetime.isoformat()`` gives for
    an aware UTC datetime (``2026-01-05T10:31:00+00:00``), so text order is time order.
    """
    tables = db.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'gpu_minutes'")
    if not tables:
        return []
    rows = db.query(
        f"SELECT {_COLUMNS} FROM gpu_minutes WHERE minute >= ? ORDER BY minute, gpu_index",  # noqa: S608 - constants
        (since.astimezone(UTC).replace(second=0, microsecond=0).isoformat(),),
    )
    return [
        MinuteRollup(
            gpu_index=int(row["gpu_index"]),
            gpu_name=str(row["gpu_name"] or ""),
            minute=datetime.fromisoformat(row["minute"]).astimezone(UTC),
            busy_s=float(row["busy_s"]),
            idle_s=float(row["idle_s"]),
            unknown_s=float(row["unknown_s"]),
            energy_wh=float(row["energy_wh"] or 0.0),
            util_avg_pct=None if row["util_avg_pct"] is None else float(row["util_avg_pct"]),
            peak_mem_used_mib=None if row["peak_mem_used_mib"] is None else float(row["peak_mem_used_mib"]),
            mem_total_mib=None if row["mem_total_mib"] is None else float(row["mem_total_mib"]),
            samples=int(row["samples"]),
        )
        for row in rows
    ]
