"""Budgets and rate limits, enforced before any money is spent.

Before a paid call the gateway **reserves** the call's worst-case cost against every budget
that applies to the caller (user, department, feature, organisation); the reservation never
takes a hard budget past its amount, so concurrent requests can never spend past it together.
When the call ends (answered, failed, aborted) its ledger row is written and the reservation is
**settled**: released, and the real cost added to the spent total.

A request whose worst case does not fit only because of the holds of calls in flight **waits**
for them to settle (bounded by ``budgets.hold_wait_s``) instead of being refused; one that still
does not fit, with nothing in flight, may be granted what is left when that pays for a short
answer (``floor``): the gateway then lowers its ``max_tokens`` to what the grant pays for. A
refusal says whether the budget is spent or held by calls in flight.

Holds are estimates. A call that settles above its hold (the provider counted more input than
we estimated) *closes* its budgets to new holds until the calls in flight have settled, so one
surprise cannot repeat across many concurrent calls; spend past the amount raises one
``budget_overrun`` event per budget, subject and period, with the amount over.

Spent totals are the ledger's: loaded once per budget, subject and period from the requests
table, then kept in memory next to the open reservations, all under one lock (this agent is the
only writer of its ledger). Periods follow the calendar in the policy's time zone.

Local answers are never blocked by a money budget (their cost still counts); rate and token
limits apply to every request. Crossing an alert threshold adds one event per budget, subject,
period and threshold, and posts it to the policy's webhook if it names one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from agent.budgets.fleet import FleetBudgets, FleetState
from agent.budgets.forecast import HISTORY_DAYS, Forecast, daily_from_hours, forecast_period
from agent.budgets.periods import period_bounds, period_key
from agent.budgets.ratelimit import RateLimit, RateLimiter
from agent.errors import BudgetExceeded, PermissionDenied, RateLimited
from agent.identity import Caller
from agent.ledger.database import Database
from agent.ledger.events import EventLog
from agent.ledger.users import UserStore
from agent.money import format_usd
from agent.policy.model import BudgetRule, Policy
from agent.policy.model import RateLimit as RateRule

log = logging.getLogger(__name__)

# Budget scope -> requests column. A fixed map: nothing from the policy reaches SQL text.
_SCOPE_COLUMN: dict[str, str | None] = {
    "user": "user_name",
    "department": "department",
    "feature": "feature",
    "organisation": None,
}
# A reservation nobody settled (a request lost between prepare and delivery) expires after this.
_RESERVATION_MAX_AGE_S = 900.0


@dataclass(frozen=True)
class Charge:
    """One budget a request counts against: the rule, whose spend, and which period."""

    rule: BudgetRule
    subject: str
    start: datetime
    end: datetime  # = when it resets
    period_key: str

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.rule.name, self.rule.scope, self.rule.period, self.subject, self.period_key)


@dataclass
class _Totals:
    spent: int
    reserved: int = 0
    holds: int = 0  # calls in flight holding against this budget
    closed: bool = False  # a call settled above its hold: no new holds until ``holds`` is 0
    overrun_reported: bool = False
    # A fleet-wide budget: the fleet's spend as this agent last judged its alerts. The other hosts'
    # part moves in jumps (read at each claim), so a threshold passed between two of our requests
    # is seen as crossed at the next one.
    fleet_judged: int | None = None


@dataclass
class Reservation:
    request_id: str
    charges: tuple[Charge, ...]
    amount: int  # micro-USD held against each charge
    created: float = field(default_factory=time.monotonic)
    settled: bool = False
    asked: int = 0  # the worst case asked for; ``amount`` is less when the grant was capped
    waited_s: float = 0.0

    @property
    def capped(self) -> bool:
        return self.amount < self.asked


@dataclass(frozen=True)
class Quote:
    """What a paid call asks to hold (micro-USD): its worst case; ``floor``, the least grant worth
    answering with (None: all or nothing); ``exclusive``, hold only while no other call holds
    against the same budgets (its model's input is not calibrated yet)."""

    worst: int
    floor: int | None = None
    exclusive: bool = False


@dataclass(frozen=True)
class _Wait:
    """Holds in flight are in the way: wait for one to settle and ask again."""

    charge: Charge
    totals: _Totals
    limit: int


@dataclass(frozen=True)
class _Refused:
    """The charge that refuses, as it stood."""

    charge: Charge
    totals: _Totals
    limit: int


@dataclass(frozen=True)
class Admission:
    """A request let in by the rate limits: the keys it used and the tokens it was counted for."""

    keys: tuple[str, ...] = ()
    tokens: int = 0


@dataclass(frozen=True)
class BudgetStatus:
    name: str
    scope: str
    subject: str
    period: str
    action: str
    amount_micro_usd: int
    spent_micro_usd: int
    reserved_micro_usd: int
    resets_at: str
    period_key: str = ""
    fleet: FleetState | None = None  # a fleet-wide budget: this agent's allotment and the fleet's spend

    @property
    def remaining_micro_usd(self) -> int:
        spent = self.spent_micro_usd
        if self.fleet is not None and self.fleet.fleet_spent_micro_usd is not None:
            spent = max(spent, self.fleet.fleet_spent_micro_usd)
        return max(self.amount_micro_usd - spent - self.reserved_micro_usd, 0)


class BudgetEnforcer:
    def __init__(
        self,
        db: Database,
        policy: Callable[[], Policy | None],
        events: EventLog,
        limiter: RateLimiter | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        fleet: FleetBudgets | None = None,
    ) -> None:
        self._db = db
        self._fleet = fleet
        self._policy = policy
        self._events = events
        self._limiter = limiter or RateLimiter()
        self._now = now
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str, str, str, str], _Totals] = {}
        self._charges_seen: dict[tuple[str, str, str, str, str], Charge] = {}
        self._open: dict[str, Reservation] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def policy(self) -> Policy | None:
        return self._policy()

    @property
    def fleet(self) -> FleetBudgets | None:
        return self._fleet

    # -- who ---------------------------------------------------------------------------------

    def effective_caller(self, caller: Caller) -> Caller:
        """The caller with the department the policy gives them (first-seen users: the default)."""
        policy = self._policy()
        if policy is None:
            return caller
        department = policy.department_of(caller.user, caller.department)
        return caller if department == caller.department else replace(caller, department=department)

    def check_model(self, caller: Caller, model: str) -> None:
        policy = self._policy()
        if policy is not None and not policy.model_allowed(caller.department, model):
            raise PermissionDenied(
                f"model {model!r} is not allowed for department {caller.department!r} by policy "
                f"version {policy.version}",
                code="model_not_allowed",
            )

    def model_allowed(self, caller: Caller, model: str) -> bool:
        policy = self._policy()
        return policy is None or policy.model_allowed(caller.department, model)

    # -- rate limits -------------------------------------------------------------------------

    def admit(self, caller: Caller, tokens: int) -> Admission:
        """Count the request against its rate limits, or raise RateLimited with the wait."""
        policy = self._policy()
        if policy is None:
            return Admission()
        rules = list(enumerate(policy.rate_limits_for(caller.user, caller.department)))
        limits = [
            RateLimit(f"{index}:{rule.scope}:{subject}", rule.requests_per_minute, rule.tokens_per_minute)
            for index, (rule, subject) in rules
        ]
        wait = self._limiter.acquire_all(limits, tokens)  # all or nothing
        if wait is not None:
            described = "; ".join(f"{rule.scope} {subject!r}: {_describe_rate(rule)}" for _, (rule, subject) in rules)
            raise RateLimited(f"rate limit reached ({described}); retry in {wait:.1f} s", retry_after_s=wait,
                              code="rate_limited")  # fmt: skip
        used = [limit.key for limit in limits]
        return Admission(tuple(used), tokens)

    def settle_tokens(self, admission: Admission, actual_tokens: int) -> None:
        for key in admission.keys:
            self._limiter.settle(key, admission.tokens, actual_tokens)

    # -- money ---------------------------------------------------------------------------------

    def charges(self, caller: Caller, feature: str, at: datetime | None = None) -> tuple[Charge, ...]:
        policy = self._policy()
        if policy is None:
            return ()
        at = at or self._now()
        out = []
        for rule, subject in policy.budgets_for(caller.user, caller.department, feature):
            start, end = period_bounds(rule.period, at, policy.timezone)
            out.append(Charge(rule, subject, start, end, period_key(rule.period, at, policy.timezone)))
        return tuple(out)

    def reserve(
        self,
        caller: Caller,
        feature: str,
        request_id: str,
        worst_case_micro_usd: int,
        *,
        floor_micro_usd: int | None = None,
        exclusive: bool = False,
    ) -> Reservation:
        """Hold the worst case against every budget now, or raise BudgetExceeded naming the first
        hard budget it would break (``code`` says ``block`` or ``downgrade``). Never waits."""
        charges = self.charges(caller, feature)
        with self._lock:
            outcome = self._attempt(charges, request_id, worst_case_micro_usd, floor_micro_usd, exclusive, None)
        if isinstance(outcome, Reservation):
            return outcome
        raise self._refusal(outcome, caller, worst_case_micro_usd, waited_s=0.0)

    async def reserve_waiting(
        self, caller: Caller, feature: str, request_id: str, quote: Callable[[], Quote], *, wait_s: float
    ) -> Reservation:
        """As ``reserve``, but a request that only the holds of calls in flight keep out waits up
        to ``wait_s`` for them to settle. ``quote`` is asked again after each wait: what a call
        holds can change meanwhile (a settled call calibrated its model)."""
        charges = self.charges(caller, feature)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = started + wait_s
        claim_failed = False  # the fleet had no more to allot (or the share failed): stop asking
        while True:
            woken: asyncio.Future[None] = loop.create_future()
            asked = quote()
            with self._lock:
                outcome = self._attempt(charges, request_id, asked.worst, asked.floor, asked.exclusive, (loop, woken))
            if isinstance(outcome, Reservation):
                outcome.waited_s = time.monotonic() - started
                return outcome
            if not claim_failed and self._short_of_allotment(outcome, asked.worst):
                # A fleet-wide budget: claim more of it on the share (blocking I/O, off the loop).
                # Each successful claim adds room, and the budget is finite: this ends.
                self._forget(woken)
                claim_failed = not await asyncio.to_thread(self._grow, outcome.charge, asked.worst)
                continue  # ask again, with the allotment as it now is
            left = deadline - time.monotonic()
            if not isinstance(outcome, _Wait) or left <= 0:
                self._forget(woken)
                raise self._refusal(outcome, caller, asked.worst, waited_s=time.monotonic() - started)
            try:
                await asyncio.wait_for(asyncio.shield(woken), timeout=left)
            except TimeoutError:
                pass
            finally:
                self._forget(woken)

    def _attempt(
        self,
        charges: tuple[Charge, ...],
        request_id: str,
        worst: int,
        floor: int | None,
        exclusive: bool,
        waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None,
    ) -> Reservation | _Wait | _Refused:
        """Under the lock: a reservation, a reason to wait (registering ``waiter`` to be woken
        when a hold goes), or the charge that refuses."""
        self._expire_stale()
        grant, wait = worst, None
        for charge in charges:
            totals = self._totals_for(charge)
            free = self._limit(charge) - totals.spent - totals.reserved
            busy = totals.holds > 0
            if busy and (totals.closed or exclusive):
                wait = wait or _Wait(charge, _copy(totals), self._limit(charge))
            elif free >= worst:
                continue
            elif busy:
                wait = wait or _Wait(charge, _copy(totals), self._limit(charge))
            elif floor is not None and free >= floor:
                grant = min(grant, free)
            else:
                return _Refused(charge, _copy(totals), self._limit(charge))
        if wait is not None:
            if waiter is not None:
                self._waiters.append(waiter)
            return wait
        for charge in charges:
            totals = self._totals_for(charge)
            totals.reserved += grant
            totals.holds += 1
            if self._fleet is not None and self._fleet.applies(charge):
                self._fleet.touch(charge)
        reservation = Reservation(request_id, charges, grant, asked=worst)
        self._open[request_id] = reservation
        return reservation

    def _refusal(self, outcome: _Wait | _Refused, caller: Caller, asked: int, *, waited_s: float) -> BudgetExceeded:
        note = self._fleet.problem if self._fleet is not None and self._fleet.applies(outcome.charge) else ""
        if isinstance(outcome, _Wait):
            return _exceeded(outcome.charge, outcome.totals, asked, outcome.limit, waited_s=waited_s, note=note)
        if outcome.limit >= outcome.charge.rule.amount_micro_usd:  # the budget itself is spent
            self._alert(outcome.charge, None, outcome.totals, caller)  # once per period: "now refuses"
        return _exceeded(outcome.charge, outcome.totals, asked, outcome.limit, note=note)

    def _limit(self, charge: Charge) -> int:
        """What this agent may spend against a budget: its amount, or for a fleet-wide budget
        this agent's allotment of it."""
        if self._fleet is not None and self._fleet.applies(charge):
            return min(self._fleet.limit(charge), charge.rule.amount_micro_usd)
        return charge.rule.amount_micro_usd

    def _short_of_allotment(self, outcome: _Wait | _Refused, worst: int) -> bool:
        """A fleet-wide budget kept the request out because this agent's allotment is too small
        (not because the fleet's whole budget is spent, nor because a call settled above its hold)."""
        if self._fleet is None or not self._fleet.applies(outcome.charge):
            return False
        totals = outcome.totals
        if isinstance(outcome, _Wait) and totals.closed:
            return False
        return outcome.limit < outcome.charge.rule.amount_micro_usd and (
            outcome.limit - totals.spent - totals.reserved < worst
        )

    def _grow(self, charge: Charge, worst: int) -> bool:
        """In a worker thread: claim more of a fleet-wide budget for this agent."""
        if self._fleet is None:
            return False

        def usage() -> tuple[int, int]:
            with self._lock:
                totals = self._totals_for(charge)
                return totals.spent, totals.reserved

        grown = self._fleet.grow(charge, usage, worst)
        with self._lock:
            self._wake_all()  # the other requests waiting on this budget may fit now too
        return grown

    def refresh_fleet(self) -> None:
        """The periodic job: idle allotments go back to the fleet; spend is recorded on the share."""
        if self._fleet is None:
            return
        policy = self._policy()
        zone = policy.timezone if policy is not None else "UTC"

        def usage(charge: Charge) -> tuple[int, int, int]:
            with self._lock:
                totals = self._totals_for(charge)
                return totals.spent, totals.reserved, totals.holds

        self._fleet.refresh(usage, lambda charge: period_key(charge.rule.period, self._now(), zone))

    def fleet_statuses(self) -> list[BudgetStatus]:
        """This agent's spend against each fleet-wide budget it has counted this period."""
        if self._fleet is None:
            return []
        with self._lock:
            charges = [c for c in self._charges_seen.values() if self._fleet.applies(c) and c.end > self._now()]
        return [self._status(c) for c in charges]

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with self._lock:
            self._waiters = [(loop, fut) for loop, fut in self._waiters if fut is not waiter]

    def _wake_all(self) -> None:
        """Under the lock: every waiting request asks again (a hold went, or spend changed)."""
        waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)

    def settle(
        self,
        reservation: Reservation | None,
        caller: Caller,
        feature: str,
        at: datetime,
        cost_micro_usd: int | None,
    ) -> None:
        """After the ledger row is written: release the hold, count the real cost, raise alerts."""
        crossed: list[tuple[Charge, int, _Totals]] = []
        overrun: list[tuple[Charge, _Totals]] = []
        charges = reservation.charges if reservation is not None else self.charges(caller, feature, at)
        cost = cost_micro_usd or 0
        above_hold = reservation is not None and cost > reservation.amount
        with self._lock:
            if reservation is not None:
                if reservation.settled:
                    return  # settled once: a second call changes nothing
                self._drop_hold(reservation)
            for charge in charges:
                totals = self._totals_for(charge)
                # A fleet-wide budget's alerts are about the fleet's spend: the other hosts' (as
                # their lease entries last said) and ours.
                fleet_wide = self._fleet is not None and self._fleet.applies(charge)
                others = self._fleet.others_spent(charge) if self._fleet is not None and fleet_wide else 0
                before = others + totals.spent
                if fleet_wide and totals.fleet_judged is not None:
                    before = min(before, totals.fleet_judged)
                totals.spent += cost
                after = others + totals.spent
                if fleet_wide:
                    totals.fleet_judged = after
                if above_hold and totals.holds > 0:
                    totals.closed = True  # the other holds may be as wrong: let them settle first
                for threshold in charge.rule.alerts:
                    limit = charge.rule.amount_micro_usd * threshold
                    if before * 100 < limit <= after * 100:
                        crossed.append((charge, threshold, _copy(totals, others)))
                if after > charge.rule.amount_micro_usd and not totals.overrun_reported and cost > 0:
                    totals.overrun_reported = True
                    overrun.append((charge, _copy(totals, others)))
            self._wake_all()
        if above_hold and reservation is not None:
            log.warning(
                "request %s cost %s USD, above its hold of %s USD",
                reservation.request_id, format_usd(cost), format_usd(reservation.amount),
            )  # fmt: skip
        for charge, threshold, totals in crossed:
            self._alert(charge, threshold, totals, caller)
        for charge, totals in overrun:
            self._alert(charge, None, totals, caller, kind="budget_overrun")

    def release(self, reservation: Reservation | None) -> None:
        """Give a hold back without spending (the request never reached a provider)."""
        if reservation is None:
            return
        with self._lock:
            if not reservation.settled:
                self._drop_hold(reservation)
                self._wake_all()

    def used_fraction(self, caller: Caller, feature: str) -> float | None:
        """The highest share of any applicable budget already spent or held (for the router)."""
        charges = self.charges(caller, feature)
        if not charges:
            return None
        with self._lock:
            shares = []
            for charge in charges:
                totals = self._totals_for(charge)
                amount = charge.rule.amount_micro_usd
                shares.append((totals.spent + totals.reserved) / amount if amount else 1.0)
        return max(shares)

    def statuses(self, caller: Caller, feature: str = "") -> list[BudgetStatus]:
        """Each budget that applies to the caller, with its spend."""
        return [self._status(c) for c in self.charges(caller, feature)]

    def all_statuses(self) -> list[BudgetStatus]:
        """Admins: every budget, for every subject with spend or holds this period."""
        policy = self._policy()
        if policy is None:
            return []
        now = self._now()
        # Who spent in the last 32 days: enough to cover any day, week or month period now.
        since = _iso(now - timedelta(days=32))
        seen = self._db.query("SELECT DISTINCT user_name, department, feature FROM requests WHERE ts >= ?", (since,))
        charges: dict[tuple[str, str, str, str, str], Charge] = {}
        for row in seen:
            for rule, subject in policy.budgets_for(row["user_name"], row["department"], row["feature"]):
                start, end = period_bounds(rule.period, now, policy.timezone)
                charge = Charge(rule, subject, start, end, period_key(rule.period, now, policy.timezone))
                charges[charge.key] = charge
        return [self._status(c) for c in sorted(charges.values(), key=lambda c: (c.rule.name, c.subject))]

    # -- internals -------------------------------------------------------------------------

    def forecast(self, status: BudgetStatus) -> Forecast:
        """Where ``status``'s period will end, from the subject's daily spend.

        A fleet-wide budget (department, organisation; ``FleetBudgets``) is forecast from the
        fleet's spend: each day is the other hosts' published spend (Parquet on the share) plus
        this agent's from its ledger, published or not; what the period has spent is the most of
        that series, this agent's spend and the fleet's on the budget's lease. With the share
        unreadable it is forecast from this agent's ledger alone (with the lease's fleet spend).

        Reads the ledger (hourly sums, 57 days at most) and perhaps the share: call it off the
        event loop. Never raises: a history that cannot be forecast gives a Forecast that says why.
        """
        return self._forecast(status)[0]

    def _forecast(self, status: BudgetStatus) -> tuple[Forecast, int, str]:
        """The forecast, the spend it starts from, and what its history is ("fleet", "fleet: ..."
        with what it lacks, "this agent: ..." where the fleet's could not be read, or "")."""
        policy = self._policy()
        if policy is None:
            return Forecast.none("no policy"), status.spent_micro_usd, ""
        zone = policy.zone
        now = self._now()
        today = now.astimezone(zone).date()
        first = today - timedelta(days=HISTORY_DAYS)
        column = _SCOPE_COLUMN.get(status.scope)
        where, params = "ts >= ?", [_iso(datetime.combine(first, datetime.min.time(), zone))]
        if column is not None:
            where += f" AND {column} = ?"
            params.append(status.subject)
        spent, basis = _counted_spent(status), ""
        try:
            rows = self._db.query(
                f"SELECT substr(ts, 1, 13) AS hour, sum(cost_micro_usd) AS spent FROM requests "  # noqa: S608 - fixed columns
                f"WHERE {where} AND cost_micro_usd IS NOT NULL GROUP BY hour",
                tuple(params),
            )
            daily = daily_from_hours(((str(r["hour"]), int(r["spent"])) for r in rows), zone, first, today)
            latest = max((str(r["hour"]) for r in rows), default="")
            if latest and datetime.fromisoformat(latest + ":00").replace(tzinfo=UTC) > now + timedelta(hours=1):
                return Forecast.none(f"the ledger holds spend dated {latest}:00 UTC, after now: the clock was "
                                     "set back; forecasts resume once that time has passed"), spent, basis  # fmt: skip
        except (ValueError, TypeError) as e:  # a damaged timestamp: no forecast, and why
            return Forecast.none(f"the ledger's history cannot be read: {e}"), spent, basis
        history = self._fleet.history if self._fleet is not None and status.fleet is not None else None
        if history is not None:
            others = history.daily(status.subject if column is not None else None, first, today, zone)
            if others.days is None:
                basis = f"this agent: {others.note}"
            else:
                daily = [mine + theirs for mine, theirs in zip(daily, others.days, strict=True)]
                spent = max(spent, spent_this_period(daily, first, status.period, policy.timezone, now))
                basis = f"fleet: {others.note}" if others.note else "fleet"
        return project(daily, status.period, status.amount_micro_usd, spent, policy.timezone, now), spent, basis

    def check_forecasts(self) -> int:
        """Raise ``budget_forecast`` for each budget whose forecast, even at the low end of its 80%
        interval, passes the amount before the period ends: once per budget, subject and period.
        A fleet-wide budget is judged on the fleet's spend (``forecast``).

        Run now and then by the scheduler (it reads the ledger, and the share for fleet-wide
        budgets: once for all of them), never on the request path. Returns how many events were new.
        """
        raised = 0
        for status in self.all_statuses():
            if _counted_spent(status) >= status.amount_micro_usd:
                continue  # already past it: budget_exhausted / budget_overrun say so
            f, spent, basis = self._forecast(status)
            if f.low_micro_usd is None or f.low_micro_usd < status.amount_micro_usd or f.breach_at is None:
                continue
            raised += self._forecast_alert(status, f, spent, basis)
        return raised

    def _forecast_alert(self, status: BudgetStatus, f: Forecast, spent: int, basis: str) -> int:
        forecast, low, high, breach = f.forecast_micro_usd, f.low_micro_usd, f.high_micro_usd, f.breach_at
        assert forecast is not None and low is not None and high is not None and breach is not None  # noqa: S101
        body: dict[str, Any] = {
            "budget": status.name,
            "scope": status.scope,
            "subject": status.subject,
            "spent_usd": format_usd(spent),
            "amount_usd": format_usd(status.amount_micro_usd),
            "forecast_usd": format_usd(forecast),
            "forecast_low_usd": format_usd(low),
            "forecast_high_usd": format_usd(high),
            "breach_at": _iso(breach),
            "period": status.period,
            "period_key": status.period_key,
            "resets_at": status.resets_at,
            "action": status.action,
        }
        if status.fleet is not None:  # a fleet-wide budget: whose spend the forecast is made from
            body["history"] = basis or "this agent"
        user_id, about = None, status.subject if status.scope == "department" else None
        if status.scope == "user" and (found := UserStore(self._db).get(status.subject)) is not None:
            user_id, about = found.id, found.department
        if about is not None:
            body["department"] = about
        department = status.subject if status.scope == "department" else None
        key = f"budget_forecast:{status.name}:{status.scope}:{status.subject}:{status.period_key}"
        claim = key if status.fleet is not None else None
        event_id = self._events.add("budget_forecast", body, user_id=user_id, department=department, dedupe_key=key,
                                    deliver=self._channels("budget_forecast", status.scope, about),
                                    claim=claim)  # fmt: skip
        if event_id is None:
            return 0
        log.warning("budget_forecast: budget %s (%s %s) is projected to pass %s USD at %s (forecast %s, 80%% %s-%s)",
                    status.name, status.scope, status.subject, body["amount_usd"], body["breach_at"],
                    body["forecast_usd"], body["forecast_low_usd"], body["forecast_high_usd"])  # fmt: skip
        return 1

    def _channels(self, kind: str, scope: str, department: str | None) -> tuple[str, ...]:
        """The alert channels of the policy in force for ``kind`` about ``scope`` (and
        ``department``): the outbox delivers to them."""
        policy = self._policy()
        return policy.alert_channels(kind, scope, department) if policy is not None else ()

    def _fleet_claim(self, charge: Charge, key: str) -> str | None:
        """The key that claims an alert on the share when the whole fleet raises it (a fleet-wide
        budget), so that one host posts it; None: this agent's own alert."""
        return key if self._fleet is not None and self._fleet.applies(charge) else None

    def _status(self, charge: Charge) -> BudgetStatus:
        with self._lock:
            totals = self._totals_for(charge)
            fleet = None
            if self._fleet is not None and self._fleet.applies(charge):
                fleet = self._fleet.state(charge, totals.spent)
            return BudgetStatus(
                name=charge.rule.name,
                scope=charge.rule.scope,
                subject=charge.subject,
                period=charge.rule.period,
                action=charge.rule.action,
                amount_micro_usd=charge.rule.amount_micro_usd,
                spent_micro_usd=totals.spent,
                reserved_micro_usd=totals.reserved,
                resets_at=_iso(charge.end),
                period_key=charge.period_key,
                fleet=fleet,
            )

    def _totals_for(self, charge: Charge) -> _Totals:
        """Under the lock: the in-memory totals, loaded from the ledger the first time."""
        totals = self._totals.get(charge.key)
        if totals is None:
            totals = _Totals(self._spent_in_ledger(charge))
            self._totals[charge.key] = totals
            self._charges_seen[charge.key] = charge
        return totals

    def _spent_in_ledger(self, charge: Charge) -> int:
        column = _SCOPE_COLUMN[charge.rule.scope]
        where, params = "ts >= ? AND ts < ?", [_iso(charge.start), _iso(charge.end)]
        if column is not None:
            where += f" AND {column} = ?"
            params.append(charge.subject)
        rows = self._db.query(
            f"SELECT coalesce(sum(cost_micro_usd), 0) AS spent FROM requests WHERE {where}",  # noqa: S608 - fixed columns
            tuple(params),
        )
        return int(rows[0]["spent"])

    def _drop_hold(self, reservation: Reservation) -> None:
        """Under the lock: mark settled and give its amount back to every budget it held."""
        reservation.settled = True
        if self._open.pop(reservation.request_id, None) is None:
            return
        for charge in reservation.charges:
            totals = self._totals.get(charge.key)
            if totals is not None:
                totals.reserved = max(totals.reserved - reservation.amount, 0)
                totals.holds = max(totals.holds - 1, 0)
                if totals.holds == 0:
                    totals.closed = False

    def _expire_stale(self) -> None:
        cutoff = time.monotonic() - _RESERVATION_MAX_AGE_S
        for request_id, reservation in list(self._open.items()):
            if reservation.created < cutoff:
                log.warning("budget hold of request %s was never settled: released", request_id)
                self._drop_hold(reservation)
                self._wake_all()

    def _alert(
        self, charge: Charge, threshold: int | None, totals: _Totals, caller: Caller, kind: str | None = None
    ) -> None:
        """One event per budget, subject, period and threshold; ``threshold=None``: the budget
        has started refusing (kind ``budget_exhausted``), or spend went past it (``budget_overrun``)."""
        rule = charge.rule
        kind = kind or ("budget_alert" if threshold is not None else "budget_exhausted")
        body: dict[str, Any] = {
            "budget": rule.name,
            "scope": rule.scope,
            "subject": charge.subject,
            "threshold_percent": threshold,
            "spent_usd": format_usd(totals.spent),
            "amount_usd": format_usd(rule.amount_micro_usd),
            "period": rule.period,
            "period_key": charge.period_key,
            "resets_at": _iso(charge.end),
            "action": rule.action,
        }
        if kind == "budget_overrun":
            body["overrun_usd"] = format_usd(totals.spent - rule.amount_micro_usd)
        user_id = caller.user_id if rule.scope == "user" else None
        department = charge.subject if rule.scope == "department" else None
        about = department or (caller.department if rule.scope == "user" else None)
        if about is not None:
            body["department"] = about
        key = f"{kind}:{rule.name}:{rule.scope}:{charge.subject}:{charge.period_key}:{threshold or ''}"
        event_id = self._events.add(kind, body, user_id=user_id, department=department, dedupe_key=key,
                                    deliver=self._channels(kind, rule.scope, about),
                                    claim=self._fleet_claim(charge, key))  # fmt: skip
        if event_id is not None:  # the first time only: one line per budget, subject, period and threshold
            at = f" at {threshold}%" if threshold is not None else ""
            log.warning("%s%s: budget %s (%s %s) spent %s of %s USD this %s", kind, at, rule.name, rule.scope,
                        charge.subject, body["spent_usd"], body["amount_usd"], rule.period)  # fmt: skip


def _exceeded(
    charge: Charge, totals: _Totals, asked: int, limit: int, *, waited_s: float | None = None, note: str = ""
) -> BudgetExceeded:
    """The 402: which budget, how much is spent and held, and whether the calls in flight (not
    the spend) are what kept this request out (``waited_s`` is then how long it waited)."""
    rule = charge.rule
    held = waited_s is not None
    if held:
        cause = f"{totals.holds} call(s) in flight hold {format_usd(totals.reserved)} USD of it"
        cause += f" and did not settle within {waited_s:.1f} s" if waited_s else ""
        cause += "; retry when they finish"
    else:
        cause = f"it resets at {_iso(charge.end)}"
    scope = f"{rule.scope} {charge.subject!r}, per {rule.period}"
    fleet = " (this agent's allotment of the fleet's budget)" if limit != rule.amount_micro_usd else ""
    if note:
        cause += f"; {note}"
    return BudgetExceeded(
        f"budget {rule.name!r} ({scope}) would be exceeded: spent {format_usd(totals.spent)} USD "
        f"(+{format_usd(totals.reserved)} in flight) of {format_usd(limit)} USD{fleet}; this request may "
        f"cost up to {format_usd(asked)} USD; {cause}" + (f"; it resets at {_iso(charge.end)}" if held else ""),
        code=rule.action,
        budget={
            "name": rule.name,
            "scope": rule.scope,
            "subject": charge.subject,
            "period": rule.period,
            "action": rule.action,
            "amount_usd": format_usd(rule.amount_micro_usd),
            "limit_usd": format_usd(limit),
            "spent_usd": format_usd(totals.spent),
            "reserved_usd": format_usd(totals.reserved),
            "cause": "in_flight" if held else "spent",
            "in_flight": totals.holds,
            "resets_at": _iso(charge.end),
        },
    )


def project(daily: list[int], period: str, amount: int, spent: int, timezone: str, now: datetime) -> Forecast:
    """The forecast of the ``period`` containing ``now``, from ``daily`` (spend per local day of
    ``timezone``, today last and partial) and what the period has ``spent`` so far."""
    zone = ZoneInfo(timezone)
    _, end = period_bounds(period, now, timezone)  # type: ignore[arg-type]
    today = now.astimezone(zone).date()
    midnight = datetime.combine(today, datetime.min.time(), zone)
    elapsed = (now - midnight) / (datetime.combine(today + timedelta(days=1), datetime.min.time(), zone) - midnight)
    last_day = (end - timedelta(microseconds=1)).astimezone(zone).date()
    days = list(daily)
    # Days before the subject's first spend are not zero spend, just no history.
    while len(days) > 1 and days[0] == 0:
        days.pop(0)
    return forecast_period(days, today, min(max(elapsed, 0.0), 1.0), last_day, amount, spent, now)


def spent_this_period(daily: list[int], first: date, period: str, timezone: str, now: datetime) -> int:
    """What ``daily`` (from the local day ``first``) spent in the ``period`` containing ``now``."""
    start, _ = period_bounds(period, now, timezone)  # type: ignore[arg-type]
    return sum(daily[max((start.astimezone(ZoneInfo(timezone)).date() - first).days, 0) :])


def _counted_spent(status: BudgetStatus) -> int:
    """What a budget has spent: this agent's, or for a fleet-wide one the fleet's where larger."""
    fleet = status.fleet.fleet_spent_micro_usd if status.fleet is not None else None
    return max(status.spent_micro_usd, fleet or 0)


def _copy(totals: _Totals, others_spent: int = 0) -> _Totals:
    """A snapshot for an alert or a refusal; ``others_spent``: the other hosts' spend of a
    fleet-wide budget, added so that the alert tells the fleet's spend."""
    return replace(totals, spent=totals.spent + others_spent)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _describe_rate(rule: RateRule) -> str:
    parts = []
    if rule.requests_per_minute:
        parts.append(f"{rule.requests_per_minute} requests/min")
    if rule.tokens_per_minute:
        parts.append(f"{rule.tokens_per_minute} tokens/min")
    return ", ".join(parts)


def _iso(moment: datetime) -> str:
    """The ledger's timestamp format (UTC, microseconds), so strings compare as times."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
