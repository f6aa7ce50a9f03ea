"""The ledger database: one SQLite file in WAL mode, shared by the agent's threads.

One connection guarded by a lock (sqlite3 connections are not safe to share unguarded:
concurrent writers lost rows). Every write is one transaction, so a crash never leaves half a
record.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.errors import LedgerError
from agent.ledger.migrations import MIGRATIONS


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def statements(script: str) -> list[str]:
    """A migration's statements, split at the semicolons that end one (not those in a trigger)."""
    found, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                found.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        found.append(pending.strip())
    return found


class Database:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._db = sqlite_utils.Database(conn)
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Database:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
            db = cls(conn, path)
            db._db.enable_wal()
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            db._migrate()
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"cannot open the ledger at {path}: {e}") from e
        return db

    def _migrate(self) -> None:
        with self.transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
            done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
            for name, script in MIGRATIONS:
                if name in done:
                    continue
                for statement in statements(script):
                    conn.execute(statement)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, utc_now_iso()))

    def applied_migrations(self) -> list[str]:
        return [row["name"] for row in self.query("SELECT name FROM _migrations ORDER BY name")]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the lock; ROLLBACK on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                self._conn.execute("ROLLBACK")
                raise LedgerError(f"ledger write failed: {e}") from e
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._db.query(sql, params))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
