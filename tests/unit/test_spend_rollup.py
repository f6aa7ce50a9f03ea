"""The daily spend rollup (m007) the dashboard reads equals the request rows it summarises."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from agent.errors import LedgerError
from agent.ledger import database
from agent.ledger.database import Database
from agent.ledger.migrations import MIGRATIONS
from agent.ledger.requests import DaySpend, RequestLog, RequestRecord, SpendRow, SpendSummary
from agent.ledger.users import UserStore
from tests.support.ledger_rows import random_rows

DIMENSIONS = ("department", "feature", "model", "provider", "route", "tier")


def from_rows(rows: list[RequestRecord], since_day: str, user_id: int | None) -> SpendSummary:
    """The summary computed in Python straight from the rows: the reference."""
    chosen = [r for r in rows if r.ts[:10] >= since_day and (user_id is None or r.user_id == user_id)]
    days: dict[str, list[int]] = {}
    for r in chosen:
        day = days.setdefault(r.ts[:10], [0, 0])
        day[0] += r.parent_id == ""
        day[1] += r.cost_micro_usd or 0
    by = {}
    for dimension in DIMENSIONS:
        groups: dict[str, list[RequestRecord]] = {}
        for r in chosen:
            groups.setdefault(getattr(r, dimension), []).append(r)
        spend = [
            SpendRow(
                key=key,
                requests=sum(r.parent_id == "" for r in group),
                input_tokens=sum(r.input_tokens for r in group),
                output_tokens=sum(r.output_tokens for r in group),
                cost_micro_usd=sum(r.cost_micro_usd or 0 for r in group),
                cost_saved_micro_usd=sum(r.cost_saved_micro_usd for r in group),
                unpriced_requests=sum(r.cost_micro_usd is None for r in group),
                failed_requests=sum(r.status != "ok" for r in group),
            )
            for key, group in groups.items()
        ]
        by[dimension] = tuple(sorted(spend, key=lambda s: (-s.cost_micro_usd, s.key)))
    return SpendSummary(
        daily=tuple(DaySpend(day, n, cost) for day, (n, cost) in sorted(days.items())),
        by=by,
        cache_saved_micro_usd=sum(r.cost_saved_micro_usd for r in chosen if r.cache_hit),
        compression_saved_micro_usd=sum(r.cost_saved_micro_usd for r in chosen if not r.cache_hit),
    )


def users(db: Database) -> list[int]:
    store = UserStore(db)
    return [store.add(f"user{i}", "sales", "user", f"hash-{i}") for i in range(3)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rollup_kept_by_the_trigger_equals_the_rows(tmp_path: Path, seed: int) -> None:
    db = Database.open(tmp_path / "ledger.db")
    rng = random.Random(seed)
    ids = users(db)
    rows = random_rows(rng, ids, 400)
    log = RequestLog(db)
    for row in rows:
        log.record(row)
    for since_day in ("2000-01-01", "2026-11-15", "2026-11-20", "2026-11-21"):
        for user_id in (None, *ids):
            assert log.summary(since_day, user_id, DIMENSIONS) == from_rows(rows, since_day, user_id)


# Columns added after m007: an agent of that time wrote rows without them.
LATER_COLUMNS = {"input_tokens_expected", "hold_micro_usd", "cache_read_tokens", "cache_write_tokens",
                 "reasoning_tokens", "provider_cache_saved_micro_usd"}  # fmt: skip


def test_an_older_ledger_is_backfilled_when_it_upgrades(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.db"
    with monkeypatch.context() as before_m007:
        before_m007.setattr(database, "MIGRATIONS", MIGRATIONS[:6])
        old = Database.open(path)
        ids = users(old)
        rows = random_rows(random.Random(7), ids, 300)
        for row in rows[:200]:  # as the agent of that time wrote them: without the later columns
            fields = {k: v for k, v in dataclasses.asdict(row).items() if k not in LATER_COLUMNS}
            with old.transaction() as conn:
                conn.execute(
                    f"INSERT INTO requests ({', '.join(fields)}) VALUES ({', '.join(':' + k for k in fields)})",  # noqa: S608 - the dataclass's own field names
                    fields,
                )
        assert "m007_spend_daily" not in old.applied_migrations()
    upgraded = Database.open(path)
    assert "m007_spend_daily" in upgraded.applied_migrations()
    log = RequestLog(upgraded)
    for row in rows[200:]:  # and the trigger carries on from the backfilled figures
        log.record(row)
    for user_id in (None, *ids):
        assert log.summary("2026-11-12", user_id, DIMENSIONS) == from_rows(rows, "2026-11-12", user_id)


def test_a_refused_row_leaves_the_rollup_as_it_was(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "ledger.db")
    ids = users(db)
    log = RequestLog(db)
    [row, duplicate] = random_rows(random.Random(3), ids, 2)
    log.record(row)
    before = log.summary("2000-01-01", None, DIMENSIONS)
    with pytest.raises(LedgerError, match="UNIQUE"):
        log.record(dataclasses.replace(duplicate, id=row.id))  # the same id: refused whole
    assert log.summary("2000-01-01", None, DIMENSIONS) == before


def test_users_are_not_a_rollup_dimension(tmp_path: Path) -> None:
    log = RequestLog(Database.open(tmp_path / "ledger.db"))
    with pytest.raises(ValueError, match="per user id"):
        log.summary("2000-01-01", None, ("user",))
