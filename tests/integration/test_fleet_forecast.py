"""Fleet-wide budgets are forecast on the fleet's spend: three hosts publish three weeks of their
department's spend to a share, and one host's enforcer projects the department budget from all of
it (its own rows from its ledger, published or not; the others' from the Parquet on the share).

Real ledgers (SQLite), real Parquet written by the real publisher, real DuckDB over the share,
real lease files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.budgets.enforcer import BudgetEnforcer, BudgetStatus
from agent.budgets.fleet import FleetBudgets, FleetHistory
from agent.fleet.catalog import scan
from agent.fleet.files import host_id
from agent.fleet.leases import LeaseBook
from agent.fleet.publisher import FleetPublisher
from agent.fleet.report import daily_spend
from agent.ledger.database import Database
from agent.ledger.events import EventLog
from agent.ledger.requests import RequestLog
from agent.ledger.users import UserStore
from agent.money import format_usd
from agent.policy.model import parse_policy
from tests.support.ledger_rows import request_row

NOW = datetime(2026, 11, 12, 12, 0, tzinfo=UTC)  # a Thursday, 11.5 days into November
ZONE = ZoneInfo("Europe/Berlin")
HISTORY_DAYS = 21
ENG_BUDGET_MICRO_USD = 60_000_000  # each host alone is on course for about 30 USD; the three, 90
POLICY_TEXT = f"""
version = 1
organisation = "Test"
timezone = "Europe/Berlin"
default_department = "eng"

[[budgets]]
name = "eng-monthly"
scope = "department"
match = "eng"
period = "month"
amount_usd = "{ENG_BUDGET_MICRO_USD / 1_000_000:.6f}"
action = "block"

[[budgets]]
name = "org-monthly"
scope = "organisation"
match = "*"
period = "month"
amount_usd = "1000"
action = "block"

[[budgets]]
name = "dept-weekly"
scope = "department"
match = "*"
period = "week"
amount_usd = "1000"
action = "block"
""".encode()
POLICY = parse_policy(POLICY_TEXT)


def cost_of(day: int) -> int:
    """One request's cost on ``day`` days before today: every host spends alike, not every day alike."""
    return 400_000 + (day * 37_000) % 200_000


@dataclasses.dataclass
class Box:
    name: str
    db: Database
    publisher: FleetPublisher
    user_id: int
    now: datetime
    rows: int = 0

    def spend(self, department: str, day: int, hour: int, cost: int) -> None:
        self.rows += 1
        when = (self.now - timedelta(days=day)).replace(hour=hour if day else min(hour, self.now.hour))
        row = request_row(f"{self.name}-{self.rows}", self.user_id, f"{self.name}-ann", department, when, cost)
        RequestLog(self.db).record(row)


def make_box(root: Path, share: Path, name: str, now: datetime) -> Box:
    data = root / name
    data.mkdir(parents=True)
    db = Database.open(data / "ledger.db")
    user_id = UserStore(db).add(f"{name}-ann", "eng", "user", f"hash-{name}")
    return Box(name, db, FleetPublisher(db, share, host_id(data), hostname=name), user_id, now)


@pytest.fixture
def fleet(tmp_path: Path) -> list[Box]:
    return build_fleet(tmp_path, NOW)


def build_fleet(root: Path, now: datetime) -> list[Box]:
    """Three hosts, each with the same three weeks of "eng" spend (two requests a day) and this
    morning's request; the two others also spend for "sales". All published but this morning's
    request of the first host."""
    share = root / "share"
    boxes = [make_box(root, share, f"host-{n}", now) for n in range(3)]
    for n, box in enumerate(boxes):
        for day in range(1, HISTORY_DAYS + 1):
            box.spend("eng", day, 9, cost_of(day))
            box.spend("eng", day, 15, cost_of(day))
            if n:
                box.spend("sales", day, 10, 250_000)
        if n:
            box.spend("eng", 0, 9, cost_of(0))
            box.spend("sales", 0, 10, 250_000)
        box.publisher.publish_once()
    boxes[0].spend("eng", 0, 9, cost_of(0))  # this morning, not published yet
    return boxes


def enforcer_of(box: Box, fleet: FleetBudgets | None = None) -> BudgetEnforcer:
    return BudgetEnforcer(box.db, lambda: POLICY, EventLog(box.db), now=lambda: NOW, fleet=fleet)


def status_of(enforcer: BudgetEnforcer, name: str) -> BudgetStatus:
    [status] = [s for s in enforcer.all_statuses() if s.name == name]
    return status


def events(box: Box) -> list[dict[str, object]]:
    return [e.body for e in EventLog(box.db).since(0, user_id=None, department=None) if e.kind == "budget_forecast"]


def test_a_department_budget_is_forecast_on_the_whole_fleets_spend(tmp_path: Path, fleet: list[Box]) -> None:
    share, me = tmp_path / "share", fleet[0]
    alone = enforcer_of(me)  # the same ledger, no fleet: what this box alone is on course for
    local = alone.forecast(status_of(alone, "eng-monthly"))
    assert local.forecast_micro_usd is not None and local.low_micro_usd is not None
    assert local.low_micro_usd < ENG_BUDGET_MICRO_USD  # this box alone would not break the budget
    assert alone.check_forecasts() == 0

    clock = [0.0]
    history = FleetHistory(share, me.publisher.host_id, clock=lambda: clock[0])
    enforcer = enforcer_of(me, FleetBudgets(LeaseBook(share, me.publisher.host_id), history=history))
    eng = status_of(enforcer, "eng-monthly")
    assert eng.fleet is not None and eng.spent_micro_usd == me_spent_this_month(me)
    f = enforcer.forecast(eng)
    assert f.forecast_micro_usd is not None and f.low_micro_usd is not None and f.high_micro_usd is not None
    # Three hosts spending alike: three times this box's forecast (the model scales with the series).
    assert abs(f.forecast_micro_usd - 3 * local.forecast_micro_usd) <= 3
    assert f.low_micro_usd >= ENG_BUDGET_MICRO_USD

    # The scheduler's check raises budget_forecast for the fleet's budget, from the fleet's spend,
    # with one read of the share for every budget it forecasts (the organisation's too).
    assert enforcer.check_forecasts() == 1 and history.reads == 1
    [event] = events(me)
    assert (event["budget"], event["subject"], event["history"]) == ("eng-monthly", "eng", "fleet")
    assert event["spent_usd"] == format_usd(3 * me_spent_this_month(me))  # this morning's unpublished row counts
    assert enforcer.check_forecasts() == 0 and history.reads == 1  # once per period; the share's read is kept

    # The organisation's budget counts every department of every host: eng, and the others' sales.
    org = enforcer.forecast(status_of(enforcer, "org-monthly"))
    assert org.forecast_micro_usd is not None
    sales_a_day = 2 * 250_000
    local_org = alone.forecast(status_of(alone, "org-monthly"))
    assert local_org.forecast_micro_usd == local.forecast_micro_usd  # this box spends for eng only
    assert org.forecast_micro_usd > f.forecast_micro_usd + 25 * sales_a_day

    # Publishing this box's rows changes nothing: its rows on the share are not counted twice.
    me.publisher.publish_once()
    clock[0] += 301  # past the history's age: the share is read again
    assert enforcer.forecast(eng) == f and history.reads == 2


def test_with_the_share_unreadable_the_forecast_falls_back_to_this_agents_ledger(
    tmp_path: Path, fleet: list[Box], caplog: pytest.LogCaptureFixture
) -> None:
    share, me = tmp_path / "share", fleet[0]
    alone = enforcer_of(me)
    local = alone.forecast(status_of(alone, "eng-monthly"))
    share.rename(tmp_path / "moved")  # the share is gone (unmounted, unreachable)
    history = FleetHistory(share, me.publisher.host_id)
    enforcer = enforcer_of(me, FleetBudgets(LeaseBook(share, me.publisher.host_id), history=history))
    with caplog.at_level(logging.WARNING, logger="agent.budgets.fleet"):
        assert enforcer.forecast(status_of(enforcer, "eng-monthly")) == local
        assert enforcer.check_forecasts() == 0  # this box alone is not on course to break it
    assert history.reads == 1  # a failed read is not retried for every budget of the check
    assert "forecasting from this agent's ledger only" in caplog.text


def test_daily_spend_reads_a_departments_days_from_the_share(tmp_path: Path, fleet: list[Box]) -> None:
    catalog = scan(tmp_path / "share")
    today = NOW.astimezone(ZONE).date()
    first = today - timedelta(days=HISTORY_DAYS)
    eng = daily_spend(catalog, "eng", first, today, ZONE)
    # Published: every host's three weeks, and this morning's of the two others.
    assert eng == [3 * 2 * cost_of(HISTORY_DAYS - i) for i in range(HISTORY_DAYS)] + [2 * cost_of(0)]
    others = daily_spend(catalog, "eng", first, today, ZONE, exclude_host=fleet[1].publisher.host_id)
    one_host = [2 * cost_of(HISTORY_DAYS - i) for i in range(HISTORY_DAYS)]
    assert [a - b for a, b in zip(eng, others, strict=True)][:-1] == one_host
    everyone = daily_spend(catalog, None, first, today, ZONE)
    assert sum(everyone) - sum(eng) == 2 * (HISTORY_DAYS + 1) * 250_000
    assert daily_spend(catalog, "nobody", first, today, ZONE) == [0] * (HISTORY_DAYS + 1)
    assert daily_spend(catalog, "eng", date(2026, 11, 20), date(2026, 11, 21), ZONE) == [0, 0]


def me_spent_this_month(box: Box) -> int:
    since = datetime(2026, 11, 1, tzinfo=ZONE).astimezone(UTC).isoformat(timespec="microseconds")
    rows = box.db.query("SELECT sum(cost_micro_usd) AS s FROM requests WHERE department = 'eng' AND ts >= ?", (since,))
    return int(rows[0]["s"])


def test_aifinops_fleet_budgets_forecasts_each_fleet_budget_from_the_published_rows(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    boxes = build_fleet(tmp_path, now)
    policy = tmp_path / "policy.toml"
    policy.write_bytes(POLICY_TEXT)
    env = {**os.environ, "AIFINOPS_HOME": str(tmp_path / "admin"), "COLUMNS": "200"}
    command = [
        sys.executable,
        "-m",
        "agent",
        "fleet",
        "budgets",
        "--policy",
        str(policy),
        "--share",
        str(tmp_path / "share"),
    ]
    shown = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["hosts"] == 3 and body["skipped_hosts"] == []
    budgets = {(b["name"], b["subject"]): b for b in body["budgets"]}
    assert sorted(budgets) == [("dept-weekly", "eng"), ("dept-weekly", "sales"), ("eng-monthly", "eng"),
                               ("org-monthly", "*")]  # fmt: skip
    # What every host published this month: all but the first host's row of this morning.
    local = now.astimezone(ZONE)
    month = datetime(local.year, local.month, 1, tzinfo=ZONE).astimezone(UTC).isoformat(timespec="microseconds")
    unpublished = f"{boxes[0].name}-{boxes[0].rows}"
    published = sum(eng_spent_since(box, month, unpublished) for box in boxes)
    eng = budgets[("eng-monthly", "eng")]
    assert eng["spent_usd"] == format_usd(published) and eng["amount_usd"] == "60.000000"
    assert eng["forecast_note"] == ""
    low, mid, high = (int(eng[k].replace(".", "")) for k in ("forecast_low_usd", "forecast_usd", "forecast_high_usd"))
    assert published <= low <= mid <= high
    # The fleet spends about 3 USD a day for eng: about 90 USD a month, past the 60 of the budget.
    assert mid > ENG_BUDGET_MICRO_USD and eng["breach_at"] is not None
    org = budgets[("org-monthly", "*")]
    assert int(org["spent_usd"].replace(".", "")) > published  # every department
    table = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "eng-monthly" in table.stdout and "department sales" in table.stdout and "3 host(s)" in table.stdout


def eng_spent_since(box: Box, since: str, leaving_out: str) -> int:
    query = (
        "SELECT coalesce(sum(cost_micro_usd), 0) AS s FROM requests WHERE department = 'eng' AND ts >= ? AND id <> ?"
    )
    return int(box.db.query(query, (since, leaving_out))[0]["s"])
