"""Applied policies: every policy this agent put in force, the newest being the last good one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.ledger.database import Database, utc_now_iso


@dataclass(frozen=True)
class PolicyRow:
    id: int
    version: int
    sha256: str
    body: bytes
    signature: bytes
    key_id: str
    applied_at: str


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def save(self, version: int, sha256: str, body: bytes, signature: bytes, key_id: str) -> PolicyRow:
        """Record a policy as applied now; it becomes ``last_good()``. Body must be UTF-8."""
        applied_at = utc_now_iso()
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO policies (version, sha256, body, signature, key_id, applied_at) VALUES (?, ?, ?, ?, ?, ?)",
                (version, sha256, body.decode("utf-8"), signature.decode("ascii"), key_id, applied_at),
            )
            row_id = int(cursor.lastrowid or 0)
        return PolicyRow(row_id, version, sha256, body, signature, key_id, applied_at)

    def last_good(self) -> PolicyRow | None:
        rows = self._db.query(
            "SELECT id, version, sha256, body, signature, key_id, applied_at FROM policies ORDER BY id DESC LIMIT 1"
        )
        if not rows:
            return None
        r = rows[0]
        return PolicyRow(
            r["id"],
            r["version"],
            r["sha256"],
            r["body"].encode("utf-8"),
            r["signature"].encode("ascii"),
            r["key_id"],
            r["applied_at"],
        )

    def count(self) -> int:
        return int(self._db.query("SELECT count(*) AS n FROM policies")[0]["n"])


def last_good_in(ledger: Path) -> PolicyRow | None:
    """The last good policy in the ledger file ``ledger`` (None: no file, or none applied yet),
    for commands that run without the agent."""
    if not ledger.is_file():
        return None
    db = Database.open(ledger)
    try:
        return PolicyStore(db).last_good()
    finally:
        db.close()
