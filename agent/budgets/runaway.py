"""The agent's runaway watch: every paid request feeds its user's rate test (``anomaly.py``);
an alarm becomes one ``spend_anomaly`` event (and a webhook post), off the request path.

With the policy's ``anomaly.action = "throttle"`` the alarm also holds the user to
``anomaly.throttle_multiple`` times their usual hourly rate (requests in the last hour), with a
429 that says why, until an admin clears it (``aifinops anomalies clear USER``). Throttles are
kept in the ledger (``throttles``), so a restart does not lift them.

Baselines are learned from the ledger by the scheduler (``refresh``, hourly): each user's requests
per hour of the week over the 4 weeks before this week, and each department's per member for
users without a week of history. The request path only looks a baseline up and updates one sum.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.budgets.anomaly import WEEKS, Alarm, Baseline, RateWatch, learn_baselines, week_start
from agent.errors import RateLimited
from agent.ledger.database import Database
from agent.ledger.events import EventLog
from agent.ledger.users import UserStore
from agent.policy.model import Policy

log = logging.getLogger(__name__)


class RunawayWatch:
    def __init__(
        self,
        db: Database,
        events: EventLog,
        policy: Callable[[], Policy | None],
        post: Callable[[str, dict[str, Any]], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._events = events
        self._policy = policy
        self._post = post  # the webhook poster the budget events use
        self._now = now
        self._watch = RateWatch()
        self._baselines: dict[str, Baseline] = {}
        self._throttles: dict[str, tuple[float, str]] = {}  # user -> (requests an hour, why)
        self._recent: dict[str, deque[float]] = {}  # a throttled user's request times, the last hour
        self._lock = threading.Lock()
        self._load_throttles()

    # -- throttles -------------------------------------------------------------------------------

    def admit(self, user: str) -> None:
        """Raise RateLimited when ``user`` is throttled and has used the hour's allowance. O(1)."""
        if user not in self._throttles:  # the common case: one dict lookup, no lock
            return
        with self._lock:
            throttle = self._throttles.get(user)
            if throttle is None:
                return
            limit, why = throttle
            now = self._now().timestamp()
            times = self._recent.setdefault(user, deque())
            while times and times[0] <= now - 3600:
                times.popleft()
            if len(times) < max(int(limit), 1):
                times.append(now)
                return
            wait = times[0] + 3600 - now
        raise RateLimited(f"your requests are throttled to {limit:.0f} an hour after a runaway ({why}); "
                          "an admin can lift it: aifinops anomalies clear", retry_after_s=max(wait, 1.0),
                          code="spend_anomaly")  # fmt: skip

    def throttles(self) -> list[dict[str, Any]]:
        rows = self._db.query("SELECT user_name, since, limit_per_hour, reason FROM throttles ORDER BY since")
        return [dict(r) for r in rows]

    def clear(self, user: str) -> bool:
        """Lift ``user``'s throttle; False when there was none."""
        with self._lock:
            known = self._throttles.pop(user, None) is not None
            self._recent.pop(user, None)
        with self._db.transaction() as conn:
            cleared = conn.execute("DELETE FROM throttles WHERE user_name = ?", (user,)).rowcount
        return known or cleared > 0

    def _load_throttles(self) -> None:
        rows = self._db.query("SELECT user_name, limit_per_hour, reason FROM throttles")
        self._throttles = {str(r["user_name"]): (float(r["limit_per_hour"]), str(r["reason"])) for r in rows}

    def _throttle(self, user: str, alarm: Alarm, multiple: float) -> None:
        limit = max(alarm.baseline_per_hour * multiple, 1.0)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO throttles (user_name, since, limit_per_hour, reason) VALUES (?, ?, ?, ?)",
                (user, alarm.at.isoformat(timespec="seconds"), limit, alarm.reason),
            )
        with self._lock:
            self._throttles[user] = (limit, alarm.reason)

    def refresh(self) -> int:
        """Learn every baseline again from the ledger (the scheduler's job). Returns how many."""
        week = week_start(self._now())
        since = (week - timedelta(weeks=WEEKS)).isoformat(timespec="microseconds")
        rows = self._db.query(
            "SELECT user_name, department, substr(ts, 1, 13) AS hour, count(*) AS n FROM requests "
            "WHERE ts >= ? AND ts < ? AND route != 'cache' GROUP BY user_name, department, hour",
            (since, week.isoformat(timespec="microseconds")),
        )
        learned = learn_baselines(((str(r["user_name"]), str(r["department"]), _hour(str(r["hour"])), int(r["n"]))
                                   for r in rows), week)  # fmt: skip
        with self._lock:
            self._baselines = learned
        return len(learned)

    def observe(self, user: str, department: str, moment: datetime) -> None:
        """A paid request of ``user`` at ``moment``: O(1); an alarm is raised in a thread."""
        with self._lock:
            baseline = self._baselines.get(f"user:{user}") or self._baselines.get(f"department:{department}")
            if baseline is None:
                return  # nobody on this box has a week of history yet
            alarm = self._watch.observe(f"user:{user}", moment, baseline)
        if alarm is not None:
            threading.Thread(target=self._raise, args=(alarm, user, department), daemon=True).start()

    def _raise(self, alarm: Alarm, user: str, department: str) -> None:
        try:
            since = (alarm.at - timedelta(minutes=10)).isoformat(timespec="microseconds")
            recent = self._db.query(
                "SELECT feature, model, count(*) AS n, coalesce(sum(cost_micro_usd), 0) AS spent FROM requests "
                "WHERE user_name = ? AND ts >= ? GROUP BY feature, model ORDER BY n DESC LIMIT 1",
                (user, since),
            )
            policy = self._policy()
            top: dict[str, Any] = dict(recent[0]) if recent else {"feature": "", "model": "", "n": 0, "spent": 0}
            body = {
                "subject": alarm.subject,
                "user": user,
                "department": department,
                "rate_per_hour": round(alarm.rate_per_hour, 1),
                "baseline_per_hour": round(alarm.baseline_per_hour, 2),
                "top_feature": str(top["feature"]),
                "top_model": str(top["model"]),
                "requests_last_10_min": int(top["n"]),
                "reason": alarm.reason,
                "at": alarm.at.isoformat(timespec="seconds"),
                "action": policy.anomaly.action if policy is not None else "alert",
            }
            key = f"spend_anomaly:{alarm.subject}:{alarm.at.strftime('%Y-%m-%dT%H')}"
            found = UserStore(self._db).get(user)
            user_id = found.id if found is not None else None
            event_id = self._events.add("spend_anomaly", body, user_id=user_id, department=department, dedupe_key=key)
            if event_id is None:
                return
            log.warning("spend_anomaly: %s", alarm.reason)
            if policy is not None and policy.anomaly.action == "throttle":
                self._throttle(user, alarm, policy.anomaly.throttle_multiple)
            if policy is not None and policy.webhook_url:
                self._post(policy.webhook_url, {"id": event_id, "kind": "spend_anomaly", **body})
        except Exception:  # a thread of its own: the request it came from is long answered
            log.exception("raising a spend anomaly failed")


def _hour(text: str) -> datetime:
    """The ledger's "YYYY-MM-DDTHH" prefix as the hour it starts (UTC)."""
    return datetime.fromisoformat(text + ":00").replace(tzinfo=UTC)
