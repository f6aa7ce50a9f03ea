"""The agent's runaway watch: every paid request feeds its user's rate test (``anomaly.py``);
an alarm becomes one ``spend_anomaly`` event (and a webhook post), off the request path.

Baselines are learned from the ledger by the scheduler (``refresh``, hourly): each user's requests
per hour of the week over the 4 weeks before this week, and each department's per member for
users without a week of history. The request path only looks a baseline up and updates one sum.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

from agent.budgets.anomaly import WEEKS, Alarm, Baseline, RateWatch
from agent.ledger.database import Database
from agent.ledger.events import EventLog
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
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Learn every baseline again from the ledger (the scheduler's job). Returns how many."""
        now = self._now()
        week = datetime.combine(now.date() - timedelta(days=now.weekday()), time(0), UTC)
        since = (week - timedelta(weeks=WEEKS)).isoformat(timespec="microseconds")
        rows = self._db.query(
            "SELECT user_name, department, substr(ts, 1, 13) AS hour, count(*) AS n FROM requests "
            "WHERE ts >= ? AND ts < ? AND route != 'cache' GROUP BY user_name, department, hour",
            (since, week.isoformat(timespec="microseconds")),
        )
        per_user: dict[str, dict[datetime, int]] = defaultdict(lambda: defaultdict(int))
        per_department: dict[str, dict[datetime, int]] = defaultdict(lambda: defaultdict(int))
        members: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            hour = datetime.fromisoformat(str(r["hour"]) + ":00").replace(tzinfo=UTC)
            per_user[str(r["user_name"])][hour] += int(r["n"])
            per_department[str(r["department"])][hour] += int(r["n"])
            members[str(r["department"])].add(str(r["user_name"]))
        learned: dict[str, Baseline] = {}
        for department, hours in per_department.items():
            if (b := Baseline.learn(hours.items(), week)) is not None:
                learned[f"department:{department}"] = b.scaled(1 / max(len(members[department]), 1))
        for user, hours in per_user.items():
            if (b := Baseline.learn(hours.items(), week)) is not None:
                learned[f"user:{user}"] = b
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
            found = self._db.query("SELECT id FROM users WHERE name = ?", (user,))
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
            }
            key = f"spend_anomaly:{alarm.subject}:{alarm.at.strftime('%Y-%m-%dT%H')}"
            user_id = int(found[0]["id"]) if found else None
            event_id = self._events.add("spend_anomaly", body, user_id=user_id, department=department, dedupe_key=key)
            if event_id is None:
                return
            log.warning("spend_anomaly: %s", alarm.reason)
            policy = self._policy()
            if policy is not None and policy.webhook_url:
                self._post(policy.webhook_url, {"id": event_id, "kind": "spend_anomaly", **body})
        except Exception:  # a thread of its own: the request it came from is long answered
            log.exception("raising a spend anomaly failed")
