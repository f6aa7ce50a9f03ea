"""The alert outbox: each alert event's delivery, kept in the ledger until a receiver takes it.

``EventLog.add(..., deliver=("webhook",))`` writes one ``deliveries`` row per channel in the
same transaction as the event: an alert is never recorded without its delivery, nor delivered
without being recorded. A sender thread (``Outbox.run``), off the request path, posts what is
due and keeps the outcome in the row, so deliveries survive a restart or a kill -9:

- 2xx: delivered, never posted again (a kill -9 between the receiver's 2xx and the row's update
  can post it once more: every post carries the event id as ``Idempotency-Key`` and in the body,
  so a receiver can tell);
- 408, 429, 5xx, a timeout or a refused connection: tried again after an exponential backoff with
  jitter (2 s, 4 s, ... at most 10 min; 429's Retry-After honoured), for up to ``RETRY_FOR_H``
  hours after the event, then failed;
- any other 4xx: failed at once (the receiver said the post itself is wrong: retrying is a
  storm), one warning in the log.

Channels resolve when a post is made, from the policy then in force (``webhook`` is the policy's
``webhook_url``; the others are its ``[[alerts.channels]]``, whose URL may come from an
environment variable on each box), each in its own body shape (``formats.py``). URLs are
secrets and never stored in the ledger.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.alerts.formats import render
from agent.ledger.database import Database
from agent.policy.model import Policy

log = logging.getLogger(__name__)

RETRY_FIRST_S = 2.0
RETRY_MAX_S = 600.0
RETRY_FOR_H = 24.0
TIMEOUT_S = 5.0
IDLE_POLL_S = 5.0  # how often the sender looks for due rows when nothing woke it
BATCH = 50


@dataclass(frozen=True)
class Answer:
    """What a receiver did with one post: its status (None: no answer) and Retry-After in seconds."""

    status: int | None
    retry_after_s: float | None = None
    error: str = ""


def post_json(url: str, body: dict[str, Any], idempotency_key: str) -> Answer:
    request = urllib.request.Request(  # noqa: S310 - the policy allows only http(s) URLs
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
            return Answer(int(response.status))
    except urllib.error.HTTPError as e:
        return Answer(e.code, retry_after(e.headers.get("Retry-After")), f"HTTP {e.code} {e.reason}")
    except (OSError, ValueError) as e:  # refused, reset, timed out, unresolvable
        return Answer(None, None, type(e).__name__ + (f": {e}" if str(e) else ""))


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_s(attempts: int, rng: random.Random) -> float:
    """The wait before try ``attempts + 1``: doubling from RETRY_FIRST_S, capped, with jitter."""
    base = min(RETRY_FIRST_S * 2 ** max(attempts - 1, 0), RETRY_MAX_S)
    return float(base * rng.uniform(0.5, 1.0))


def permanent(status: int) -> bool:
    """A refusal that retrying will not change."""
    return 400 <= status < 500 and status not in (408, 429)


class Outbox:
    def __init__(
        self,
        db: Database,
        policy: Callable[[], Policy | None],
        *,
        post: Callable[[str, dict[str, Any], str], Answer] = post_json,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._policy = policy
        self._post = post
        self._now = now
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """New deliveries are waiting: post them now, not at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alert-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=TIMEOUT_S + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # its own thread: log, and try again at the next poll
                log.exception("delivering alerts failed")
            self._wake.wait(self._seconds_to_next_due())
            self._wake.clear()

    def _seconds_to_next_due(self) -> float:
        rows = self._db.query("SELECT min(next_at) AS next_at FROM deliveries WHERE state = 'pending'")
        if not rows or rows[0]["next_at"] is None:
            return IDLE_POLL_S
        due = datetime.fromisoformat(str(rows[0]["next_at"]))
        return min(max((due - self._now()).total_seconds(), 0.05), IDLE_POLL_S)

    def deliver_due(self) -> int:
        """Post every delivery that is due; returns how many were tried."""
        now = self._now()
        rows = self._db.query(
            "SELECT d.id, d.event_id, d.channel, d.attempts, e.ts, e.kind, e.body FROM deliveries d "
            "JOIN events e ON e.id = d.event_id WHERE d.state = 'pending' AND d.next_at <= ? ORDER BY d.id LIMIT ?",
            (_iso(now), BATCH),
        )
        for row in rows:
            self._deliver(dict(row))
        return len(rows)

    def _deliver(self, row: dict[str, Any]) -> None:
        policy = self._policy()
        channel = policy.alert_channel(row["channel"]) if policy is not None else None
        if channel is None:
            self._finish(row, "failed", f"the policy in force has no {row['channel']} channel any more")
            return
        url = channel.url or os.environ.get(channel.url_env or "", "")
        if not url:  # the policy names the variable; this box does not set it
            log.warning("alert channel %s: the environment variable %s is not set on this box", channel.name,
                        channel.url_env)  # fmt: skip
            self._finish(row, "failed", f"the environment variable {channel.url_env} is not set on this box")
            return
        body = render(channel.kind, int(row["event_id"]), str(row["kind"]), json.loads(row["body"]))
        answer = self._post(url, body, f"aifinops-event-{row['event_id']}")
        attempts = int(row["attempts"]) + 1
        if answer.status is not None and 200 <= answer.status < 300:
            self._finish(row, "delivered", "", attempts)
        elif answer.status is not None and permanent(answer.status):
            log.warning("alert %s (%s) refused by the %s channel: %s; not retried", row["event_id"], row["kind"],
                        row["channel"], answer.error)  # fmt: skip
            self._finish(row, "failed", answer.error, attempts)
        else:
            now = self._now()
            wait = answer.retry_after_s if answer.retry_after_s is not None else backoff_s(attempts, self._rng)
            deadline = datetime.fromisoformat(str(row["ts"])) + timedelta(hours=RETRY_FOR_H)
            if now + timedelta(seconds=wait) > deadline:
                log.warning("alert %s (%s) not delivered to the %s channel in %g h: %s; given up", row["event_id"],
                            row["kind"], row["channel"], RETRY_FOR_H, answer.error)  # fmt: skip
                self._finish(row, "failed", answer.error, attempts)
                return
            with self._db.transaction() as conn:
                conn.execute(
                    "UPDATE deliveries SET attempts = ?, next_at = ?, last_error = ? WHERE id = ?",
                    (attempts, _iso(now + timedelta(seconds=wait)), answer.error, row["id"]),
                )

    def _finish(self, row: dict[str, Any], state: str, error: str, attempts: int | None = None) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, last_error = ?, finished_at = ? WHERE id = ?",
                (state, row["attempts"] if attempts is None else attempts, error, _iso(self._now()), row["id"]),
            )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
