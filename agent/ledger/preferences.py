"""Per-user preferences set from the tray: for now, pausing cloud models (local answers only)."""

from __future__ import annotations

from agent.ledger.database import Database, utc_now_iso


class Preferences:
    def __init__(self, db: Database) -> None:
        self._db = db

    def cloud_paused(self, user_id: int) -> bool:
        rows = self._db.query("SELECT cloud_paused FROM user_preferences WHERE user_id = ?", (user_id,))
        return bool(rows and rows[0]["cloud_paused"])

    def set_cloud_paused(self, user_id: int, paused: bool) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO user_preferences (user_id, cloud_paused, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(user_id) DO UPDATE SET cloud_paused = excluded.cloud_paused,"
                " updated_at = excluded.updated_at",
                (user_id, int(paused), utc_now_iso()),
            )
