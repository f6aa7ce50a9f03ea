"""GPU minutes charged to the users whose requests ran, other processes' owners, and idle."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from agent.gpu.attribution import Activity, ActivityLog, _split, attribute

MINUTE = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
T0 = MINUTE.timestamp()


def test_busy_time_goes_to_the_users_whose_requests_computed() -> None:
    activities = [
        Activity("alice", "sales", T0 + 0, T0 + 20),  # 20 s
        Activity("bob", "hr", T0 + 30, T0 + 40),  # 10 s
        Activity("alice", "sales", T0 - 30, T0 + 5),  # 5 s inside this minute
    ]
    charges = attribute(MINUTE, 35, 25, 0, 3_500, 2_500, activities, [], "lab")
    by = {(c.kind, c.subject): c for c in charges}
    assert by[("user", "alice")].seconds == 25 and by[("user", "alice")].cost_micro_usd == 2_500
    assert by[("user", "bob")].seconds == 10 and by[("user", "bob")].cost_micro_usd == 1_000
    assert by[("idle", "idle")].department == "lab" and by[("idle", "idle")].cost_micro_usd == 2_500
    assert sum(c.cost_micro_usd or 0 for c in charges) == 6_000


def test_requests_longer_than_the_busy_time_share_it_in_proportion() -> None:
    activities = [Activity("alice", "sales", T0, T0 + 60), Activity("bob", "hr", T0, T0 + 30)]
    charges = attribute(MINUTE, 30, 30, 0, 3_000, 3_000, activities, [], "lab")
    users = {c.subject: c for c in charges if c.kind == "user"}
    assert users["alice"].seconds == 20 and users["bob"].seconds == 10
    assert users["alice"].cost_micro_usd == 2_000 and users["bob"].cost_micro_usd == 1_000


def test_other_processes_owners_pay_the_rest_and_unknown_busy_time_is_other() -> None:
    with_owners = attribute(MINUTE, 60, 0, 0, 6_000, 0, [], ["carol", "dave"], "lab")
    assert [(c.kind, c.subject, c.cost_micro_usd) for c in with_owners] == [
        ("os_user", "carol", 3_000),
        ("os_user", "dave", 3_000),
    ]
    nobody = attribute(MINUTE, 60, 0, 0, 6_000, 0, [], [], "lab")
    assert [(c.kind, c.subject, c.department) for c in nobody] == [("other", "other", "lab")]


def test_gaps_are_charged_to_idle_and_unknown_prices_stay_unknown() -> None:
    charges = attribute(MINUTE, 10, 20, 30, None, None, [Activity("alice", "sales", T0, T0 + 10)], [], "lab")
    assert [(c.kind, c.seconds, c.cost_micro_usd) for c in charges] == [("user", 10, None), ("idle", 50, None)]


@given(st.integers(0, 10**9), st.lists(st.floats(0, 1000), min_size=1, max_size=20))
def test_a_split_always_adds_up_exactly(total: int, weights: list[float]) -> None:
    parts = _split(total, weights)
    assert sum(p or 0 for p in parts) == total
    assert all(p is not None and p >= 0 for p in parts)


def test_the_activity_log_forgets_what_can_no_longer_matter() -> None:
    log = ActivityLog()
    log.add(Activity("alice", "sales", T0, T0 + 1))
    log.add(Activity("bob", "hr", T0 + 2000, T0 + 2001))
    assert [a.user for a in log.during(T0 - 10, T0 + 3000)] == ["bob"]
    assert log.during(T0 + 2001, T0 + 2100) == []
