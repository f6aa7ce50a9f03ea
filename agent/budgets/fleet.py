"""Fleet-wide budgets: this agent's allotments of the department and organisation budgets.

A department or organisation budget is one amount for the whole fleet. This agent spends against
it only up to its allotment, a part it claimed in the budget's lease file on the share (see
``agent.fleet.leases``): the enforcer holds requests against the allotment exactly as it holds
them against a budget's amount on a single agent. When a request does not fit, the enforcer asks
for more (``grow``): a chunk of what the fleet has not allotted yet, off the event loop. An idle
agent gives back what it did not spend (``refresh``), so a busy one can claim it.

With the share unreachable the rule is: spend within the allotment last claimed, never past it
(a new agent that never claimed spends nothing on fleet-wide budgets until the share answers).
``state`` says so, for ``/api/v1/budgets`` and ``doctor``.

A fleet-wide budget is forecast from the fleet's daily spend, not this agent's: ``FleetHistory``
reads the other hosts' published rows (the Parquet segments on the share, through DuckDB) and the
enforcer adds this agent's own days from its ledger, so its rows not yet published count too and
none counts twice. One read of the share serves every budget for a few minutes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

from agent.budgets.forecast import daily_from_hours
from agent.fleet.leases import Lease, LeaseBook, LeaseKey

if TYPE_CHECKING:
    from agent.budgets.enforcer import Charge

log = logging.getLogger(__name__)

FLEET_SCOPES = frozenset({"department", "organisation"})
# After the share failed, requests do not try it again for this long (they would all wait on it).
_RETRY_AFTER_FAILURE_S = 5.0
# The fleet's spend history is read from the share at most this often (forecasts are checked
# every few minutes, and each check forecasts every budget); after a failed read, this often.
HISTORY_MAX_AGE_S = 300.0
HISTORY_RETRY_S = 60.0


class LeaseStore(Protocol):
    def claim(self, key: LeaseKey, spent: int, need: int, chunk: int) -> Lease: ...

    def give_back(self, key: LeaseKey, spent: int, keep: int) -> Lease: ...

    def read(self, key: LeaseKey) -> Lease: ...


@dataclass(frozen=True)
class FleetState:
    """What this agent knows of one fleet-wide budget, for reports."""

    allotted_micro_usd: int
    fleet_spent_micro_usd: int | None  # the other hosts' last recorded spend + ours (None: never read)
    fleet_allotted_micro_usd: int | None
    hosts: int | None
    problem: str  # "" or why the share cannot be used, and the rule applied meanwhile


@dataclass
class _Allotment:
    charge: Charge
    allotted: int = 0
    lease: Lease | None = None
    last_use: float = 0.0
    written_spent: int = -1


@dataclass(frozen=True)
class FleetDays:
    """The other hosts' spend per local day for one budget's subject, or why there is none."""

    days: list[int] | None  # one value per day, first to last; None: the share could not be read
    note: str = ""  # "" or what the series lacks (hosts skipped) or why it is missing


@dataclass
class _Read:
    since: datetime
    at: float
    hours: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # department -> (UTC hour, spend)
    problem: str = ""  # the share could not be read: why
    skipped: tuple[str, ...] = ()  # hosts left out of the reports (see agent.fleet.catalog)


class FleetHistory:
    """The other hosts' priced spend per department and UTC hour, from the share's Parquet
    segments (``agent.fleet.report.hourly_spend``), read at most every ``max_age_s`` seconds.
    Blocking I/O: call it off the event loop."""

    def __init__(
        self,
        share_dir: Path,
        host_id: str,
        *,
        checksum_cache: Path | None = None,
        max_age_s: float = HISTORY_MAX_AGE_S,
        retry_s: float = HISTORY_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.share_dir = share_dir
        self.host_id = host_id
        self._checksum_cache = checksum_cache
        self._max_age_s = max_age_s
        self._retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()  # one read of the share at a time; the others wait for it
        self._last: _Read | None = None
        self.reads = 0  # how many times the share was read (for tests and doctor)

    def daily(self, department: str | None, first: date, last: date, zone: ZoneInfo) -> FleetDays:
        """The other hosts' spend per local day of ``zone`` from ``first`` to ``last``, of one
        department or (None) the whole organisation."""
        read = self._read(datetime.combine(first, datetime.min.time(), zone))
        if read.problem:
            return FleetDays(None, read.problem)
        if department is None:
            hours = [h for spend in read.hours.values() for h in spend]
        else:
            hours = read.hours.get(department, [])
        note = f"{len(read.skipped)} host(s) on the share could not be read: {', '.join(read.skipped)}"
        return FleetDays(daily_from_hours(hours, zone, first, last), note if read.skipped else "")

    def _read(self, since: datetime) -> _Read:
        with self._lock:
            last, now = self._last, self._clock()
            fresh = last is not None and last.since <= since
            if last is not None and fresh and now - last.at < (self._retry_s if last.problem else self._max_age_s):
                return last
            self._last = self._read_share(since, now)
            return self._last

    def _read_share(self, since: datetime, now: float) -> _Read:
        import duckdb

        from agent.fleet.catalog import scan
        from agent.fleet.report import connect, hourly_spend

        self.reads += 1
        try:
            if not self.share_dir.is_dir():  # unmounted: not a fleet with no spend
                raise FileNotFoundError(f"{self.share_dir} is not reachable")
            catalog = scan(self.share_dir, self._checksum_cache)
            conn = connect(catalog)
            try:
                rows = hourly_spend(conn, since, exclude_host=self.host_id)
            finally:
                conn.close()
        except (OSError, duckdb.Error) as e:
            problem = f"the fleet's spend on the share cannot be read ({e})"
            if self._last is None or not self._last.problem:
                log.warning("fleet budgets: %s: forecasting from this agent's ledger only", problem)
            return _Read(since, now, problem=problem)
        hours: dict[str, list[tuple[str, int]]] = {}
        for department, hour, spent in rows:
            hours.setdefault(department, []).append((hour, spent))
        skipped = tuple(s.name for s in catalog.skipped if s.name.split(" ")[0] != self.host_id)
        return _Read(since, now, hours, skipped=skipped)


class FleetBudgets:
    def __init__(
        self,
        leases: LeaseStore,
        *,
        chunk: Fraction = Fraction(1, 20),
        idle_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        history: FleetHistory | None = None,
    ) -> None:
        """``history``: where the fleet's spend is read for forecasts; by default the share that
        ``leases`` is on, when it is a ``LeaseBook``."""
        if history is None and isinstance(leases, LeaseBook):
            history = FleetHistory(leases.root.parent.parent, leases.host_id)  # <share>/fleet/_leases
        self.history = history
        self._leases = leases
        self._chunk = chunk
        self._idle_s = idle_s
        self._clock = clock
        self._lock = threading.Lock()  # the maps below; never held during share I/O
        self._held: dict[tuple[str, str, str, str, str], _Allotment] = {}
        self._claiming: dict[tuple[str, str, str, str, str], threading.Lock] = {}
        self._failed_at: float | None = None
        self._problem = ""

    @staticmethod
    def applies(charge: Charge) -> bool:
        return charge.rule.scope in FLEET_SCOPES

    def limit(self, charge: Charge) -> int:
        """This agent's allotment (no I/O: it is called under the enforcer's lock)."""
        with self._lock:
            held = self._held.get(charge.key)
            return held.allotted if held is not None else 0

    def touch(self, charge: Charge) -> None:
        """A request held against this budget now (an idle allotment is given back, a busy one not)."""
        with self._lock:
            self._entry(charge).last_use = self._clock()

    def grow(self, charge: Charge, usage: Callable[[], tuple[int, int]], worst: int) -> bool:
        """Claim more of the budget so that ``worst`` more fits; True when the allotment is now
        enough. ``usage`` gives this agent's (spent, reserved) against the budget, read after the
        claim lock is taken (another request may have claimed meanwhile). Blocking share I/O."""
        with self._lock:
            claiming = self._claiming.setdefault(charge.key, threading.Lock())
            if self._failed_at is not None and self._clock() - self._failed_at < _RETRY_AFTER_FAILURE_S:
                return False
        with claiming:
            spent, reserved = usage()
            want = spent + reserved + worst
            have = self.limit(charge)
            if have >= want:
                return True
            chunk = int(charge.rule.amount_micro_usd * self._chunk)
            try:
                lease = self._leases.claim(_key(charge), spent, want - have, chunk)
            except OSError as e:
                self._failed(e)
                return False
            self._recovered()
            with self._lock:
                held = self._entry(charge)
                held.allotted, held.lease, held.written_spent = lease.allotted, lease, spent
            return lease.allotted >= want

    def refresh(self, usage: Callable[[Charge], tuple[int, int, int]], now_key: Callable[[Charge], str]) -> None:
        """The periodic job, for each budget this agent holds part of: drop it when its period
        ended; give back what an idle allotment did not spend; record our spend where it changed
        (answers from the local model count without a claim); else read the others' spend again.
        ``usage`` gives this agent's (spent, reserved, holds) against the budget."""
        with self._lock:
            entries = list(self._held.items())
        for key, held in entries:
            if now_key(held.charge) != held.charge.period_key:
                with self._lock:
                    self._held.pop(key, None)
                    self._claiming.pop(key, None)
                continue
            with self._lock:
                claiming = self._claiming.setdefault(key, threading.Lock())
            with claiming:
                spent, reserved, holds = usage(held.charge)
                idle = holds == 0 and self._clock() - held.last_use >= self._idle_s
                keep = spent + reserved if idle else held.allotted
                if keep >= held.allotted and spent == held.written_spent:
                    self._reread(held)  # nothing of ours to write: the others' spend, for reports
                    continue
                if idle:
                    with self._lock:
                        held.allotted = min(held.allotted, keep)  # before the share: nothing new fits
                try:
                    lease = self._leases.give_back(_key(held.charge), spent, keep)
                except OSError as e:
                    self._failed(e)
                    continue
                self._recovered()
                with self._lock:
                    held.allotted, held.lease, held.written_spent = lease.allotted, lease, spent

    def others_spent(self, charge: Charge) -> int:
        """The other hosts' spend of this budget, as their lease entries last said (no I/O)."""
        with self._lock:
            held = self._held.get(charge.key)
            return held.lease.others_spent if held is not None and held.lease is not None else 0

    def state(self, charge: Charge, spent: int) -> FleetState:
        with self._lock:
            held = self._held.get(charge.key)
            allotted = held.allotted if held is not None else 0
            lease = held.lease if held is not None else None
            problem = self._problem
        if lease is None:
            return FleetState(allotted, None, None, None, problem)
        return FleetState(allotted, lease.others_spent + spent, lease.others_allotted + allotted, lease.hosts, problem)

    @property
    def problem(self) -> str:
        return self._problem

    # -- internals -----------------------------------------------------------------------

    def _reread(self, held: _Allotment) -> None:
        try:
            lease = self._leases.read(_key(held.charge))
        except OSError as e:
            self._failed(e)
            return
        self._recovered()
        with self._lock:
            held.lease = lease

    def _entry(self, charge: Charge) -> _Allotment:
        """Under the lock."""
        held = self._held.get(charge.key)
        if held is None:
            held = self._held[charge.key] = _Allotment(charge)
        return held

    def _failed(self, error: OSError) -> None:
        with self._lock:
            first = not self._problem
            self._failed_at = self._clock()
            self._problem = (
                f"the share's budget leases cannot be used ({error}): spending within the allotments "
                "last claimed, never past them"
            )
        if first:
            log.warning("fleet budgets: %s", self._problem)

    def _recovered(self) -> None:
        with self._lock:
            was, self._problem, self._failed_at = self._problem, "", None
        if was:
            log.info("fleet budgets: the share's budget leases answer again")


def _key(charge: Charge) -> LeaseKey:
    rule = charge.rule
    return LeaseKey(rule.name, rule.scope, charge.subject, rule.period, charge.period_key, rule.amount_micro_usd)
