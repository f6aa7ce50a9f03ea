"""What the fleet publisher reads from the ledger and where it got to (table from migration m008).

``fleet_watermarks`` holds, per stream, the last ledger position published to the share: the
``requests`` rowid, and the GPU charges' minute. Reads are in batches so an outage of days
catches up without one huge query.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.ledger.database import Database, utc_now_iso


class FleetRows:
    def __init__(self, db: Database) -> None:
        self._db = db

    def positions(self) -> dict[str, str]:
        """The published position of each stream (``requests``: a rowid; ``gpu``: a minute)."""
        rows = self._db.query("SELECT stream, position FROM fleet_watermarks")
        found = {str(r["stream"]): str(r["position"]) for r in rows}
        return {"requests": found.get("requests", "0"), "gpu": found.get("gpu", "")}

    def save_positions(self, positions: Mapping[str, str], segments: int) -> None:
        with self._db.transaction() as conn:
            for stream, position in positions.items():
                conn.execute(
                    "INSERT INTO fleet_watermarks (stream, position, segments, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (stream) DO UPDATE SET position = excluded.position,"
                    " segments = excluded.segments, updated_at = excluded.updated_at",
                    (stream, position, segments, utc_now_iso()),
                )

    def requests_after(self, rowid: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` request rows after ``rowid``, and the last rowid read."""
        rows = self._db.query(
            "SELECT rowid AS _rowid, id, ts, user_name, department, feature, requested_model, model, provider,"
            " route, tier, status, parent_id, input_tokens, output_tokens, tokens_estimated, cost_micro_usd,"
            " price_source, cache_hit, cost_saved_micro_usd, latency_ms, reason, cache_read_tokens,"
            " cache_write_tokens, reasoning_tokens, provider_cache_saved_micro_usd"
            " FROM requests WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, limit),
        )
        return rows, (int(rows[-1]["_rowid"]) if rows else rowid)

    def requests_waiting(self, rowid: int) -> int:
        return int(self._db.query("SELECT count(*) AS n FROM requests WHERE rowid > ?", (rowid,))[0]["n"])

    def gpu_charges_between(self, after: str, before: str) -> list[dict[str, Any]]:
        """GPU minute charges with ``after < minute < before`` (ISO minutes), oldest first."""
        return self._db.query(
            "SELECT minute, gpu_index, kind, subject, department, seconds, cost_micro_usd FROM gpu_charges"
            " WHERE minute > ? AND minute < ? ORDER BY minute",
            (after, before),
        )
