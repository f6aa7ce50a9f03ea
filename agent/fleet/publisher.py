"""Every agent appends its finished ledger rows to the share and keeps one summary there.

Layout under ``<share>/fleet/<host-id>/``::

    summary.json                        the manifest: which segments count, totals, watermarks
    2026-12/requests-000017.parquet     immutable segments, one month of one stream each
    2026-12/gpu-000018.parquet

A publish runs in this order: (1) new segments are written (temp + fsync + rename), (2) the
manifest listing them and the new watermarks replaces the old one atomically, (3) the local
watermark in the ledger moves. A crash after (1) leaves an orphan file no reader counts and the
rows are published again under a new name; a crash after (2) is healed at the next publish,
which takes the manifest's watermark when it is ahead of the local one. So a row is never
published twice nor lost, however long the share was away.

A month folder with more than ``COMPACT_AT`` segments of a stream is compacted: its rows are
written once more as one new segment, the manifest swaps them, and the old files are deleted
after (readers holding the old manifest find them gone and read the manifest again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent import __version__
from agent.fleet.files import host_id, process_lock, write_atomic
from agent.fleet.segments import MANIFEST, SCHEMA_VERSION, SCHEMAS, write_segment
from agent.ledger.database import Database, utc_now_iso
from agent.ledger.fleet_rows import FleetRows
from agent.pricing.prices import PriceBook
from agent.settings import Settings

log = logging.getLogger(__name__)
# Usage in full, published as the ledger has it (agent.fleet.segments).
_USAGE_COLUMNS = ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "provider_cache_saved_micro_usd")


COMPACT_AT = 16
# GPU minutes are published once they can no longer change (the sampler closes a minute late).
_GPU_SETTLE = timedelta(minutes=3)
_BATCH_ROWS = 50_000

StrongPrice = Callable[[int, int], int | None]  # (input, output tokens) -> micro-USD at the strong tier


@dataclass(frozen=True)
class FleetBudgetTotal:
    """This host's spend against one department or organisation budget, this period."""

    name: str
    scope: str
    subject: str
    period: str
    period_key: str
    spent_micro_usd: int
    reserved_micro_usd: int


@dataclass(frozen=True)
class PublishOutcome:
    rows: dict[str, int]  # stream -> rows published now
    segments: int
    compacted: int
    backlog_rows: int


@dataclass
class PublisherStatus:
    host_id: str
    share_dir: str
    last_published_at: str | None = None
    last_attempt_at: str | None = None
    last_error: str | None = None
    backlog_rows: int | None = None
    published_rows: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Privacy:
    user_names: Literal["plain", "hashed"] = "plain"
    reasons: bool = False


class FleetPublisher:
    def __init__(
        self,
        db: Database,
        share_dir: Path,
        host_id: str,
        *,
        budgets: Callable[[], Iterable[FleetBudgetTotal]] = list,
        policy_version: Callable[[], int | None] = lambda: None,
        strong_price: StrongPrice | None = None,
        privacy: Privacy = Privacy(),
        hostname: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        lock_file: Path | None = None,
    ) -> None:
        self._rows = FleetRows(db)
        self.host_dir = share_dir / "fleet" / host_id
        self.host_id = host_id
        self._budgets = budgets
        self._policy_version = policy_version
        self._strong_price = strong_price
        self._privacy = privacy
        self._hostname = hostname or socket.gethostname()
        self._now = now
        self._lock = threading.Lock()  # one publish at a time in this process
        self._lock_file = lock_file  # and across processes of this ledger (`fleet publish`)
        self._status = PublisherStatus(host_id, str(share_dir))

    def status(self) -> PublisherStatus:
        return self._status

    def publish_once(self) -> PublishOutcome:
        """Publish everything new, compact, replace the manifest. Raises OSError when the share
        fails; nothing is then lost (the rows wait in the ledger)."""
        with self._lock, process_lock(self._lock_file) if self._lock_file else contextlib.nullcontext():
            self._status.last_attempt_at = utc_now_iso()
            try:
                outcome = self._publish()
            except OSError as e:
                self._status.last_error = f"{type(e).__name__}: {e}"
                self._status.backlog_rows = self.backlog_rows()
                raise
            self._status.last_error = None
            self._status.last_published_at = utc_now_iso()
            self._status.backlog_rows = outcome.backlog_rows
            for stream, rows in outcome.rows.items():
                self._status.published_rows[stream] = self._status.published_rows.get(stream, 0) + rows
            return outcome

    def backlog_rows(self) -> int:
        return self._rows.requests_waiting(int(self._rows.positions()["requests"]))

    # -- the steps ---------------------------------------------------------------------------

    def _publish(self) -> PublishOutcome:
        manifest = self._read_own_manifest()
        local = self._rows.positions()
        positions = {
            "requests": str(max(int(local["requests"]), int(manifest["streams"]["requests"]["position"]))),
            "gpu": max(local["gpu"], manifest["streams"]["gpu"]["position"]),
        }
        published = {"requests": 0, "gpu": 0}
        written = 0
        while True:  # in batches, so an outage of days catches up without one huge read
            rows, last = self._rows.requests_after(int(positions["requests"]), _BATCH_ROWS)
            if not rows:
                break
            written += self._add_segments(manifest, "requests", self._requests_table(rows))
            positions["requests"] = str(last)
            published["requests"] += len(rows)
        gpu_rows = self._gpu_rows(positions["gpu"])
        if gpu_rows:
            written += self._add_segments(manifest, "gpu", self._gpu_table(gpu_rows))
            positions["gpu"] = max(str(r["minute"]) for r in gpu_rows)
            published["gpu"] += len(gpu_rows)
        replaced = self._compact(manifest)
        for stream in ("requests", "gpu"):
            manifest["streams"][stream]["position"] = positions[stream]
            manifest["streams"][stream]["rows"] += published[stream]
        manifest.update(self._header())
        manifest["budgets"] = [vars(total) for total in self._budgets()]
        manifest["backlog_rows"] = 0
        write_atomic(self.host_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        self._rows.save_positions(positions, len(manifest["segments"]))
        for path in replaced:  # no manifest names them any more
            try:
                (self.host_dir / path).unlink()
            except OSError as e:
                log.info("could not delete the compacted segment %s: %s", path, e)
        return PublishOutcome(published, written, len(replaced), self.backlog_rows())

    def _header(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "host_id": self.host_id,
            "hostname": self._hostname,
            "agent_version": __version__,
            "policy_version": self._policy_version(),
            "published_at": utc_now_iso(),
        }

    def _read_own_manifest(self) -> dict[str, Any]:
        """The manifest this host wrote last, or a new one. One that cannot be read is not
        trusted for its watermarks (the local ones stand) but its segments are not lost either:
        they are republished from the ledger."""
        empty: dict[str, Any] = {
            "segments": [],
            "next_seq": 1,
            "streams": {"requests": {"position": "0", "rows": 0}, "gpu": {"position": "", "rows": 0}},
        }
        path = self.host_dir / MANIFEST
        try:
            manifest = json.loads(path.read_bytes())
        except FileNotFoundError:
            return empty
        except (OSError, ValueError) as e:
            if isinstance(e, OSError) and not isinstance(e, IsADirectoryError):
                raise
            log.warning("this host's fleet manifest %s is unreadable (%s): starting a new one", path, e)
            return empty
        if not isinstance(manifest, dict) or manifest.get("host_id") != self.host_id:
            log.warning("the fleet manifest %s is not this host's: starting a new one", path)
            return empty
        return {**empty, **manifest}

    def _add_segments(self, manifest: dict[str, Any], stream: str, table: pa.Table) -> int:
        """One segment per month of the table's rows; returns how many were written."""
        months = pc.strftime(table["day"], format="%Y-%m")
        count = 0
        for month in sorted(set(months.to_pylist())):
            part = table.filter(pc.equal(months, month))
            self._write(manifest, stream, str(month), part)
            count += 1
        return count

    def _write(self, manifest: dict[str, Any], stream: str, month: str, table: pa.Table) -> dict[str, Any]:
        seq = int(manifest["next_seq"])
        while (self.host_dir / month / f"{stream}-{seq:06d}.parquet").exists():
            seq += 1  # an orphan of a publish that crashed before its manifest: never reuse a name
        relative = f"{month}/{stream}-{seq:06d}.parquet"
        data = write_segment(self.host_dir / relative, table)
        days = table["day"]
        entry = {
            "path": relative,
            "stream": stream,
            "month": month,
            "rows": table.num_rows,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "first_day": str(pc.min(days).as_py()),
            "last_day": str(pc.max(days).as_py()),
        }
        manifest["segments"].append(entry)
        manifest["next_seq"] = seq + 1
        return entry

    def _compact(self, manifest: dict[str, Any]) -> list[str]:
        """Merge the segments of any month and stream that has too many; the old paths."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for entry in manifest["segments"]:
            groups.setdefault((entry["month"], entry["stream"]), []).append(entry)
        replaced: list[str] = []
        for (month, stream), entries in sorted(groups.items()):
            if len(entries) <= COMPACT_AT:
                continue
            tables = [pq.read_table(self.host_dir / e["path"], schema=SCHEMAS[stream]) for e in entries]
            merged = pa.concat_tables(tables)
            gone = {e["path"] for e in entries}
            manifest["segments"] = [e for e in manifest["segments"] if e["path"] not in gone]
            self._write(manifest, stream, month, merged)
            replaced.extend(sorted(gone))
        return replaced

    # -- the ledger side -----------------------------------------------------------------------

    def _gpu_rows(self, after: str) -> list[dict[str, Any]]:
        settled = (self._now() - _GPU_SETTLE).astimezone(UTC).isoformat(timespec="seconds")
        return self._rows.gpu_charges_between(after, settled)

    def _requests_table(self, rows: list[dict[str, Any]]) -> pa.Table:
        columns: dict[str, list[Any]] = {name: [] for name in SCHEMAS["requests"].names}
        for r in rows:
            ts = datetime.fromisoformat(str(r["ts"])).astimezone(UTC)
            hit = bool(r["cache_hit"])
            saved = int(r["cost_saved_micro_usd"] or 0)
            columns["id"].append(r["id"])
            columns["ts"].append(ts)
            columns["day"].append(ts.date())
            columns["host_id"].append(self.host_id)
            columns["user_name"].append(self._user(str(r["user_name"])))
            for name in ("department", "feature", "requested_model", "model", "provider", "route", "tier",
                         "status", "parent_id", "price_source"):  # fmt: skip
                columns[name].append(str(r[name] or ""))
            columns["input_tokens"].append(int(r["input_tokens"]))
            columns["output_tokens"].append(int(r["output_tokens"]))
            columns["tokens_estimated"].append(bool(r["tokens_estimated"]))
            columns["cost_micro_usd"].append(r["cost_micro_usd"])
            columns["cache_hit"].append(hit)
            columns["cache_saved_micro_usd"].append(saved if hit else 0)
            columns["compression_saved_micro_usd"].append(0 if hit else saved)
            columns["routing_saved_micro_usd"].append(self._routing_saving(r))
            columns["latency_ms"].append(int(r["latency_ms"] or 0))
            columns["reason"].append(str(r["reason"] or "") if self._privacy.reasons else "")
            for name in _USAGE_COLUMNS:
                columns[name].append(int(r[name] or 0))
        return pa.Table.from_pydict(columns, schema=SCHEMAS["requests"])

    def _gpu_table(self, rows: list[dict[str, Any]]) -> pa.Table:
        columns: dict[str, list[Any]] = {name: [] for name in SCHEMAS["gpu"].names}
        for r in rows:
            minute = datetime.fromisoformat(str(r["minute"])).astimezone(UTC)
            columns["minute"].append(minute)
            columns["day"].append(minute.date())
            columns["host_id"].append(self.host_id)
            columns["gpu_index"].append(int(r["gpu_index"]))
            columns["kind"].append(str(r["kind"]))
            subject = str(r["subject"])
            columns["subject"].append(self._user(subject) if r["kind"] in ("user", "os_user") else subject)
            columns["department"].append(str(r["department"] or ""))
            columns["seconds"].append(float(r["seconds"]))
            columns["cost_micro_usd"].append(r["cost_micro_usd"])
        return pa.Table.from_pydict(columns, schema=SCHEMAS["gpu"])

    def _user(self, name: str) -> str:
        if self._privacy.user_names == "plain":
            return name
        return "u-" + hashlib.sha256(name.encode()).hexdigest()[:16]

    def _routing_saving(self, row: Mapping[str, Any]) -> int:
        """An ``auto`` request the router sent below the strong tier saved what the strong tier
        would have cost for the same tokens, less what it cost."""
        if (
            self._strong_price is None
            or row["requested_model"] != "auto"
            or row["cache_hit"]
            or row["status"] != "ok"
            or row["tier"] in ("strong", "")
            or row["parent_id"]
        ):
            return 0
        strong = self._strong_price(int(row["input_tokens"]), int(row["output_tokens"]))
        if strong is None or row["cost_micro_usd"] is None:
            return 0
        return max(strong - int(row["cost_micro_usd"]), 0)


def strong_price_for(settings: Settings) -> StrongPrice | None:
    """What the strong tier would have charged for a request's tokens (None: no strong tier)."""
    model = settings.tiers.strong
    if not model:
        return None
    endpoint = next((c for c in settings.cloud if model in c.models), None)
    book = PriceBook(settings.pricing.overrides, settings.pricing.local_usd_per_hour)
    provider_id = endpoint.provider_id if endpoint is not None else ""
    return lambda tokens_in, tokens_out: book.for_tokens(model, provider_id, tokens_in, tokens_out).cost_micro_usd


def build_publisher(
    settings: Settings,
    db: Database,
    *,
    budgets: Callable[[], Iterable[FleetBudgetTotal]] = list,
    policy_version: Callable[[], int | None] = lambda: None,
) -> FleetPublisher | None:
    """The publisher this agent's settings ask for; None without a share or with publishing off."""
    share = settings.share_dir
    if share is None or not settings.fleet.publish:
        return None
    return FleetPublisher(
        db,
        share,
        host_id(settings.paths.data_dir),
        budgets=budgets,
        policy_version=policy_version,
        strong_price=strong_price_for(settings),
        privacy=Privacy(settings.fleet.user_names, settings.fleet.publish_reasons),
        lock_file=settings.paths.data_dir / "fleet-publish.lock",
    )
