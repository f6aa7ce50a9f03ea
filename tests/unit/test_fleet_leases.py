"""Allotments of fleet-wide budgets on a share folder: the sum of the hosts' allotments never
passes the budget, idle hosts give back, a dead host's lock is broken, a bad file refuses."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest

from agent.budgets.enforcer import BudgetEnforcer, Quote
from agent.budgets.fleet import FleetBudgets
from agent.errors import BudgetExceeded
from agent.fleet.leases import STALE_LOCK_S, LeaseBook, LeaseBusy, LeaseKey
from agent.identity import Caller
from agent.ledger.database import Database
from agent.ledger.events import EventLog
from agent.ledger.requests import RequestLog
from agent.ledger.users import UserStore
from agent.policy.model import parse_policy
from tests.support.ledger_rows import request_row
from tests.support.policies import department_budget

KEY = LeaseKey("eng-monthly", "department", "eng", "month", "2026-12", 1_000_000)
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
POLICY = parse_policy(department_budget("0.100000"))
BUDGET_MICRO_USD = 100_000


def host(n: int) -> str:
    return f"{n:032x}"


def lease_file(share: Path, key: LeaseKey = KEY) -> dict[str, object]:
    data = json.loads((share / "fleet" / "_leases" / key.period_key / f"{key.slug}.json").read_text())
    assert isinstance(data, dict)
    return data


def test_concurrent_claims_of_many_hosts_never_allot_more_than_the_budget(tmp_path: Path) -> None:
    books = [LeaseBook(tmp_path, host(n)) for n in range(6)]
    granted: dict[str, int] = {}
    rng = random.Random(7)
    needs = {b.host_id: [rng.randint(1_000, 30_000) for _ in range(15)] for b in books}

    def claim_all(book: LeaseBook) -> None:
        for need in needs[book.host_id]:
            granted[book.host_id] = book.claim(KEY, spent=0, need=need, chunk=20_000).allotted

    threads = [threading.Thread(target=claim_all, args=(b,)) for b in books]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hosts = lease_file(tmp_path)["hosts"]
    assert isinstance(hosts, dict)
    allotted = {h: entry["allotted"] for h, entry in hosts.items()}
    assert allotted == {h: a for h, a in granted.items() if a}  # a host granted nothing wrote nothing
    assert len(allotted) >= 3
    assert sum(allotted.values()) == KEY.amount_micro_usd  # all of it handed out, not a cent more
    assert not list((tmp_path / "fleet" / "_leases").rglob("*.lock"))


def test_a_claim_grants_what_is_left_and_an_idle_host_gives_back(tmp_path: Path) -> None:
    a, b = LeaseBook(tmp_path, host(1)), LeaseBook(tmp_path, host(2))
    assert a.claim(KEY, spent=0, need=100, chunk=900_000).allotted == 500_000  # at most half of what is free
    assert a.claim(KEY, spent=0, need=100, chunk=900_000).allotted == 750_000
    lease = b.claim(KEY, spent=0, need=400_000, chunk=0)
    assert lease.allotted == 250_000 and lease.free == 0 and lease.others_allotted == 750_000  # less than asked
    assert b.claim(KEY, spent=0, need=1, chunk=1).allotted == 250_000  # nothing free
    back = a.give_back(KEY, spent=300_000, keep=300_000)
    assert back.allotted == 300_000
    assert b.claim(KEY, spent=0, need=450_000, chunk=0).allotted == 700_000
    # an allotment never falls below what the host spent (local answers are never blocked)
    assert a.give_back(KEY, spent=320_000, keep=0).allotted == 320_000
    assert b.read(KEY).others_spent == 320_000 and b.read(KEY).hosts == 2


def test_a_lock_left_by_a_dead_host_is_broken_and_a_live_one_waited_for(tmp_path: Path) -> None:
    book = LeaseBook(tmp_path, host(1), lock_timeout_s=0.3)
    lock = tmp_path / "fleet" / "_leases" / KEY.period_key / f"{KEY.slug}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("another host\n")
    with pytest.raises(LeaseBusy):
        book.claim(KEY, spent=0, need=10, chunk=10)
    old = time.time() - STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    assert book.claim(KEY, spent=0, need=10, chunk=10).allotted == 10
    assert not lock.exists()


def test_a_corrupt_lease_file_refuses_claims_instead_of_guessing(tmp_path: Path) -> None:
    book = LeaseBook(tmp_path, host(1))
    book.claim(KEY, spent=0, need=10, chunk=10)
    path = tmp_path / "fleet" / "_leases" / KEY.period_key / f"{KEY.slug}.json"
    path.write_text('{"hosts": {"x"')
    with pytest.raises(OSError, match="not valid JSON"):
        book.claim(KEY, spent=0, need=10, chunk=10)
    path.write_text('{"schema": 99, "hosts": {}}')
    with pytest.raises(OSError, match="not one this agent can read"):
        book.claim(KEY, spent=0, need=10, chunk=10)


class Host:
    """One agent's enforcer with its own ledger, on the shared folder."""

    def __init__(
        self, root: Path, share: Path, n: int, *, chunk: Fraction = Fraction(1, 10), idle_s: float = 0
    ) -> None:
        self.db = Database.open(root / f"ledger-{n}.db")
        self.user_id = UserStore(self.db).add(f"user{n}", "eng", "user", f"hash-{n}")
        self.requests = RequestLog(self.db)
        self.fleet = FleetBudgets(LeaseBook(share, host(n)), chunk=chunk, idle_s=idle_s)
        self.enforcer = BudgetEnforcer(self.db, lambda: POLICY, EventLog(self.db), now=lambda: NOW, fleet=self.fleet)
        self.caller = Caller(self.user_id, f"user{n}", "eng", False)
        self.n = n
        self.answered = 0

    async def ask(self, i: int, worst: int, cost: int) -> bool:
        request_id = f"h{self.n}-{i}"
        try:
            reservation = await self.enforcer.reserve_waiting(
                self.caller, "", request_id, lambda: Quote(worst), wait_s=0.5
            )
        except BudgetExceeded:
            return False
        await asyncio.sleep(random.uniform(0, 0.01))
        row = request_row(request_id, self.user_id, self.caller.user, "eng", NOW, cost)
        self.requests.record(row)
        self.enforcer.settle(reservation, self.caller, "", NOW, cost)
        self.answered += 1
        return True

    def spent(self) -> int:
        return int(self.db.query("SELECT coalesce(sum(cost_micro_usd), 0) AS s FROM requests")[0]["s"])


def test_three_enforcers_on_one_share_never_spend_past_the_department_budget(tmp_path: Path) -> None:
    share = tmp_path / "share"
    hosts = [Host(tmp_path, share, n) for n in range(3)]

    async def load() -> None:
        await asyncio.gather(*(h.ask(i, worst=3_000, cost=2_500) for i in range(60) for h in hosts))

    asyncio.run(load())
    spent = sum(h.spent() for h in hosts)
    assert spent <= BUDGET_MICRO_USD
    assert spent >= BUDGET_MICRO_USD - 3 * 3_000  # each host ends short of its allotment by less than a request
    assert all(h.answered > 0 for h in hosts)
    allotted = [entry["allotted"] for entry in lease_file(share, key_of(hosts[0]))["hosts"].values()]  # type: ignore[union-attr]
    assert sum(allotted) <= BUDGET_MICRO_USD


def key_of(h: Host) -> LeaseKey:
    [charge] = h.enforcer.charges(h.caller, "")
    return LeaseKey("eng-monthly", "department", "eng", "month", charge.period_key, BUDGET_MICRO_USD)


def test_an_idle_host_gives_back_its_unspent_allotment_to_a_busy_one(tmp_path: Path) -> None:
    share = tmp_path / "share"
    idle, busy = Host(tmp_path, share, 1, chunk=Fraction(1, 2)), Host(tmp_path, share, 2, chunk=Fraction(1, 2))
    assert asyncio.run(idle.ask(0, worst=1_000, cost=1_000))
    assert idle.fleet.limit(idle.enforcer.charges(idle.caller, "")[0]) == 50_000  # half the budget: its chunk

    async def drain(h: Host, start: int) -> int:
        return sum([await h.ask(i, worst=1_000, cost=1_000) for i in range(start, start + 120)])

    first = asyncio.run(drain(busy, 0))
    assert first == 50  # the other half is the idle host's
    idle.enforcer.refresh_fleet()  # idle for allotment_idle_s (0 here): gives back all but its 1,000
    second = asyncio.run(drain(busy, 1_000))
    assert second == 49
    assert idle.spent() + busy.spent() == BUDGET_MICRO_USD


def test_with_the_share_gone_an_agent_spends_within_its_last_allotment_and_says_so(tmp_path: Path) -> None:
    share = tmp_path / "share"
    h = Host(tmp_path, share, 1)
    assert asyncio.run(h.ask(0, worst=1_000, cost=1_000))
    [charge] = h.enforcer.charges(h.caller, "")
    allotment = h.fleet.limit(charge)
    assert allotment == 10_000
    (share / "fleet").rename(tmp_path / "moved")  # the share is gone: no folder to lock in
    (share / "fleet").write_text("not a folder")
    answered = sum(asyncio.run(h.ask(i, worst=1_000, cost=1_000)) for i in range(1, 40))
    assert answered == 9 and h.spent() == allotment
    with pytest.raises(BudgetExceeded) as refused:
        asyncio.run(h.enforcer.reserve_waiting(h.caller, "", "late", lambda: Quote(1_000), wait_s=0))
    assert "spending within the allotments last claimed" in str(refused.value)
    [status] = h.enforcer.statuses(h.caller)
    assert status.fleet is not None and "cannot be used" in status.fleet.problem
    assert status.fleet.allotted_micro_usd == allotment


def test_the_refresh_reads_the_other_hosts_spend_for_reports(tmp_path: Path) -> None:
    share = tmp_path / "share"
    a, b = Host(tmp_path, share, 1, idle_s=3600), Host(tmp_path, share, 2)  # a stays busy: it only reads
    assert asyncio.run(a.ask(0, worst=1_000, cost=1_000))
    for i in range(5):
        assert asyncio.run(b.ask(i, worst=1_000, cost=1_000))
    b.enforcer.refresh_fleet()  # b records its 5,000 (idle_s = 0: and gives back the rest)
    [before] = a.enforcer.statuses(a.caller)
    assert before.fleet is not None and before.fleet.fleet_spent_micro_usd == 1_000  # as of a's claim
    a.enforcer.refresh_fleet()
    [after] = a.enforcer.statuses(a.caller)
    assert after.fleet is not None and after.fleet.fleet_spent_micro_usd == 6_000 and after.fleet.hosts == 2
    assert after.remaining_micro_usd == BUDGET_MICRO_USD - 6_000
