"""The ledger database: one SQLite file in WAL mode, shared by the agent's threads.

One connection guarded by a lock (sqlite3 connections are not safe to share unguarded:
concurrent writers lost rows). Every write is one transaction, so a crash never leaves half a
record.
"""

from __future__ import annotations

import logging
import re
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

log = logging.getLogger(__name__)


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


# The WAL is copied into the ledger file by a thread of the agent's (`checkpoint_in_background`)
# after this many commits (about SQLite's own 1000-page mark: a request row changes ~10 pages), or
# after a second without one; the writer checkpoints by itself only past the backstop.
_CHECKPOINT_EVERY_COMMITS = 100
_CHECKPOINT_IDLE_S = 1.0
_BACKSTOP_CHECKPOINT_PAGES = 10_000
_WAL_SIZE_LIMIT_BYTES = 8 * 1024 * 1024
_READ = re.compile(r"\s*(?:SELECT|WITH|PRAGMA)\b", re.IGNORECASE)


class Database:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._db = sqlite_utils.Database(conn)
        self._lock = threading.Lock()
        self.path = path
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_every = _CHECKPOINT_EVERY_COMMITS
        self._commits = 0
        self._wake = threading.Event()
        self._closing = threading.Event()

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
                self._commits += 1
                if self._commits >= self._checkpoint_every and self._checkpointer is not None:
                    self._commits = 0
                    self._wake.set()
            except sqlite3.Error as e:
                self._conn.execute("ROLLBACK")
                raise LedgerError(f"ledger write failed: {e}") from e
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """The rows of one read (SELECT, WITH or PRAGMA) as dicts.

        Straight on the connection: sqlite_utils' ``query`` wraps each read in a savepoint (three
        statements; a request's token check and preference read took ~60 us that way)."""
        if not _READ.match(sql):
            raise ValueError(f"query() runs reads only, not {sql.split(None, 1)[0]!r}: use transaction()")
        with self._lock:
            cursor = self._conn.execute(sql, params)
            keys = [d[0] for d in cursor.description or ()]
            return [dict(zip(keys, row, strict=True)) for row in cursor]

    def checkpoint_in_background(
        self, every_commits: int = _CHECKPOINT_EVERY_COMMITS, idle_s: float = _CHECKPOINT_IDLE_S
    ) -> None:
        """From now on a thread of its own copies the WAL into the ledger file (`checkpoint`), woken
        every ``every_commits`` commits or ``idle_s`` seconds, instead of the commit that happens to
        cross SQLite's 1000-page mark: that request waited for two fsyncs (3.5 ms, about one request
        in a hundred). The writer still checkpoints by itself should the WAL reach 10x that mark.
        Stopped by `close`."""
        if self._checkpointer is not None:
            return
        with self._lock:
            self._conn.execute(f"PRAGMA wal_autocheckpoint={_BACKSTOP_CHECKPOINT_PAGES}")
            # Under a steady stream of writes a PASSIVE checkpoint rarely finds the WAL whole, so the
            # file grows towards the backstop (~40 MB) before the writer resets it; it is cut back to
            # this size at each reset.
            self._conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT_BYTES}")
            self._checkpoint_every, self._commits = every_commits, 0
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(idle_s,), name="aifinops-ledger-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self, idle_s: float) -> None:
        while not self._closing.is_set():
            self._wake.wait(idle_s)
            self._wake.clear()
            if self._closing.is_set():
                return
            try:
                self.checkpoint()
            except sqlite3.Error as e:  # a busy or full disk: the next wake tries again, the backstop bounds the WAL
                log.warning("ledger checkpoint failed: %s", e)

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the ledger file, on a connection of its own: PASSIVE, so
        it neither waits for nor blocks the writer."""
        with self._checkpoint_lock:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        if self._checkpointer is not None:
            self._closing.set()
            self._wake.set()
            self._checkpointer.join(timeout=30)
            self._checkpointer = None
        with self._checkpoint_lock:
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
                self._checkpoint_conn = None
        with self._lock:
            self._conn.close()  # the last connection: SQLite checkpoints and removes the WAL
