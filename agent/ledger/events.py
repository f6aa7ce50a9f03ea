"""Events: budget alerts, policy syncs and their failures, for the tray and for admins.

An event is addressed to one user, to a department (``user_id`` NULL), or to admins only (both
NULL). A ``dedupe_key`` makes an event happen at most once (one alert per budget, period and
threshold), also across agent restarts and concurrent requests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.ledger.database import Database, utc_now_iso


@dataclass(frozen=True)
class Event:
    id: int
    ts: str
    kind: str
    user_id: int | None
    department: str | None
    body: dict[str, Any]


class EventLog:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.on_delivery: Callable[[], None] | None = None  # wakes the alert outbox's sender

    def add(
        self,
        kind: str,
        body: dict[str, Any],
        *,
        user_id: int | None = None,
        department: str | None = None,
        dedupe_key: str | None = None,
        deliver: Sequence[str] = (),
        claim: str | None = None,
    ) -> int | None:
        """Store an event; None when one with the same ``dedupe_key`` already exists.

        ``deliver`` names the alert channels to post it to: their rows in the outbox
        (``agent.alerts.outbox``) are written in the same transaction, and the sender is woken.
        ``claim`` is the key of an alert the whole fleet raises (a department or organisation
        budget): the host that claims it on the share posts it, the others skip it.
        """
        now = utc_now_iso()
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO events (ts, kind, user_id, department, dedupe_key, body) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(dedupe_key) DO NOTHING",
                (now, kind, user_id, department, dedupe_key, json.dumps(body, sort_keys=True)),
            )
            if cursor.rowcount != 1:
                return None  # it already happened
            event_id = cursor.lastrowid
            conn.executemany(
                "INSERT INTO deliveries (event_id, channel, state, next_at, claim) VALUES (?, ?, 'pending', ?, ?)",
                [(event_id, channel, now, claim) for channel in deliver],
            )
        if deliver and self.on_delivery is not None:
            self.on_delivery()
        return event_id

    def deliveries(self, event_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """Each event's alert deliveries (channel, state, attempts, last_error, next_at)."""
        if not event_ids:
            return {}
        marks = ",".join("?" * len(event_ids))
        rows = self._db.query(
            "SELECT event_id, channel, state, attempts, last_error, next_at FROM deliveries "  # noqa: S608 - placeholders
            f"WHERE event_id IN ({marks}) ORDER BY id",
            tuple(event_ids),
        )
        out: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            entry = {k: r[k] for k in ("channel", "state", "attempts", "last_error")}
            entry["next_at"] = r["next_at"] if r["state"] == "pending" else None
            out.setdefault(int(r["event_id"]), []).append(entry)
        return out

    def since(self, after_id: int, *, user_id: int | None, department: str | None, limit: int = 100) -> list[Event]:
        """Events after ``after_id`` that this reader may see; ``user_id=None``: an admin, all."""
        params: list[int | str | None]
        if user_id is None:
            where, params = "id > ?", [after_id]
        else:
            where = "id > ? AND (user_id = ? OR (user_id IS NULL AND department = ?))"
            params = [after_id, user_id, department]
        rows = self._db.query(
            f"SELECT id, ts, kind, user_id, department, body FROM events WHERE {where} ORDER BY id LIMIT ?",  # noqa: S608
            (*params, limit),
        )
        return [Event(r["id"], r["ts"], r["kind"], r["user_id"], r["department"], json.loads(r["body"])) for r in rows]

    def last_id(self) -> int:
        rows = self._db.query("SELECT coalesce(max(id), 0) AS n FROM events")
        return int(rows[0]["n"])
