"""Who a GPU minute is charged to: the users whose requests ran on it, other processes' owners,
and the box's idle cost centre. Pure: the sampler feeds it one minute at a time.

- Busy seconds go first to this agent's users, by how long their local requests computed during
  the minute (scaled down when the requests together computed longer than the GPU was busy).
- Busy seconds left over go to the OS users of other processes seen on the GPU in that minute,
  in equal parts, or to ``other`` when none was seen.
- Idle and unknown (gap) seconds go to ``idle:<box department>``.

Money is split with the largest-remainder method, so the charges of a minute add up exactly to
its cost. An unknown price stays unknown (None) on every charge.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

ChargeKind = Literal["user", "os_user", "idle", "other"]
_KEEP_S = 900.0  # activities older than this can no longer fall in an open minute


@dataclass(frozen=True)
class Activity:
    """A local request's computation, in Unix seconds."""

    user: str
    department: str
    start: float
    end: float


@dataclass(frozen=True)
class Charge:
    kind: ChargeKind
    subject: str  # user name, OS user name, "idle" or "other"
    department: str
    seconds: float
    cost_micro_usd: int | None


class ActivityLog:
    """Recent local computations, appended by the gateway, read by the sampler (thread-safe)."""

    def __init__(self) -> None:
        self._items: deque[Activity] = deque()
        self._lock = threading.Lock()

    def add(self, activity: Activity) -> None:
        with self._lock:
            self._items.append(activity)
            cutoff = activity.end - _KEEP_S
            while self._items and self._items[0].end < cutoff:
                self._items.popleft()

    def during(self, start: float, end: float) -> list[Activity]:
        with self._lock:
            return [a for a in self._items if a.end > start and a.start < end]


def attribute(
    minute: datetime,
    busy_s: float,
    idle_s: float,
    unknown_s: float,
    busy_micro_usd: int | None,
    idle_micro_usd: int | None,
    activities: Sequence[Activity],
    other_users: Sequence[str],
    box_department: str,
) -> list[Charge]:
    """The charges of one GPU minute. ``busy/idle_micro_usd``: the minute's cost of its busy and
    of its idle + unknown time (energy included as the caller prices it)."""
    start = minute.timestamp()
    end = start + 60.0
    per_user: dict[tuple[str, str], float] = {}
    for a in activities:
        overlap = min(a.end, end) - max(a.start, start)
        if overlap > 0:
            key = (a.user, a.department)
            per_user[key] = per_user.get(key, 0.0) + overlap
    agent_s = sum(per_user.values())
    scale = min(1.0, busy_s / agent_s) if agent_s > 0 else 0.0
    busy_parts: list[tuple[ChargeKind, str, str, float]] = [
        ("user", user, department, seconds * scale) for (user, department), seconds in sorted(per_user.items())
    ]
    rest = busy_s - sum(p[3] for p in busy_parts)
    if rest > 1e-9:
        owners = sorted(set(other_users))
        if owners:
            busy_parts += [("os_user", owner, "", rest / len(owners)) for owner in owners]
        else:
            busy_parts.append(("other", "other", box_department, rest))
    charges = []
    busy_costs = _split(busy_micro_usd, [p[3] for p in busy_parts])
    for (kind, subject, department, seconds), cost in zip(busy_parts, busy_costs, strict=True):
        charges.append(Charge(kind, subject, department, round(seconds, 3), cost))
    if idle_s + unknown_s > 0 or (idle_micro_usd or 0) > 0:
        charges.append(Charge("idle", "idle", box_department, round(idle_s + unknown_s, 3), idle_micro_usd))
    return charges


def _split(total: int | None, weights: Sequence[float]) -> list[int | None]:
    """``total`` shared by ``weights``, in integers that add up to it exactly."""
    if total is None:
        return [None] * len(weights)
    weight_sum = sum(weights)
    if not weights:
        return []
    if weight_sum <= 0:
        return [total // len(weights) + (1 if i < total % len(weights) else 0) for i in range(len(weights))]
    exact = [total * w / weight_sum for w in weights]
    floors = [int(x) for x in exact]
    leftover = total - sum(floors)
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - floors[i], reverse=True)
    for i in by_remainder[:leftover]:
        floors[i] += 1
    return list(floors)
