"""Users and their hashed bearer tokens."""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import InvalidRequest
from agent.ledger.database import Database, utc_now_iso


@dataclass(frozen=True)
class UserRow:
    id: int
    name: str
    department: str
    role: str
    created_at: str
    revoked_at: str | None
    active_tokens: int


class UserStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, name: str, department: str, role: str, token_hash: str) -> int:
        with self._db.transaction() as conn:  # BEGIN IMMEDIATE: the check and insert are atomic
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise InvalidRequest(f"user {name!r} already exists")
            now = utc_now_iso()
            cursor = conn.execute(
                "INSERT INTO users (name, department, role, created_at) VALUES (?, ?, ?, ?)",
                (name, department, role, now),
            )
            user_id = int(cursor.lastrowid or 0)
            conn.execute(
                "INSERT INTO tokens (user_id, token_hash, created_at) VALUES (?, ?, ?)",
                (user_id, token_hash, now),
            )
        return user_id

    def add_token(self, user_id: int, token_hash: str, label: str = "") -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO tokens (user_id, token_hash, label, created_at) VALUES (?, ?, ?, ?)",
                (user_id, token_hash, label, utc_now_iso()),
            )

    def get(self, name: str) -> UserRow | None:
        rows = self._select("WHERE u.name = ?", (name,))
        return rows[0] if rows else None

    def all(self) -> list[UserRow]:
        return self._select("", ())

    def count(self) -> int:
        return int(self._db.query("SELECT count(*) AS n FROM users")[0]["n"])

    def _select(self, where: str, params: tuple[str, ...]) -> list[UserRow]:
        # `where` is one of this class's literals, never input.
        sql = (
            "SELECT u.id, u.name, u.department, u.role, u.created_at, u.revoked_at, "  # noqa: S608
            "(SELECT count(*) FROM tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL)"
            f" AS active_tokens FROM users u {where} ORDER BY u.name"
        )
        return [UserRow(**row) for row in self._db.query(sql, params)]

    def by_token_hash(self, token_hash: str) -> UserRow | None:
        rows = self._db.query(
            "SELECT u.id, u.name, u.department, u.role, u.created_at, u.revoked_at, 1 AS active_tokens"
            " FROM tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.token_hash = ? AND t.revoked_at IS NULL AND u.revoked_at IS NULL",
            (token_hash,),
        )
        return UserRow(**rows[0]) if rows else None

    def revoke(self, name: str) -> bool:
        with self._db.transaction() as conn:
            now = utc_now_iso()
            row = conn.execute("SELECT id FROM users WHERE name = ? AND revoked_at IS NULL", (name,)).fetchone()
            if row is None:
                return False
            conn.execute("UPDATE users SET revoked_at = ? WHERE id = ?", (now, row[0]))
            conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
                (now, row[0]),
            )
        return True
