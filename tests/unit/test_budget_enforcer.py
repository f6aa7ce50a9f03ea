"""Budget reservations and settlement against a real ledger and a real parsed policy."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.budgets.enforcer import BudgetEnforcer, Quote
from agent.errors import BudgetExceeded, PermissionDenied, RateLimited
from agent.identity import Caller
from agent.ledger.database import Database
from agent.ledger.events import EventLog
from agent.ledger.requests import RequestLog, RequestRecord
from agent.ledger.users import UserStore
from agent.policy.model import Policy, parse_policy

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POLICY = b"""
version = 3
organisation = "Test"
timezone = "Europe/Berlin"
default_department = "general"

[users]
alice = "sales"

[departments.sales]
allowed_models = ["local", "cheap-model"]

[[budgets]]
name = "user-daily"
scope = "user"
match = "*"
period = "day"
amount_usd = "0.010000"
action = "block"
alerts = [50, 100]

[[budgets]]
name = "sales-monthly"
scope = "department"
match = "sales"
period = "month"
amount_usd = "1"
action = "downgrade"

[[rate_limits]]
scope = "user"
match = "*"
requests_per_minute = 3
"""


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database.open(tmp_path / "ledger.db")
    UserStore(database).add("alice", "engineering", "user", "hash-a")
    return database


@pytest.fixture
def policy() -> Policy:
    return parse_policy(POLICY)


@pytest.fixture
def clock() -> list[datetime]:
    return [NOW]


@pytest.fixture
def enforcer(db: Database, policy: Policy, clock: list[datetime]) -> BudgetEnforcer:
    return BudgetEnforcer(db, lambda: policy, EventLog(db), now=lambda: clock[0])


ALICE = Caller(user_id=1, user="alice", department="engineering", is_admin=False)


def row(n: int, ts: datetime, cost: int, user: str = "alice", department: str = "sales") -> RequestRecord:
    return RequestRecord(
        id=f"req-{n}",
        ts=ts.isoformat(timespec="microseconds"),
        user_id=1,
        user_name=user,
        department=department,
        feature="chat",
        requested_model="cheap-model",
        model="cheap-model",
        provider="scripted",
        route="cloud",
        reason="",
        input_tokens=1,
        output_tokens=1,
        tokens_estimated=False,
        cost_micro_usd=cost,
        price_source="override",
        cost_saved_micro_usd=0,
        cache_hit=False,
        latency_ms=1,
        status="ok",
        error_type="",
        stream=False,
        attempts=1,
    )


def test_the_policy_names_the_callers_department(enforcer: BudgetEnforcer) -> None:
    assert enforcer.effective_caller(ALICE).department == "sales"
    provisioned = dataclasses.replace(ALICE, user="zed", department="default")  # an OS user, first seen
    assert enforcer.effective_caller(provisioned).department == "general"  # the policy's default
    added = dataclasses.replace(ALICE, user="yan", department="it")  # placed by IT with `users add`
    assert enforcer.effective_caller(added).department == "it"


def test_without_a_policy_nothing_is_charged_or_limited(db: Database) -> None:
    free = BudgetEnforcer(db, lambda: None, EventLog(db), now=lambda: NOW)
    assert free.charges(ALICE, "chat") == ()
    reservation = free.reserve(ALICE, "chat", "r1", 10**12)
    assert reservation.charges == ()
    for _ in range(100):
        free.admit(ALICE, 10)


def test_a_reservation_past_a_hard_budget_is_refused_with_its_details(enforcer: BudgetEnforcer) -> None:
    caller = enforcer.effective_caller(ALICE)
    enforcer.reserve(caller, "chat", "r1", 6_000)
    with pytest.raises(BudgetExceeded) as refused:
        enforcer.reserve(caller, "chat", "r2", 5_000)  # 6,000 held + 5,000 > 10,000
    error = refused.value
    assert error.code == "block"
    assert error.budget["name"] == "user-daily" and error.budget["reserved_usd"] == "0.006000"
    assert error.budget["resets_at"] == "2026-11-28T23:00:00.000000+00:00"  # midnight in Berlin
    assert "resets at" in error.message


def test_settling_releases_the_hold_and_counts_the_real_cost(enforcer: BudgetEnforcer) -> None:
    caller = enforcer.effective_caller(ALICE)
    held = enforcer.reserve(caller, "chat", "r1", 6_000)
    enforcer.settle(held, caller, "chat", NOW, 1_000)
    [daily, monthly] = enforcer.statuses(caller, "chat")
    assert (daily.spent_micro_usd, daily.reserved_micro_usd, daily.remaining_micro_usd) == (1_000, 0, 9_000)
    assert (monthly.name, monthly.spent_micro_usd) == ("sales-monthly", 1_000)
    enforcer.settle(held, caller, "chat", NOW, 1_000)  # settling twice changes nothing
    assert enforcer.statuses(caller, "chat")[0].spent_micro_usd == 1_000


def test_spend_already_in_the_ledger_counts_within_the_period_only(db: Database, enforcer: BudgetEnforcer) -> None:
    log = RequestLog(db)
    log.record(row(1, NOW - timedelta(hours=2), 4_000))  # today
    log.record(row(2, NOW - timedelta(days=1), 9_000))  # yesterday: another period
    caller = enforcer.effective_caller(ALICE)
    [daily, monthly] = enforcer.statuses(caller, "chat")
    assert daily.spent_micro_usd == 4_000
    assert monthly.spent_micro_usd == 13_000
    with pytest.raises(BudgetExceeded):
        enforcer.reserve(caller, "chat", "r1", 6_001)


def test_a_new_period_starts_from_zero(enforcer: BudgetEnforcer, clock: list[datetime]) -> None:
    caller = enforcer.effective_caller(ALICE)
    enforcer.settle(enforcer.reserve(caller, "chat", "r1", 9_000), caller, "chat", NOW, 9_000)
    with pytest.raises(BudgetExceeded):
        enforcer.reserve(caller, "chat", "r2", 2_000)
    clock[0] = NOW + timedelta(hours=11)  # 00:00 in Berlin on the next day
    assert enforcer.reserve(caller, "chat", "r3", 9_000).amount == 9_000


def test_alerts_fire_once_per_threshold_and_period(db: Database, enforcer: BudgetEnforcer) -> None:
    caller = enforcer.effective_caller(ALICE)
    for n, cost in enumerate((3_000, 3_000, 1_000, 4_000)):  # 30%, 60% (>=50), 70%, 110% (>=100)
        enforcer.settle(enforcer.reserve(caller, "chat", f"r{n}", 0), caller, "chat", NOW, cost)
    events = EventLog(db).since(0, user_id=1, department="sales")
    alerts = [(e.body["budget"], e.body["threshold_percent"]) for e in events if e.kind == "budget_alert"]
    assert alerts == [("user-daily", 50), ("user-daily", 100)]
    assert all(e.user_id == 1 for e in events)  # a user budget's alert goes to that user
    assert EventLog(db).since(0, user_id=2, department="hr") == []  # and to nobody else


def test_concurrent_reservations_never_pass_the_budget(enforcer: BudgetEnforcer) -> None:
    caller = enforcer.effective_caller(ALICE)
    admitted: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(20):
            try:
                held = enforcer.reserve(caller, "chat", f"r{n}-{i}", 300)
            except BudgetExceeded:
                continue
            enforcer.settle(held, caller, "chat", NOW, 250)  # the real cost is below the worst case
            with lock:
                admitted.append(250)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    daily = enforcer.statuses(caller, "chat")[0]
    assert daily.spent_micro_usd == sum(admitted) <= 10_000
    assert daily.reserved_micro_usd == 0
    assert sum(admitted) > 10_000 - 300  # it stopped only when the next worst case did not fit


def test_release_gives_the_hold_back_without_spending(enforcer: BudgetEnforcer) -> None:
    caller = enforcer.effective_caller(ALICE)
    held = enforcer.reserve(caller, "chat", "r1", 9_000)
    enforcer.release(held)
    enforcer.release(held)  # twice is harmless
    [daily, _] = enforcer.statuses(caller, "chat")
    assert (daily.spent_micro_usd, daily.reserved_micro_usd) == (0, 0)


def test_the_used_share_feeds_the_router(enforcer: BudgetEnforcer) -> None:
    caller = enforcer.effective_caller(ALICE)
    assert enforcer.used_fraction(caller, "chat") == 0.0
    enforcer.reserve(caller, "chat", "r1", 8_500)
    assert enforcer.used_fraction(caller, "chat") == pytest.approx(0.85)


def test_models_outside_the_departments_allow_list_are_refused(enforcer: BudgetEnforcer) -> None:
    caller = enforcer.effective_caller(ALICE)
    enforcer.check_model(caller, "cheap-model")
    with pytest.raises(PermissionDenied, match="not allowed"):
        enforcer.check_model(caller, "strong-model")


def test_rate_limits_refuse_with_the_wait(enforcer: BudgetEnforcer) -> None:
    caller = enforcer.effective_caller(ALICE)
    for _ in range(3):
        enforcer.admit(caller, 10)
    with pytest.raises(RateLimited) as limited:
        enforcer.admit(caller, 10)
    assert 0 < limited.value.retry_after_s <= 60
    assert "3 requests/min" in limited.value.message


# -- waiting for holds, capped grants, holds that were too small ------------------------------


def test_a_request_kept_out_by_holds_in_flight_waits_for_them_and_then_gets_in(enforcer: BudgetEnforcer) -> None:
    first = enforcer.reserve(ALICE, "chat", "r1", 8_000)  # of 10,000 micro-USD

    async def scenario() -> tuple[float, int]:
        waiting = asyncio.create_task(enforcer.reserve_waiting(ALICE, "chat", "r2", lambda: Quote(8_000), wait_s=10))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # 8,000 more does not fit while r1 holds
        enforcer.settle(first, ALICE, "chat", NOW, 1_000)  # r1 cost far less than its hold
        second = await waiting
        return second.waited_s, second.amount

    waited, amount = asyncio.run(scenario())
    assert waited >= 0.2 and amount == 8_000


def test_a_wait_that_runs_out_is_refused_saying_the_holds_caused_it(enforcer: BudgetEnforcer) -> None:
    enforcer.reserve(ALICE, "chat", "r1", 8_000)
    with pytest.raises(BudgetExceeded) as refused:
        asyncio.run(enforcer.reserve_waiting(ALICE, "chat", "r2", lambda: Quote(8_000), wait_s=0.2))
    assert refused.value.budget["cause"] == "in_flight" and refused.value.budget["in_flight"] == 1
    assert "did not settle within 0.2 s" in refused.value.message


def test_with_nothing_in_flight_what_is_left_is_granted_when_it_pays_for_a_short_answer(
    enforcer: BudgetEnforcer,
) -> None:
    enforcer.settle(None, ALICE, "chat", NOW, 7_000)
    capped = enforcer.reserve(ALICE, "chat", "r1", 8_000, floor_micro_usd=2_000)
    assert capped.amount == 3_000 and capped.capped
    enforcer.release(capped)
    with pytest.raises(BudgetExceeded) as refused:  # left: 3,000, the least worth answering: 4,000
        enforcer.reserve(ALICE, "chat", "r2", 8_000, floor_micro_usd=4_000)
    assert refused.value.budget["cause"] == "spent"


def test_an_uncalibrated_model_holds_one_call_at_a_time(enforcer: BudgetEnforcer) -> None:
    first = enforcer.reserve(ALICE, "chat", "r1", 100, exclusive=True)
    with pytest.raises(BudgetExceeded):  # room for 99 more, but r1's model has no ratio yet
        enforcer.reserve(ALICE, "chat", "r2", 100, exclusive=True)
    enforcer.settle(first, ALICE, "chat", NOW, 100)
    assert enforcer.reserve(ALICE, "chat", "r2", 100, exclusive=True).amount == 100


def test_a_call_settling_above_its_hold_closes_the_budget_until_the_others_settle_and_reports_the_overrun(
    enforcer: BudgetEnforcer, db: Database
) -> None:
    small = [enforcer.reserve(ALICE, "chat", f"r{i}", 1_000) for i in range(3)]
    enforcer.settle(small[0], ALICE, "chat", NOW, 6_000)  # the provider counted 6x our estimate
    with pytest.raises(BudgetExceeded) as closed:  # 1,000 would fit, but the holds are suspect now
        enforcer.reserve(ALICE, "chat", "r9", 100)
    assert closed.value.budget["cause"] == "in_flight"
    enforcer.settle(small[1], ALICE, "chat", NOW, 6_000)  # 12,000 of 10,000: over
    enforcer.settle(small[2], ALICE, "chat", NOW, 500)
    events = db.query("SELECT kind, body FROM events WHERE kind = 'budget_overrun'")
    assert [json.loads(e["body"])["overrun_usd"] for e in events] == ["0.002000"]  # once, at the first overrun
    with pytest.raises(BudgetExceeded) as spent:
        enforcer.reserve(ALICE, "chat", "r10", 1)
    assert spent.value.budget["cause"] == "spent"
