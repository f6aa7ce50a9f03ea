"""Allotments of fleet-wide budgets, claimed on the share, so that a fleet cannot overspend.

A department or organisation budget is shared by every agent of the fleet. Each agent may spend
against it only up to its *allotment*: a part of the budget it claimed in the budget's lease file
on the share, one file per budget, subject and period::

    <share>/fleet/_leases/<period-key>/<slug>.json
    {"schema": 1, "budget": "eng-monthly", "scope": "department", "subject": "eng",
     "period": "month", "period_key": "2026-12", "amount_micro_usd": 500000000,
     "hosts": {"<host-id>": {"allotted": 25000000, "spent": 24100000, "updated_at": "..."}}}

The file changes only under its lock (``<slug>.lock``, created with O_EXCL, which SMB and NFS
honour), and is replaced whole (temp + fsync + rename). Under the lock a claim never takes the
sum of the allotments past the amount, so the hosts' spends, each within its allotment, add up to
at most the amount, however many hosts spend at once and however stale their view of each other.
An idle host gives back what it did not spend, so a busy one can claim it.

A lock left by a host that died mid-claim is broken after ``STALE_LOCK_S``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.fleet.files import write_atomic
from agent.ledger.database import utc_now_iso

log = logging.getLogger(__name__)

LEASES = "_leases"  # under <share>/fleet/; readers of host folders skip names starting with "_"
SCHEMA = 1
STALE_LOCK_S = 30.0
LOCK_TIMEOUT_S = 5.0


class LeaseBusy(OSError):
    """The lease file stayed locked by another host for longer than we wait."""


@dataclass(frozen=True)
class LeaseKey:
    """One fleet-wide budget for one subject and period."""

    budget: str
    scope: str
    subject: str
    period: str
    period_key: str
    amount_micro_usd: int

    @property
    def slug(self) -> str:
        """A file name for any subject (department names are free text)."""
        raw = "\0".join((self.budget, self.scope, self.subject, self.period))
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Lease:
    """The lease file as this host last saw it."""

    key: LeaseKey
    allotted: int  # this host's
    others_allotted: int
    others_spent: int  # as each other host last wrote it
    hosts: int  # hosts with an entry, this one included

    @property
    def free(self) -> int:
        return max(self.key.amount_micro_usd - self.allotted - self.others_allotted, 0)


class LeaseBook:
    """This host's side of the lease files on one share."""

    def __init__(self, share_dir: Path, host_id: str, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.root = share_dir / "fleet" / LEASES
        self.host_id = host_id
        self._lock_timeout_s = lock_timeout_s

    def claim(self, key: LeaseKey, spent: int, need: int, chunk: int) -> Lease:
        """Grow this host's allotment by at least ``need`` (more, up to ``chunk`` and half of what
        is free shared by the hosts, so the next requests need no claim) where the budget has that
        much unallotted; less, down to nothing, where it has not. ``spent`` is this host's spend
        against the budget this period: an allotment never falls below it. Raises OSError when
        the share fails (LeaseBusy: locked)."""
        with self._locked(key):
            data = self._read(key)
            mine = _entry(data, self.host_id)
            others_allotted, others_spent, hosts = _others(data, self.host_id)
            base = max(mine["allotted"], spent)
            free = key.amount_micro_usd - others_allotted - base
            # At least what is needed; more (up to ``chunk``) while plenty is free, less as more
            # hosts share what is left, so a large fleet does not strand the budget with a few.
            spare = free // (2 * (hosts + 1))
            grant = min(free, max(need, min(chunk, spare))) if free > 0 and need > 0 else 0
            allotted = base + max(grant, 0)
            if allotted != mine["allotted"] or spent != mine["spent"]:
                self._write(key, data, allotted, spent)
            return Lease(key, allotted, others_allotted, others_spent, hosts + 1)

    def give_back(self, key: LeaseKey, spent: int, keep: int) -> Lease:
        """Shrink this host's allotment to ``keep`` (not below ``spent``): an idle host returns
        what it did not use. Also records ``spent`` for the others to see."""
        with self._locked(key):
            data = self._read(key)
            mine = _entry(data, self.host_id)
            others_allotted, others_spent, hosts = _others(data, self.host_id)
            allotted = min(mine["allotted"], max(keep, spent))
            allotted = max(allotted, spent)
            if allotted != mine["allotted"] or spent != mine["spent"]:
                self._write(key, data, allotted, spent)
            return Lease(key, allotted, others_allotted, others_spent, hosts + 1)

    def read(self, key: LeaseKey) -> Lease:
        """The lease as it is now, without the lock (for reports: it may be a moment old)."""
        data = self._read(key)
        mine = _entry(data, self.host_id)
        others_allotted, others_spent, hosts = _others(data, self.host_id)
        return Lease(key, mine["allotted"], others_allotted, others_spent, hosts + (self.host_id in data["hosts"]))

    # -- files ---------------------------------------------------------------------------

    def _path(self, key: LeaseKey, suffix: str) -> Path:
        return self.root / key.period_key / f"{key.slug}{suffix}"

    def _read(self, key: LeaseKey) -> dict[str, Any]:
        path = self._path(key, ".json")
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {"hosts": {}}
        except ValueError as e:
            # Written only by rename, so a torn file is someone's hand edit or a broken share:
            # nobody can know the others' allotments, so nobody may claim (OSError: fall back).
            raise OSError(f"the lease file {path} is not valid JSON ({e}); move it away to reset it") from e
        if not isinstance(data, dict) or not isinstance(data.get("hosts"), dict):
            raise OSError(f"the lease file {path} is not one this agent can read")
        if data.get("schema", SCHEMA) not in range(1, SCHEMA + 1):
            raise OSError(f"the lease file {path} is not one this agent can read")
        return data

    def _write(self, key: LeaseKey, data: dict[str, Any], allotted: int, spent: int) -> None:
        hosts = dict(data["hosts"])
        hosts[self.host_id] = {"allotted": allotted, "spent": spent, "updated_at": utc_now_iso(),
                               "hostname": socket.gethostname()}  # fmt: skip
        body = {
            "schema": SCHEMA,
            "budget": key.budget,
            "scope": key.scope,
            "subject": key.subject,
            "period": key.period,
            "period_key": key.period_key,
            "amount_micro_usd": key.amount_micro_usd,
            "hosts": hosts,
        }
        write_atomic(self._path(key, ".json"), json.dumps(body, indent=1, sort_keys=True).encode())

    @contextlib.contextmanager
    def _locked(self, key: LeaseKey) -> Iterator[None]:
        lock = self._path(key, ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale(lock)
                if time.monotonic() > deadline:
                    raise LeaseBusy(f"the lease {lock} stayed locked for {self._lock_timeout_s:.0f} s") from None
                time.sleep(random.uniform(0.002, 0.02))  # noqa: S311 - jitter, not security
                continue
            try:
                os.write(fd, f"{self.host_id} {utc_now_iso()}\n".encode())
            finally:
                os.close(fd)
            break
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    def _break_if_stale(self, lock: Path) -> None:
        try:
            age_s = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age_s > STALE_LOCK_S:
            log.warning("breaking the lease lock %s, left %.0f s ago by a host that did not finish", lock, age_s)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def _entry(data: dict[str, Any], host_id: str) -> dict[str, int]:
    entry = data["hosts"].get(host_id)
    if not isinstance(entry, dict):
        return {"allotted": 0, "spent": 0}
    return {"allotted": _count(entry.get("allotted")), "spent": _count(entry.get("spent"))}


def _others(data: dict[str, Any], host_id: str) -> tuple[int, int, int]:
    """The other hosts' allotments and spends added up, and how many they are. An entry whose
    spend is above its allotment counts with its spend (local answers are never blocked)."""
    allotted = spent = count = 0
    for other, entry in data["hosts"].items():
        if other == host_id or not isinstance(entry, dict):
            continue
        their_spent = _count(entry.get("spent"))
        allotted += max(_count(entry.get("allotted")), their_spent)
        spent += their_spent
        count += 1
    return allotted, spent, count


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
