"""The SQLite ledger: migrations, atomic rows, concurrent writers, and exact spend totals."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import LedgerError
from agent.ledger.database import Database
from agent.ledger.migrations import MIGRATIONS
from agent.ledger.requests import SPEND_DIMENSIONS, RequestLog, RequestRecord, SpendRow
from agent.ledger.users import UserStore

SINCE = "2024-01-01T00:00:00.000000+00:00"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open(tmp_path / "data" / "ledger.db")
    yield database
    database.close()


@pytest.fixture
def log(db: Database) -> RequestLog:
    return RequestLog(db)


@pytest.fixture
def user_ids(db: Database) -> dict[str, int]:
    users = UserStore(db)
    return {
        "alice": users.add("alice", "sales", "user", "hash-a"),
        "bob": users.add("bob", "engineering", "user", "hash-b"),
    }


def record(user_id: int, n: int = 0, **fields: object) -> RequestRecord:
    base = RequestRecord(
        id=f"req-{user_id}-{n}",
        ts=f"2024-06-01T12:00:{n % 60:02d}.000000+00:00",
        user_id=user_id,
        user_name="alice",
        department="sales",
        feature="chat",
        requested_model="auto",
        model="gpt-4o-mini",
        provider="openai",
        route="cloud",
        reason="default",
        input_tokens=10,
        output_tokens=20,
        tokens_estimated=False,
        cost_micro_usd=150,
        price_source="genai-prices",
        cost_saved_micro_usd=0,
        cache_hit=False,
        latency_ms=123,
        status="ok",
        error_type="",
        stream=False,
        attempts=1,
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def row_count(db: Database) -> int:
    return int(db.query("SELECT count(*) AS n FROM requests")[0]["n"])


# -- migrations ----------------------------------------------------------------------------


def test_open_applies_the_migrations_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    db = Database.open(path)
    assert (
        db.applied_migrations()
        == [name for name, _ in MIGRATIONS]
        == ["m001_initial", "m002_cache", "m003_routing", "m004_policy", "m005_gpu", "m006_preferences", "m007_spend_daily", "m008_holds_and_fleet", "m009_throttles", "m010_deliveries", "m011_delivery_claims", "m012_provider_cache"]
    )
    UserStore(db).add("alice", "sales", "user", "hash-a")
    db.close()

    again = Database.open(path)  # a second start must not re-run m001 (it would fail)
    try:
        assert again.applied_migrations() == ["m001_initial", "m002_cache", "m003_routing", "m004_policy", "m005_gpu", "m006_preferences", "m007_spend_daily", "m008_holds_and_fleet", "m009_throttles", "m010_deliveries", "m011_delivery_claims", "m012_provider_cache"]
        assert again.query("SELECT count(*) AS n FROM _migrations")[0]["n"] == len(MIGRATIONS)
        assert UserStore(again).count() == 1
        assert again.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    finally:
        again.close()


def test_a_file_that_is_not_a_database_is_a_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not sqlite at all, " * 100)
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Database.open(path)


def test_a_failed_transaction_rolls_back(db: Database) -> None:
    with pytest.raises(LedgerError), db.transaction() as conn:
        conn.execute("INSERT INTO users (name, department, created_at) VALUES ('x', 'y', 'now')")
        conn.execute("INSERT INTO no_such_table VALUES (1)")
    assert UserStore(db).count() == 0


def test_a_non_sqlite_error_in_a_transaction_rolls_back_and_propagates(db: Database) -> None:
    with pytest.raises(KeyError), db.transaction() as conn:
        conn.execute("INSERT INTO users (name, department, created_at) VALUES ('x', 'y', 'now')")
        raise KeyError("boom")
    assert UserStore(db).count() == 0
    with db.transaction() as conn:  # and the lock was released
        conn.execute("SELECT 1")


# -- one row per request -------------------------------------------------------------------


def test_record_and_get_round_trip(log: RequestLog, user_ids: dict[str, int]) -> None:
    original = record(user_ids["alice"], tokens_estimated=True, cache_hit=True, stream=True, cost_micro_usd=None)
    log.record(original)
    assert log.get(original.id) == original
    assert log.get("no-such-id") is None


def test_a_row_that_breaks_a_check_raises_and_leaves_nothing(
    log: RequestLog, db: Database, user_ids: dict[str, int]
) -> None:
    with pytest.raises(LedgerError, match="CHECK"):
        log.record(record(user_ids["alice"], status="weird"))
    assert row_count(db) == 0


def test_a_row_for_an_unknown_user_is_refused(log: RequestLog, db: Database) -> None:
    with pytest.raises(LedgerError, match="FOREIGN KEY"):
        log.record(record(9999))
    assert row_count(db) == 0


def test_a_request_id_is_recorded_once(log: RequestLog, db: Database, user_ids: dict[str, int]) -> None:
    log.record(record(user_ids["alice"], cost_micro_usd=1))
    with pytest.raises(LedgerError):
        log.record(record(user_ids["alice"], cost_micro_usd=2))
    assert row_count(db) == 1
    assert log.get(record(user_ids["alice"]).id).cost_micro_usd == 1  # type: ignore[union-attr]


def test_concurrent_writers_lose_no_rows(log: RequestLog, db: Database, user_ids: dict[str, int]) -> None:
    threads, per_thread = 8, 50
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def write(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                log.record(record(user_ids["alice"], t * 1000 + i, id=f"t{t}-{i}"))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert row_count(db) == threads * per_thread
    ids = {r["id"] for r in db.query("SELECT id FROM requests")}
    assert ids == {f"t{t}-{i}" for t in range(threads) for i in range(per_thread)}


def test_rows_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    db = Database.open(path)
    user = UserStore(db).add("alice", "sales", "user", "h")
    RequestLog(db).record(record(user))
    db.close()
    reopened = Database.open(path)
    try:
        assert RequestLog(reopened).get(record(user).id) == record(user)
    finally:
        reopened.close()


def test_query_runs_reads_only(db: Database, user_ids: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="reads only"):
        db.query("DELETE FROM users")
    assert [r["name"] for r in db.query("  select name from users order by name")] == ["alice", "bob"]
    assert db.query("WITH n(x) AS (SELECT 1) SELECT x FROM n") == [{"x": 1}]


def _rows_in_the_file_alone(db: Database, tmp_path: Path) -> int:
    """Request rows the ledger file holds by itself, without its WAL (a copy opened read-only).

    The copy is made by another process: opening and closing the file in this one would drop the
    SQLite connection's POSIX locks (docs/DESIGN.md, "Pitfall worth knowing")."""
    copy = tmp_path / "file-alone.db"
    subprocess.run([sys.executable, "-c", "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])",
                    str(db.path), str(copy)], check=True, timeout=60)  # fmt: skip
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
    finally:
        conn.close()


def test_checkpoints_move_off_the_write_path_to_a_thread_woken_by_commits(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "ledger.db")
    try:
        user = UserStore(db).add("alice", "sales", "user", "h")
        log = RequestLog(db)
        db.checkpoint()  # the schema and the user, in the file
        db.checkpoint_in_background(every_commits=100, idle_s=3600)
        for n in range(99):
            log.record(record(user, n))
        assert _rows_in_the_file_alone(db, tmp_path) == 0  # no request's commit checkpointed
        log.record(record(user, 99))  # the hundredth commit wakes the thread
        deadline = time.monotonic() + 60
        while _rows_in_the_file_alone(db, tmp_path) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _rows_in_the_file_alone(db, tmp_path) == 100
        log.record(record(user, 100))  # the writer goes on after a checkpoint
        assert row_count(db) == 101
    finally:
        db.close()
    assert not db.path.with_name("ledger.db-wal").exists()  # the thread stopped; the last close checkpointed


# -- spend reports -------------------------------------------------------------------------

_COLUMN = {
    "user": "user_name",
    "department": "department",
    "feature": "feature",
    "model": "model",
    "provider": "provider",
    "route": "route",
    "tier": "tier",
}


@pytest.fixture
def spend_rows(log: RequestLog, user_ids: dict[str, int]) -> list[RequestRecord]:
    a, b = user_ids["alice"], user_ids["bob"]
    bob = {"user_name": "bob", "department": "engineering"}
    local = {
        "model": "smollm2",
        "provider": "local",
        "route": "local",
        "price_source": "local-compute",
        "tier": "local",
    }
    rows = [
        record(a, 1, cost_micro_usd=1_500, input_tokens=100, output_tokens=50),
        record(a, 2, feature="summarise", cost_micro_usd=7, input_tokens=3, output_tokens=4, **local),
        record(a, 3, status="error", error_type="provider_timeout", cost_micro_usd=0, output_tokens=0),
        record(b, 4, cost_micro_usd=None, price_source="unknown", input_tokens=11, **bob),
        record(b, 5, cost_micro_usd=300, cost_saved_micro_usd=1_200, feature="", **bob),
        record(b, 6, status="aborted", cost_micro_usd=25, **local, **bob),
        # A cascade's local attempt: its money counts, as part of request 5, not as a request.
        record(b, 8, cost_micro_usd=4, parent_id="req-b-5", input_tokens=11, output_tokens=9, **local, **bob),
        # Before the window: never counted.
        record(a, 7, ts="2023-12-31T23:59:59.999999+00:00", cost_micro_usd=1_000_000),
    ]
    for row in rows:
        log.record(row)
    return rows


def expected_spend(rows: list[RequestRecord], by: str, user_id: int | None = None) -> list[SpendRow]:
    totals: dict[str, SpendRow] = {}
    for r in rows:
        if r.ts < SINCE or (user_id is not None and r.user_id != user_id):
            continue
        key = getattr(r, _COLUMN[by])
        old = totals.get(key, SpendRow(key, 0, 0, 0, 0, 0, 0, 0))
        totals[key] = SpendRow(
            key,
            old.requests + (r.parent_id == ""),
            old.input_tokens + r.input_tokens,
            old.output_tokens + r.output_tokens,
            old.cost_micro_usd + (r.cost_micro_usd or 0),
            old.cost_saved_micro_usd + r.cost_saved_micro_usd,
            old.unpriced_requests + (r.cost_micro_usd is None),
            old.failed_requests + (r.status != "ok"),
        )
    return sorted(totals.values(), key=lambda s: (-s.cost_micro_usd, s.key))


@pytest.mark.parametrize("by", SPEND_DIMENSIONS)
def test_spend_totals_are_exact_for_every_dimension(log: RequestLog, spend_rows: list[RequestRecord], by: str) -> None:
    rows = log.spend(by, SINCE)  # type: ignore[arg-type]
    assert rows == expected_spend(spend_rows, by)
    assert sum(r.requests for r in rows) == 6
    assert sum(r.cost_micro_usd for r in rows) == 1_500 + 7 + 0 + 300 + 25 + 4
    assert sum(r.unpriced_requests for r in rows) == 1
    assert sum(r.failed_requests for r in rows) == 2


def test_spend_by_user_in_numbers(log: RequestLog, spend_rows: list[RequestRecord]) -> None:
    assert log.spend("user", SINCE) == [
        SpendRow("alice", 3, 113, 54, 1_507, 0, 0, 1),
        SpendRow("bob", 3, 42, 69, 329, 1_200, 1, 1),  # with the cascade attempt's tokens and money
    ]


@pytest.mark.parametrize("by", SPEND_DIMENSIONS)
def test_spend_for_one_user_sees_only_their_rows(
    log: RequestLog, spend_rows: list[RequestRecord], user_ids: dict[str, int], by: str
) -> None:
    for name in ("alice", "bob"):
        rows = log.spend(by, SINCE, user_ids[name])  # type: ignore[arg-type]
        assert rows == expected_spend(spend_rows, by, user_ids[name])
        assert sum(r.requests for r in rows) == 3


def test_unpriced_rows_count_but_add_no_cost(log: RequestLog, user_ids: dict[str, int]) -> None:
    for n in range(3):
        log.record(record(user_ids["alice"], n, cost_micro_usd=None, price_source="unknown"))
    assert log.spend("user", SINCE) == [SpendRow("alice", 3, 30, 60, 0, 0, 3, 0)]


def test_spend_of_an_empty_window_is_empty(log: RequestLog, spend_rows: list[RequestRecord]) -> None:
    assert log.spend("user", "2099-01-01T00:00:00.000000+00:00") == []
    assert log.spend("user", SINCE, user_id=9999) == []


def test_spend_dimensions_are_the_only_sql_the_caller_chooses(log: RequestLog) -> None:
    with pytest.raises(KeyError):
        log.spend("user_name; DROP TABLE requests", SINCE)  # type: ignore[arg-type]


def test_the_database_file_is_a_plain_sqlite_file(db: Database, user_ids: dict[str, int]) -> None:
    conn = sqlite3.connect(db.path)
    try:
        assert [r[0] for r in conn.execute("SELECT name FROM users ORDER BY name")] == [
            "alice",
            "bob",
        ]
    finally:
        conn.close()
