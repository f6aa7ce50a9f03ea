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

from agent.budgets.anomaly import WEEKS, Alarm, Baseline, RateWatch, learn_baselines, learn_totals, week_start
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
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._events = events
        self._policy = policy
        self.clock = now  # the watch's time: tests replay a loop in simulated minutes
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
            now = self.clock().timestamp()
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
        week = week_start(self.clock())
        since = (week - timedelta(weeks=WEEKS)).isoformat(timespec="microseconds")
        rows = self._db.query(
            "SELECT user_name, department, feature, model, substr(ts, 1, 13) AS hour, count(*) AS n FROM requests "
            "WHERE ts >= ? AND ts < ? AND route != 'cache' GROUP BY user_name, department, feature, model, hour",
            (since, week.isoformat(timespec="microseconds")),
        )
        users: list[tuple[str, str, datetime, int]] = []
        totals: list[tuple[str, datetime, int]] = []
        for r in rows:
            hour, n = _hour(str(r["hour"])), int(r["n"])
            users.append((str(r["user_name"]), str(r["department"]), hour, n))
            totals.append((f"department:{r['department']}", hour, n))
            totals.append((f"model:{r['model']}", hour, n))
            if r["feature"]:
                totals.append((f"feature:{r['feature']}", hour, n))
        learned = learn_baselines(users, week) | learn_totals(totals, week)
        with self._lock:
            self._baselines = learned
        return len(learned)

    def observe(self, user: str, department: str, feature: str = "", model: str = "",
                moment: datetime | None = None) -> None:  # fmt: skip
        """A paid request at ``moment`` (now by default): it counts for its user (judged against
        the department's per-member baseline until the user has a week of history), department,
        feature and model. O(1); an alarm is raised in a thread."""
        moment = self.clock() if moment is None else moment
        with self._lock:
            baselines = self._baselines
            watched = []
            if (mine := baselines.get(f"user:{user}") or baselines.get(f"member:{department}")) is not None:
                watched.append((f"user:{user}", mine))
            for subject in (f"department:{department}", f"feature:{feature}" if feature else "", f"model:{model}"):
                if (baseline := baselines.get(subject)) is not None:
                    watched.append((subject, baseline))
            alarms = self._watch.observe_many(watched, moment) if watched else []
        for alarm in alarms:
            threading.Thread(target=self._raise, args=(alarm, user, department), daemon=True).start()

    def _raise(self, alarm: Alarm, user: str, department: str) -> None:
        """One ``spend_anomaly`` event: what ran away, the top user, feature and model of its last
        10 minutes. A user's own runaway is theirs to see (and to be throttled for, with the
        policy's "throttle"); a department's, feature's or model's names whoever drove it, so it
        is for admins (and the webhook) only."""
        kind, name = alarm.subject.split(":", 1)
        column = {"user": "user_name", "department": "department", "feature": "feature", "model": "model"}[kind]
        try:
            since = (alarm.at - timedelta(minutes=10)).isoformat(timespec="microseconds")
            recent = [dict(r) for r in self._db.query(
                "SELECT user_name, feature, model, count(*) AS n, coalesce(sum(cost_micro_usd), 0) AS spent "  # noqa: S608 - fixed columns
                f"FROM requests WHERE {column} = ? AND ts >= ? AND route != 'cache' "
                "GROUP BY user_name, feature, model ORDER BY n DESC",
                (name, since),
            )]  # fmt: skip
            policy = self._policy()
            top: dict[str, Any] = recent[0] if recent else {"user_name": user, "feature": "", "model": "", "n": 0}
            last_10_min = sum(int(r["n"]) for r in recent)
            rate = last_10_min * 6.0
            reason = alarm.reason
            if rate > 0 and alarm.baseline_per_hour > 0:
                who = f"{kind} {name}" if kind != "user" else name
                where = f" (mostly {top['feature'] or 'no feature'} on {top['model']})" if top["model"] else ""
                if kind != "user":
                    where = f" (mostly {top['user_name']}, {top['feature'] or 'no feature'} on {top['model']})"
                times = rate / alarm.baseline_per_hour
                reason = (f"{who} made {last_10_min} requests in 10 minutes{where}: "
                          f"{times:.0f}x the usual {alarm.baseline_per_hour:.1f} an hour")  # fmt: skip
            body = {
                "subject": alarm.subject,
                "user": user if kind == "user" else str(top["user_name"]),
                "department": department if kind in ("user", "department") else "",
                "top_user": str(top["user_name"]),
                "rate_per_hour": round(rate, 1),
                "baseline_per_hour": round(alarm.baseline_per_hour, 2),
                "top_feature": str(top["feature"]),
                "top_model": str(top["model"]),
                "requests_last_10_min": last_10_min,
                "spent_last_10_min_micro_usd": sum(int(r["spent"]) for r in recent),
                "reason": reason,
                "at": alarm.at.isoformat(timespec="seconds"),
                "action": policy.anomaly.action if policy is not None else "alert",
            }
            key = f"spend_anomaly:{alarm.subject}:{alarm.at.strftime('%Y-%m-%dT%H')}"
            user_id, seen_by = None, None  # admins only
            if kind == "user":
                found = UserStore(self._db).get(user)
                user_id, seen_by = (found.id if found is not None else None), department
            about = department if kind in ("user", "department") else None
            channels = policy.alert_channels("spend_anomaly", kind, about) if policy is not None else ()
            event_id = self._events.add("spend_anomaly", body, user_id=user_id, department=seen_by, dedupe_key=key,
                                        deliver=channels)  # fmt: skip
            if event_id is None:
                return
            log.warning("spend_anomaly: %s", reason)
            if kind == "user" and policy is not None and policy.anomaly.action == "throttle":
                self._throttle(user, alarm, policy.anomaly.throttle_multiple)
        except Exception:  # a thread of its own: the request it came from is long answered
            log.exception("raising a spend anomaly failed")


def _hour(text: str) -> datetime:
    """The ledger's "YYYY-MM-DDTHH" prefix as the hour it starts (UTC)."""
    return datetime.fromisoformat(text + ":00").replace(tzinfo=UTC)
