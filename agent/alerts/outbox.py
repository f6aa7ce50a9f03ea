"""The alert outbox: each alert event's delivery, kept in the ledger until a receiver takes it.

``EventLog.add(..., deliver=("webhook",))`` writes one ``deliveries`` row per channel in the
same transaction as the event: an alert is never recorded without its delivery, nor delivered
without being recorded. A sender thread (``Outbox.run``), off the request path, posts what is
due and keeps the outcome in the row, so deliveries survive a restart or a kill -9:

- taken (2xx, an SMTP 2yz): delivered, never posted again (a kill -9 between the receiver's answer
  and the row's update can post it once more: every post carries the same Idempotency-Key, and
  the event id in the body, so a receiver can tell; an email keeps its Message-ID);
- 408, 429, 5xx, an SMTP 4yz, a timeout or a refused connection: tried again after an exponential
  backoff with jitter (2 s, 4 s, ... at most 10 min; 429's Retry-After honoured), for up to the
  policy's ``[alerts] retry_for_h`` hours (24) after the event, then failed;
- any other 4xx or an SMTP 5yz: failed at once (the receiver said the post itself is wrong:
  retrying is a storm), one warning in the log.

Channels resolve when a post is made, from the policy then in force (``webhook`` is the policy's
``webhook_url``; the others are its ``[[alerts.channels]]``), each in its own body shape
(``formats.py``). URLs and passwords are secrets: named by reference in the policy, resolved on
this box (``secrets.py``), never stored in the ledger. A channel whose secret this box lacks is
reported (the row fails, saying which) and the others still get the alert.

An alert the whole fleet raises (a department or organisation budget; the row's ``claim``) is
posted by one host: the one that claims it on the share first (``agent.fleet.claims``); the others
mark theirs ``skipped``. All hosts post it with the same Idempotency-Key, so should the share be
unreachable for longer than ``CLAIM_WAIT_S`` (each host then posts it: late twice beats never),
a receiver can still tell.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from agent.alerts import mail
from agent.alerts.formats import email_text, render
from agent.alerts.secrets import SecretMissing, resolve
from agent.alerts.transport import TIMEOUT_S, Answer, post_json
from agent.ledger.database import Database
from agent.policy.model import AlertChannel, Policy
from agent.retry import backoff_s

if TYPE_CHECKING:
    from agent.fleet.claims import FleetClaims

log = logging.getLogger(__name__)

RETRY_FIRST_S = 2.0
RETRY_MAX_S = 600.0
CLAIM_WAIT_S = 900.0  # how long a fleet alert waits for the share before this host posts it anyway
IDLE_POLL_S = 5.0  # how often the sender looks for due rows when nothing woke it
BATCH = 50


def idempotency_key(origin: str, event_id: int, claim: str | None) -> str:
    """The same for every post of one alert: per host and event, or per fleet alert."""
    if claim:
        return "aifinops-fleet-" + hashlib.sha256(claim.encode()).hexdigest()[:32]
    return f"aifinops-{origin}-event-{event_id}" if origin else f"aifinops-event-{event_id}"


class Outbox:
    def __init__(
        self,
        db: Database,
        policy: Callable[[], Policy | None],
        *,
        post: Callable[[str, dict[str, Any], str], Answer] = post_json,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        origin: str = "",
        claims: FleetClaims | None = None,
    ) -> None:
        self._db = db
        self._policy = policy
        self._post = post
        self._origin = origin  # this host's id: in the Idempotency-Key, so two hosts' event 7 differ
        self._claims = claims
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
            self._thread.join(timeout=max(TIMEOUT_S, mail.TIMEOUT_S) + 1)

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
            "SELECT d.id, d.event_id, d.channel, d.attempts, d.claim, e.ts, e.kind, e.body FROM deliveries d "
            "JOIN events e ON e.id = d.event_id WHERE d.state = 'pending' AND d.next_at <= ? ORDER BY d.id LIMIT ?",
            (_iso(now), BATCH),
        )
        # A channel that did not take a post (down, hanging, 429) is not posted to again in this
        # pass: its other due alerts wait for the same next try, so one hanging receiver costs one
        # timeout per backoff, and the other channels' alerts are not held up behind it.
        held: dict[str, str] = {}
        tried = 0
        for row in rows:
            if self._stop.is_set():
                break
            channel = str(row["channel"])
            if channel in held:
                with self._db.transaction() as conn:
                    conn.execute("UPDATE deliveries SET next_at = ? WHERE id = ?", (held[channel], row["id"]))
                continue
            tried += 1
            again_at = self._deliver(dict(row))
            if again_at is not None:
                held[channel] = again_at
        return tried

    def _deliver(self, row: dict[str, Any]) -> str | None:
        """Post one delivery; returns when it is tried again if the channel did not take it."""
        policy = self._policy()
        channel = policy.alert_channel(row["channel"]) if policy is not None else None
        if channel is None or policy is None:
            self._finish(row, "failed", f"the policy in force has no {row['channel']} channel any more")
            return None
        if row["claim"] and self._claims is not None and not self._claimed(self._claims, row, policy):
            return None
        try:
            answer = self._send(channel, row)
        except SecretMissing as e:  # the policy names a secret this box lacks: say so, deliver the others
            log.warning("alert channel %s: %s", channel.name, e)
            self._finish(row, "failed", str(e))
            return None
        attempts = int(row["attempts"]) + 1
        if answer.outcome == "delivered":
            self._finish(row, "delivered", answer.error, attempts)
        elif answer.outcome == "refused":
            log.warning("alert %s (%s) refused by the %s channel: %s; not retried", row["event_id"], row["kind"],
                        row["channel"], answer.error)  # fmt: skip
            self._finish(row, "failed", answer.error, attempts)
        else:
            return self._again(row, policy, answer.error, answer.retry_after_s, attempts)
        return None

    def _send(self, channel: AlertChannel, row: dict[str, Any]) -> Answer:
        event_id, kind, body = int(row["event_id"]), str(row["kind"]), json.loads(row["body"])
        key = idempotency_key(self._origin, event_id, row["claim"])
        if channel.kind == "email":
            about = body.get("department") or None
            recipients = channel.every_recipient() if kind == "alert_test" else channel.recipients(about)
            if not recipients:
                return Answer.refused("the channel has no recipient for this alert any more")
            password = resolve(channel.password_secret) if channel.password_secret else None
            subject, text = email_text(event_id, kind, body, self._origin)
            domain = str(channel.sender).rpartition("@")[2]
            return mail.send(channel, mail.message(channel, recipients, subject, text, f"<{key}@{domain}>"), password)
        reference = channel.url_reference
        url = resolve(reference) if reference else str(channel.url)
        return self._post(url, render(channel.kind, event_id, kind, body), key)

    def _claimed(self, claims: FleetClaims, row: dict[str, Any], policy: Policy) -> bool:
        """Whether this host posts a fleet alert: it claimed it on the share (or the share has
        been out of reach for CLAIM_WAIT_S). False: the row is skipped or waits for the share."""
        try:
            claim = claims.claim(str(row["claim"]), int(row["event_id"]))
        except OSError as e:
            age_s = (self._now() - datetime.fromisoformat(str(row["ts"]))).total_seconds()
            if age_s < CLAIM_WAIT_S:
                error = f"waiting for the share to claim this fleet alert ({type(e).__name__}: {e})"
                self._again(row, policy, error, None, int(row["attempts"]) + 1)
                return False
            log.warning("alert %s (%s): the share could not be reached for %.0f s to claim it for the fleet; "
                        "posting it from this host", row["event_id"], row["kind"], age_s)  # fmt: skip
            return True
        if claim.ours:
            return True
        holder = claim.hostname or claim.host
        event = f" (its event {claim.event_id})" if claim.event_id is not None else ""
        self._finish(row, "skipped", f"posted for the fleet by host {holder}{event}")
        return False

    def _again(
        self, row: dict[str, Any], policy: Policy, error: str, retry_after_s: float | None, attempts: int
    ) -> str | None:
        """Try the row again after a backoff (returns when), unless that passes the policy's
        retry_for_h (None: failed)."""
        now = self._now()
        wait = retry_after_s
        if wait is None:
            wait = backoff_s(RETRY_FIRST_S, attempts, self._rng, cap_s=RETRY_MAX_S)
        hours = policy.alerts.retry_for_h
        deadline = datetime.fromisoformat(str(row["ts"])) + timedelta(hours=hours)
        if now + timedelta(seconds=wait) > deadline:
            log.warning("alert %s (%s) not delivered to the %s channel in %g h: %s; given up", row["event_id"],
                        row["kind"], row["channel"], hours, error)  # fmt: skip
            self._finish(row, "failed", error, attempts)
            return None
        next_at = _iso(now + timedelta(seconds=wait))
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE deliveries SET attempts = ?, next_at = ?, last_error = ? WHERE id = ?",
                (attempts, next_at, error, row["id"]),
            )
        return next_at

    def _finish(self, row: dict[str, Any], state: str, error: str, attempts: int | None = None) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, last_error = ?, finished_at = ? WHERE id = ?",
                (state, row["attempts"] if attempts is None else attempts, error, _iso(self._now()), row["id"]),
            )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
