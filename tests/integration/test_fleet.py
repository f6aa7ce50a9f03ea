"""The fleet on a share folder: hosts publish Parquet segments, readers trust only what checks out.

Real ledgers (SQLite files), real Parquet written by pyarrow, real DuckDB reports; crashes are
real SIGKILLs of a publishing process; the share's outage is its folder going away.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from agent.fleet.catalog import scan
from agent.fleet.files import host_id
from agent.fleet.publisher import FleetPublisher, Privacy
from agent.fleet.report import DIMENSIONS, report
from agent.identity import Identity
from agent.ledger.database import Database
from agent.ledger.requests import RequestLog, RequestRecord
from agent.ledger.users import UserStore
from tests.support.ledger_rows import random_rows

SINCE = datetime(2026, 11, 1, tzinfo=UTC)


@dataclasses.dataclass
class Box:
    """One host: its data folder, ledger and publisher."""

    data: Path
    db: Database
    log: RequestLog
    publisher: FleetPublisher
    rows: list[RequestRecord]

    def add(self, rows: list[RequestRecord]) -> None:
        for row in rows:
            self.log.record(row)
        self.rows.extend(rows)


def make_box(root: Path, share: Path, name: str, privacy: Privacy | None = None) -> Box:
    data = root / name
    data.mkdir(parents=True)
    db = Database.open(data / "ledger.db")
    identity = Identity(UserStore(db))
    for user in ("ann", "bob", "cyd"):
        identity.add_user(f"{name}-{user}", "eng" if user != "cyd" else "sales")
    publisher = FleetPublisher(db, share, host_id(data), privacy=privacy or Privacy(), hostname=name)
    return Box(data, db, RequestLog(db), publisher, [])


def rows_for(box: Box, seed: int, count: int, start: int = 0) -> list[RequestRecord]:
    ids = [int(r["id"]) for r in box.db.query("SELECT id FROM users")]
    names = {int(r["id"]): str(r["name"]) for r in box.db.query("SELECT id, name FROM users")}
    made = random_rows(random.Random(seed), ids, count)
    return [
        dataclasses.replace(
            r,
            id=f"{box.data.name}-{start + i}",
            user_name=names[r.user_id],
            parent_id=f"{box.data.name}-{start + i - 1}" if r.parent_id else "",
        )
        for i, r in enumerate(made)
    ]


def reference(rows: list[RequestRecord], by: str, host_of: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """The report computed in Python from the rows themselves."""
    groups: dict[str, list[RequestRecord]] = {}
    for r in rows:
        key = {"user": r.user_name, "host": host_of[r.id], "day": r.ts[:10]}.get(by) or getattr(r, by, "")
        groups.setdefault(key, []).append(r)
    return {
        key: (
            sum(r.parent_id == "" for r in g),
            sum(r.input_tokens for r in g),
            sum(r.output_tokens for r in g),
            sum(r.cost_micro_usd or 0 for r in g),
            sum(r.cost_micro_usd is None for r in g),
            sum(r.status != "ok" for r in g),
        )
        for key, g in groups.items()
    }


def reported(share: Path, by: str) -> dict[str, tuple[int, ...]]:
    result = report(scan(share), by, SINCE)  # type: ignore[arg-type]
    return {
        r.key: (r.requests, r.input_tokens, r.output_tokens, r.cost_micro_usd, r.unpriced_requests, r.failed_requests)
        for r in result.rows
    }


def published_ids(share: Path) -> Counter[str]:
    catalog = scan(share)
    ids: Counter[str] = Counter()
    for path in catalog.files("requests"):
        ids.update(pq.read_table(path, columns=["id"])["id"].to_pylist())
    return ids


def test_two_hosts_publish_and_the_report_adds_up_in_every_dimension(tmp_path: Path) -> None:
    share = tmp_path / "share"
    a, b = make_box(tmp_path, share, "alpha"), make_box(tmp_path, share, "beta")
    a.add(rows_for(a, 1, 300))
    b.add(rows_for(b, 2, 200))
    first = a.publisher.publish_once(), b.publisher.publish_once()
    assert [o.rows["requests"] for o in first] == [300, 200]
    # Idempotent: nothing new, nothing published, no new segment.
    again = a.publisher.publish_once()
    assert again.rows["requests"] == 0 and again.segments == 0
    a.add(rows_for(a, 3, 50, start=300))
    assert a.publisher.publish_once().rows["requests"] == 50

    rows = a.rows + b.rows
    host_of = {r.id: (a if r in a.rows else b).publisher.host_id for r in rows}
    assert published_ids(share) == Counter(r.id for r in rows)  # each row exactly once
    for by in DIMENSIONS:
        assert reported(share, by) == reference(rows, by, host_of), by
    summary = json.loads((a.publisher.host_dir / "summary.json").read_text())
    assert summary["hostname"] == "alpha" and summary["streams"]["requests"]["rows"] == 350


def test_many_small_publishes_are_compacted_and_stay_exact(tmp_path: Path) -> None:
    share = tmp_path / "share"
    a = make_box(tmp_path, share, "alpha")
    for i in range(20):
        a.add(rows_for(a, 10 + i, 5, start=5 * i))
        a.publisher.publish_once()
    files = sorted(p.name for p in (a.publisher.host_dir).rglob("*.parquet"))
    manifest = json.loads((a.publisher.host_dir / "summary.json").read_text())
    assert len(manifest["segments"]) <= 16 < 20
    assert len(files) == len(manifest["segments"])  # the compacted ones are gone
    assert published_ids(share) == Counter(r.id for r in a.rows)


_CRASH = """
import os, signal, sys
from pathlib import Path
from agent.fleet import publisher as p
from agent.fleet.files import host_id
from agent.identity import Identity
from agent.ledger.database import Database

data, share, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
real_write = p.write_atomic

def write(path, data):
    if point == "before-manifest" and path.name == "summary.json":
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, data)

def save(self, positions, segments):
    os.kill(os.getpid(), signal.SIGKILL)

p.write_atomic = write
if point == "before-watermark":
    p.FleetRows.save_positions = save
db = Database.open(data / "ledger.db")
p.FleetPublisher(db, share, host_id(data), hostname=data.name).publish_once()
"""


@pytest.mark.parametrize("point", ["before-manifest", "before-watermark"])
def test_a_publisher_killed_between_the_write_and_the_watermark_loses_and_repeats_nothing(
    tmp_path: Path, point: str
) -> None:
    share = tmp_path / "share"
    a = make_box(tmp_path, share, "alpha")
    a.add(rows_for(a, 1, 40))
    a.publisher.publish_once()
    a.add(rows_for(a, 2, 60, start=40))
    run = subprocess.run([sys.executable, "-c", _CRASH, str(a.data), str(share), point], capture_output=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    # The killed process wrote a segment no manifest names (before-manifest) or a manifest the
    # ledger's watermark does not know yet (before-watermark).
    on_disk = list(a.publisher.host_dir.rglob("requests-*.parquet"))
    assert len(on_disk) == 2
    watermark = a.db.query("SELECT position FROM fleet_watermarks WHERE stream = 'requests'")[0]["position"]
    assert watermark == str(a.db.query("SELECT rowid FROM requests WHERE id = 'alpha-39'")[0]["rowid"])

    after = a.publisher.publish_once()
    assert after.rows["requests"] == (60 if point == "before-manifest" else 0)
    assert published_ids(share) == Counter(r.id for r in a.rows)
    assert a.publisher.backlog_rows() == 0


def test_after_an_outage_of_hours_the_host_catches_up_exactly(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    a = make_box(tmp_path, share, "alpha")
    a.add(rows_for(a, 1, 30))
    a.publisher.publish_once()
    # The share goes away (the mount point is left empty; the fleet folder is not a folder).
    moved = tmp_path / "share-away"
    share.rename(moved)
    share.write_text("not mounted")
    for hour in range(6):  # hours of traffic with the share down: every attempt fails, nothing lost
        a.add(rows_for(a, 100 + hour, 25, start=30 + 25 * hour))
        with pytest.raises(OSError):
            a.publisher.publish_once()
        assert a.publisher.status().last_error
    assert a.publisher.backlog_rows() == 150
    share.unlink()
    moved.rename(share)
    caught_up = a.publisher.publish_once()
    assert caught_up.rows["requests"] == 150 and caught_up.backlog_rows == 0
    assert a.publisher.status().last_error is None
    assert published_ids(share) == Counter(r.id for r in a.rows)


def test_a_bad_host_is_skipped_by_name_and_never_breaks_a_report(tmp_path: Path) -> None:
    share = tmp_path / "share"
    boxes = [make_box(tmp_path, share, name) for name in ("good", "corrupt", "short", "future", "half", "junk")]
    for i, box in enumerate(boxes):
        box.add(rows_for(box, i, 20))
        box.publisher.publish_once()
    good, corrupt, short, future, half, junk = boxes

    def segment(box: Box) -> Path:
        return next(box.publisher.host_dir.rglob("requests-*.parquet"))

    data = bytearray(segment(corrupt).read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment(corrupt).write_bytes(bytes(data))
    segment(short).write_bytes(segment(short).read_bytes()[:-100])
    manifest = json.loads((future.publisher.host_dir / "summary.json").read_text())
    (future.publisher.host_dir / "summary.json").write_text(json.dumps({**manifest, "schema": 99}))
    segment(half).unlink()  # its manifest arrived before its segment (a copy still going on)
    (junk.publisher.host_dir / "summary.json").write_bytes(b'{"schema": 1, "host_id": ')
    (share / "fleet" / "not-a-host").mkdir()

    catalog = scan(share)
    assert [h.hostname for h in catalog.hosts] == ["good"]
    reasons = {s.name.split(" ")[-1].strip("()"): s.reason for s in catalog.skipped}
    assert "checksum" in reasons["corrupt"]
    assert "truncated" in reasons["short"]
    assert "newer agent (schema 99" in reasons["future"]
    assert "missing" in reasons["half"]
    assert "cannot be read" in reasons[junk.publisher.host_id]
    assert "not a host folder" in reasons["not-a-host"]
    host_of = {r.id: good.publisher.host_id for r in good.rows}
    assert reported(share, "user") == reference(good.rows, "user", host_of)


def test_what_leaves_the_box_is_ids_counts_and_money(tmp_path: Path) -> None:
    share = tmp_path / "share"
    plain = make_box(tmp_path, share, "plain")
    hashed = make_box(tmp_path, share, "hashed", Privacy(user_names="hashed"))
    for box in (plain, hashed):
        box.add([dataclasses.replace(r, reason="classifier: hard (0.91)") for r in rows_for(box, 5, 30)])
        box.publisher.publish_once()
    [plain_file] = plain.publisher.host_dir.rglob("requests-*.parquet")
    [hashed_file] = hashed.publisher.host_dir.rglob("requests-*.parquet")
    plain_table, hashed_table = pq.read_table(plain_file), pq.read_table(hashed_file)
    assert set(plain_table["reason"].to_pylist()) == {""}  # reasons stay home by default
    assert set(plain_table["user_name"].to_pylist()) <= {"plain-ann", "plain-bob", "plain-cyd"}
    names = set(hashed_table["user_name"].to_pylist())
    assert all(n.startswith("u-") and len(n) == 18 for n in names)
    for user in (b"hashed-ann", b"hashed-bob", b"hashed-cyd"):
        assert not any(user in p.read_bytes() for p in hashed.publisher.host_dir.rglob("*") if p.is_file())
    # The same user is the same hash on every publish, so reports still group by user.
    assert len(names) == len({r.user_name for r in hashed.rows})


def test_the_host_id_survives_a_rename_and_a_reinstall_that_keeps_the_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = host_id(data)
    assert host_id(data) == first  # the machine's name is not part of it
    (data / "host-id").write_text("garbage")
    assert host_id(data) != first  # an unusable id is replaced, never published


def _cli(*args: str, home: Path, share: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIFINOPS_HOME": str(home), "COLUMNS": "200"}
    if share is not None:
        env["AIFINOPS_SHARE__PATH"] = str(share)
    return subprocess.run([sys.executable, "-m", "agent", *args], env=env, capture_output=True, text=True, timeout=120)


def test_two_real_agents_publish_and_an_admin_reports_on_both(tmp_path: Path, chat_model_path: Path) -> None:
    from agent.identity import read_token_file
    from agent.server import AgentThread
    from agent.settings import load_settings

    share = tmp_path / "share"
    share.mkdir()
    question = "Name a colour of the sky at noon"
    agents = []
    try:
        for name in ("ws-1", "ws-2"):
            home = tmp_path / name
            overrides = {"agent": {"port": 0}, "share": {"path": str(share)}, "fleet": {"publish_interval_s": 5}}
            thread = AgentThread(load_settings(home=home, overrides=overrides)).start()
            agents.append((home, thread))
            token = read_token_file(thread.services.settings.paths.token_file)
            client = RunningAgentClient(thread.base_url, token)
            for _ in range(2):
                client.chat(question)
        for home, _thread in agents:  # `fleet publish` beside the running agent's own publishing
            published = _cli("fleet", "publish", home=home, share=share)
            assert published.returncode == 0, published.stderr
            assert "published" in published.stdout
        own = {
            thread.services.publisher.host_id: sum(
                int(r["cost_micro_usd"] or 0) for r in thread.services.db.query("SELECT cost_micro_usd FROM requests")
            )
            for _, thread in agents
            if thread.services.publisher is not None
        }
        assert len(own) == 2 and all(own.values())

        admin = tmp_path / "admin"
        text = _cli("fleet", "report", "--by", "host", "--share", str(share), home=admin)
        assert text.returncode == 0, text.stderr
        print(text.stdout)
        assert "2 host(s)" in text.stdout and "ws-1" not in text.stderr
        as_json = _cli("fleet", "report", "--by", "host", "--json", "--share", str(share), home=admin)
        body = json.loads(as_json.stdout)
        assert {r["key"]: r["cost_micro_usd"] for r in body["rows"]} == own
        assert all(r["requests"] == 2 for r in body["rows"])
        hosts = json.loads(_cli("fleet", "hosts", "--json", "--share", str(share), home=admin).stdout)
        assert sorted(h["rows"] for h in hosts["hosts"]) == [2, 2]
        assert hosts["skipped_hosts"] == []
        # No prompt or answer text ever reaches the share.
        for path in share.rglob("*"):
            if path.is_file():
                assert question.encode() not in path.read_bytes(), path
    finally:
        for _, thread in agents:
            thread.stop()


@dataclasses.dataclass
class RunningAgentClient:
    base_url: str
    token: str | None

    def chat(self, question: str) -> None:
        import httpx

        reply = httpx.post(
            f"{self.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {self.token}"},
            json={
                "model": "local",
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 8,
                "cache": False,
            },
            timeout=120,
        )
        assert reply.status_code == 200, reply.text


def test_segments_from_before_the_usage_columns_still_read_and_the_new_ones_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa

    from agent.fleet import publisher as publishing
    from agent.fleet import segments

    share = tmp_path / "share"
    a = make_box(tmp_path, share, "alpha")
    usage = ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "provider_cache_saved_micro_usd")
    schema = segments.REQUESTS_SCHEMA
    older = pa.schema([f for f in schema if f.name not in usage], metadata=schema.metadata)
    with monkeypatch.context() as before:  # an agent of the time before: its segments lack the columns
        before.setitem(publishing.SCHEMAS, "requests", older)
        before.setattr(publishing, "_USAGE_COLUMNS", ())
        a.add(rows_for(a, 41, 40))
        assert a.publisher.publish_once().rows["requests"] == 40
    only_old = report(scan(share), "user", SINCE)  # no segment has the columns yet: they read as null
    assert only_old.total("requests") == sum(r.parent_id == "" for r in a.rows)
    assert only_old.total("provider_cache_saved_micro_usd") == 0
    cached = [dataclasses.replace(r, cache_read_tokens=r.input_tokens // 2, provider_cache_saved_micro_usd=7)
              for r in rows_for(a, 42, 30, start=40)]  # fmt: skip
    a.add(cached)
    assert a.publisher.publish_once().rows["requests"] == 30
    [old_file, new_file] = sorted(scan(share).files("requests"), key=lambda p: Path(p).stat().st_mtime_ns)
    assert "provider_cache_saved_micro_usd" not in pq.read_schema(old_file).names
    assert "provider_cache_saved_micro_usd" in pq.read_schema(new_file).names
    result = report(scan(share), "user", SINCE)
    assert result.total("requests") == sum(r.parent_id == "" for r in a.rows)
    assert result.total("provider_cache_saved_micro_usd") == 7 * 30
    # The new segment carries each row's cached tokens as the ledger has them.
    assert sum(pq.read_table(new_file)["cache_read_tokens"].to_pylist()) == sum(r.cache_read_tokens for r in cached)
