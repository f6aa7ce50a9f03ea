"""`aifinops fleet export --format focus`: real ledgers of two hosts, published through the real
publisher, exported by the real command, checked by the FinOps Foundation's own validator.

focus-validator needs Python >= 3.12 while the agent supports 3.11, so it gets a virtual
environment of its own under .cache/ (made once, on first use, from the configured package index).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.fleet.files import host_id, process_lock
from agent.fleet.focus import APPLICABILITY_CRITERIA
from agent.fleet.publisher import FleetPublisher
from agent.ledger.requests import RequestRecord
from tests.integration.test_fleet import Box, make_box, rows_for

REPO = Path(__file__).resolve().parents[2]
VALIDATOR_VENV = REPO / ".cache" / "focus-venv"
# numpy 2 and pyarrow 20 break focus-validator 2.2.1's data loaders.
VALIDATOR_REQUIREMENTS = ("focus-validator==2.2.1", "numpy<2", "pyarrow<20")
FOCUS_MODEL = "1.2.0.1"
# focus-validator 2.2.1 reports both branches of the OR rule InvoiceId-C-003-C ("null when no
# invoice" / "not null when an invoice") as rules of their own, each without its condition, so one
# of them fails on any non-empty dataset while InvoiceId-C-003-C itself passes. Our InvoiceId is
# null (an internal chargeback has no invoice), so the one that fails is "MUST NOT be null".
VALIDATOR_DEFECTS = {"InvoiceId-C-005-C"}

NOW = datetime(2026, 12, 1, tzinfo=UTC)  # after every row below: all GPU minutes are settled
MICROS = Decimal(1_000_000)


@dataclasses.dataclass(frozen=True)
class ValidatorRun:
    total: int
    passed: int
    failed: int
    failing: frozenset[str]
    passing: frozenset[str]
    output: str


class FocusValidator:
    def __init__(self, python: Path) -> None:
        self.python = python
        found = subprocess.run(
            [str(python), "-c", "import focus_validator, pathlib; print(pathlib.Path(focus_validator.__file__).parent)"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        # It reads its ISO currency list by a path relative to the folder above its package.
        self.cwd = Path(found.stdout.strip()).parent

    def validate(self, data: Path) -> ValidatorRun:
        run = subprocess.run(
            [str(self.python), "-m", "focus_validator.main", "--data-file", str(data),
             "--validate-version", FOCUS_MODEL, "--block-download", "--show-violations",
             "--applicability-criteria", ",".join(APPLICABILITY_CRITERIA)],
            cwd=self.cwd, env={**os.environ, "PYTHONIOENCODING": "utf-8"},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        output = run.stdout + run.stderr
        # It exits 0 whatever the rules say: the summary line is the verdict.
        summary = re.search(r"Total: (\d+) \| Pass: (\d+) \| Fail: (\d+) \| Skipped: (\d+)", output)
        assert run.returncode == 0 and summary, output[-4000:]
        failing = frozenset(re.findall(r"^(?:❌|\[FAIL\]) (\S+): FAIL", output, re.MULTILINE))
        passing = frozenset(re.findall(r"^(?:✅|\[PASS\]) (\S+): PASS", output, re.MULTILINE))
        total, passed, failed, _ = (int(n) for n in summary.groups())
        assert len(failing) == failed, output[-4000:]
        return ValidatorRun(total, passed, failed, failing, passing, output)


def _python_312() -> Path | None:
    """The oldest Python >= 3.12 here: this one, one on PATH or one pyenv installed."""
    candidates = [sys.executable, *(shutil.which(f"python3.{minor}") or "" for minor in range(12, 16))]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates += [str(p / "bin" / "python") for p in pyenv.glob("3.*") if (p / "bin" / "python").exists()]
    found: list[tuple[tuple[int, int], str]] = []
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(*sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            continue
        version = tuple(int(n) for n in out.split())
        if version >= (3, 12):
            found.append(((version[0], version[1]), candidate))
    return Path(min(found)[1]) if found else None


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


@pytest.fixture(scope="session")
def focus_validator() -> FocusValidator:
    """focus-validator in its own virtual environment, made once and kept under .cache/ (a marker
    file written last says it is complete and which versions it holds)."""
    marker = VALIDATOR_VENV / "aifinops-requirements.txt"
    wanted = "\n".join(VALIDATOR_REQUIREMENTS)
    python = _venv_python(VALIDATOR_VENV)
    with process_lock(VALIDATOR_VENV.with_name(f"{VALIDATOR_VENV.name}.lock")):  # one builder at a time
        if marker.is_file() and marker.read_text() == wanted and python.exists():
            return FocusValidator(python)
        base = _python_312()
        if base is None:
            pytest.skip("focus-validator needs Python >= 3.12: none on PATH, in pyenv, or running this test")
        shutil.rmtree(VALIDATOR_VENV, ignore_errors=True)  # an older or a half-made one
        subprocess.run([str(base), "-m", "venv", str(VALIDATOR_VENV)], check=True, capture_output=True, timeout=300)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *VALIDATOR_REQUIREMENTS],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if pip.returncode != 0:
            pytest.fail(f"could not install {' '.join(VALIDATOR_REQUIREMENTS)} with {base}:\n{pip.stderr[-3000:]}")
        marker.write_text(wanted)
    return FocusValidator(python)


# -- the fleet -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GpuCharge:
    minute: str
    kind: str
    subject: str
    department: str
    seconds: float
    cost_micro_usd: int | None


@dataclasses.dataclass
class Fleet:
    share: Path
    boxes: list[Box]
    gpu: dict[str, list[GpuCharge]]  # host id -> its charges

    def requests(self) -> Iterator[tuple[str, RequestRecord]]:
        for box in self.boxes:
            for row in box.rows:
                yield box.publisher.host_id, row


def _gpu_charges(name: str) -> list[GpuCharge]:
    kinds = [("user", f"{name}-ann", "eng"), ("os_user", "root", ""), ("idle", "idle", "eng"), ("other", "other", "")]
    return [
        GpuCharge(
            f"2026-11-{10 + i % 6:02d}T{i % 24:02d}:{i % 60:02d}:00+00:00",
            *kinds[i % 4],
            round(7.5 + i * 0.37, 3),
            None if i % 11 == 0 else 40 + 3 * i,  # now and then a minute with no known price
        )
        for i in range(60)
    ]


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    share = tmp_path / "share"
    boxes, gpu = [], {}
    for seed, name, count in ((1, "alpha", 300), (2, "beta", 200)):
        box = make_box(tmp_path, share, name)
        box.publisher = FleetPublisher(box.db, share, host_id(box.data), hostname=name, now=lambda: NOW)
        rows = rows_for(box, seed, count)
        # A local call that answered nothing yet cost compute time: priced per request.
        rows.append(dataclasses.replace(rows[0], id=f"{name}-{count}", parent_id="", input_tokens=0, output_tokens=0,
                                        cost_micro_usd=1_234, price_source="local-compute", route="local",
                                        provider="local", cache_hit=False))  # fmt: skip
        box.add(rows)
        charges = _gpu_charges(name)
        with box.db.transaction() as conn:
            conn.executemany(
                "INSERT INTO gpu_charges (minute, gpu_index, kind, subject, department, seconds, cost_micro_usd)"
                " VALUES (?, 0, ?, ?, ?, ?, ?)",
                [(c.minute, c.kind, c.subject, c.department, c.seconds, c.cost_micro_usd) for c in charges],
            )
        outcome = box.publisher.publish_once()
        assert outcome.rows == {"requests": count + 1, "gpu": len(charges)}
        boxes.append(box)
        gpu[box.publisher.host_id] = charges
    return Fleet(share, boxes, gpu)


def export(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as an admin runs it (AIFINOPS_HOME is the test's own, see conftest)."""
    run = subprocess.run([sys.executable, "-m", "agent", "fleet", "export", "--format", "focus", *args],
                         env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def micros(usd: str) -> int:
    value = Decimal(usd) * MICROS
    assert value == value.to_integral_value(), usd  # never more precise than a micro-USD
    return int(value)


def grain(row: RequestRecord) -> tuple[object, ...]:
    """What sets two export rows of one (day, user, model, host) apart: the row's tags and price."""
    unit = "Requests" if row.input_tokens + row.output_tokens == 0 and (row.cost_micro_usd or 0) else "Tokens"
    return (row.provider, row.department, row.feature, row.tier, row.route, row.cache_hit, row.price_source,
            row.cost_micro_usd is None, unit)  # fmt: skip


# -- the tests ---------------------------------------------------------------------------------


def test_the_focus_export_adds_up_to_the_ledgers_and_passes_the_focus_validator(
    fleet: Fleet, tmp_path: Path, focus_validator: FocusValidator
) -> None:
    out_csv, out_parquet = tmp_path / "focus.csv", tmp_path / "focus.parquet"
    printed = export("--out", str(out_csv), "--since", "2026-11-01", "--share", str(fleet.share)).stdout
    export("--out", str(out_parquet), "--since", "2026-11-01", "--share", str(fleet.share))

    rows = read_csv(out_csv)
    ledger = list(fleet.requests())
    request_rows = [r for r in rows if r["SkuId"] != "gpu-time"]
    gpu_rows = [r for r in rows if r["SkuId"] == "gpu-time"]

    # Money: exactly the ledgers' micro-USD, per (day, user, model, host) and in all.
    expected_cost: Counter[tuple[str, ...]] = Counter()
    expected_grains: dict[tuple[str, ...], set[tuple[object, ...]]] = defaultdict(set)
    for host, rec in ledger:
        key = (rec.ts[:10], rec.user_name, rec.model, host)
        expected_cost[key] += rec.cost_micro_usd or 0
        expected_grains[key].add(grain(rec))
    exported_cost: Counter[tuple[str, ...]] = Counter()
    exported_rows: Counter[tuple[str, ...]] = Counter()
    for r in request_rows:
        key = (r["ChargePeriodStart"][:10], json.loads(r["Tags"])["user"], r["SkuId"], r["ResourceId"])
        exported_cost[key] += micros(r["BilledCost"])
        exported_rows[key] += 1
    assert exported_cost == expected_cost
    assert sum(micros(r["BilledCost"]) for r in request_rows) == sum(rec.cost_micro_usd or 0 for _, rec in ledger)
    assert exported_rows == Counter({key: len(grains) for key, grains in expected_grains.items()})
    gpu_charges = [c for charges in fleet.gpu.values() for c in charges]
    assert sum(micros(r["BilledCost"]) for r in gpu_rows) == sum(c.cost_micro_usd or 0 for c in gpu_charges)
    gpu_groups = {(h, c.minute[:10], c.kind, c.subject, c.department, c.cost_micro_usd is None)
                  for h, charges in fleet.gpu.items() for c in charges}  # fmt: skip
    assert len(gpu_rows) == len(gpu_groups)
    assert sum(Decimal(r["ConsumedQuantity"]) for r in gpu_rows) == pytest.approx(
        Decimal(str(sum(c.seconds for c in gpu_charges))), abs=Decimal("0.001") * len(gpu_rows)
    )
    assert f"wrote {len(rows)} FOCUS 1.2 row(s) ({len(request_rows)} request, {len(gpu_rows)} GPU)" in printed

    # focus-validator 2.2.1 reads "ChargeClass is not Correction" as "ChargeClass IS NOT NULL AND ...",
    # which no row of ours (ChargeClass null: no corrections) meets: the rules that hold only for
    # such rows (unit price x quantity = cost, Usage rows have prices and SKUs) are checked here.
    for r in rows:
        assert r["BilledCost"] == r["EffectiveCost"] == r["ListCost"] == r["ContractedCost"]
        assert (r["BillingCurrency"], r["ChargeCategory"], r["ChargeClass"]) == ("USD", "Usage", "")
        for column in (
            "ListUnitPrice",
            "ContractedUnitPrice",
            "PricingQuantity",
            "PricingUnit",
            "PricingCategory",
            "SkuId",
            "SkuPriceId",
            "ConsumedQuantity",
            "ConsumedUnit",
            "ResourceId",
            "ResourceName",
        ):
            assert r[column], column  # fmt: skip
        # A row sums requests: its unit price is their average, to 1e-18 USD.
        quantity = Decimal(r["PricingQuantity"])
        for unit_price, cost in (("ListUnitPrice", "ListCost"), ("ContractedUnitPrice", "ContractedCost")):
            assert abs(Decimal(r[unit_price]) * quantity - Decimal(r[cost])) <= quantity * Decimal("0.5e-18")
        start = datetime.fromisoformat(r["ChargePeriodStart"])
        assert r["ChargePeriodStart"].endswith("T00:00:00Z") and r["BillingPeriodStart"] == "2026-11-01T00:00:00Z"
        assert datetime.fromisoformat(r["ChargePeriodEnd"]) - start == timedelta(days=1)
        tags = json.loads(r["Tags"])
        assert isinstance(tags, dict) and all(isinstance(v, str | bool) for v in tags.values()), tags

    # Cached answers cost what the ledger says, their saving is a tag; unknown prices cost 0.
    hits = [json.loads(r["Tags"]) for r in request_rows if "aifinops/cache_hit" in r["Tags"]]
    saved = sum(micros(t["aifinops/cache_saved_usd"]) for t in hits)
    assert saved == sum(rec.cost_saved_micro_usd for _, rec in ledger if rec.cache_hit) > 0
    unknown = [r for r in rows if json.loads(r["Tags"]).get("aifinops/price_unknown") is True]
    assert unknown and all(r["BilledCost"] == "0.000000" for r in unknown)
    unpriced = sum(rec.cost_micro_usd is None for _, rec in ledger)
    unpriced_gpu = sum(c.cost_micro_usd is None for c in gpu_charges)
    assert f"{unpriced} request(s) and {unpriced_gpu} GPU minute(s) have no known price" in printed
    [per_request] = [r for r in request_rows if r["PricingUnit"] == "Requests" and r["ResourceName"] == "alpha"]
    assert (per_request["PricingQuantity"], per_request["ListUnitPrice"]) == ("1.000", "0.001234000000000000")
    assert per_request["SkuPriceId"].endswith(":local-compute:per-request")
    columns = list(rows[0])
    assert columns.index("Tags") < columns.index("x_HostProviderName") and columns[-1].startswith("x_")

    # The Parquet file holds the same rows, with decimal money and UTC timestamps.
    table = pq.read_table(out_parquet)
    assert table.schema.field("BilledCost").type == pa.decimal128(18, 6)
    assert table.schema.field("ChargePeriodStart").type == pa.timestamp("us", tz="UTC")
    assert table.column_names == columns
    as_parquet = sorted((str(r["BilledCost"]), r["ChargePeriodStart"].strftime("%Y-%m-%dT%H:%M:%SZ"), r["Tags"],
                         r["SkuPriceId"], r["ResourceId"]) for r in table.to_pylist())  # fmt: skip
    as_csv = sorted(
        (r["BilledCost"], r["ChargePeriodStart"], r["Tags"], r["SkuPriceId"], r["ResourceId"]) for r in rows
    )
    assert as_parquet == as_csv

    for path in (out_csv, out_parquet):
        verdict = focus_validator.validate(path)
        assert verdict.failing == VALIDATOR_DEFECTS, verdict.output[-6000:]
        # The rules that matter most did run (not skipped), and passed.
        assert {"InvoiceId-C-003-C", "ListCost-C-009-C", "ListUnitPrice-C-010-C", "BilledCost-C-005-C",
                "Tags-C-001-M", "ChargePeriodStart-C-002-M", "ConsumedUnit-C-003-O",
                "CostAndUsage-D-006-M"} <= verdict.passing, path  # fmt: skip
        assert verdict.passed > 200, verdict.output[-6000:]


def test_the_window_is_whole_utc_days_and_a_bad_file_name_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "week.csv"
    printed = export("--out", str(out), "--since", "2026-11-12T15:00:00", "--until", "2026-11-15",
                     "--share", str(fleet.share)).stdout  # fmt: skip
    rows = read_csv(out)
    assert {r["ChargePeriodStart"][:10] for r in rows} == {"2026-11-12", "2026-11-13", "2026-11-14"}
    in_window = [rec for _, rec in fleet.requests() if "2026-11-12" <= rec.ts[:10] < "2026-11-15"]
    billed = sum(micros(r["BilledCost"]) for r in rows if r["SkuId"] != "gpu-time")
    assert billed == sum(rec.cost_micro_usd or 0 for rec in in_window)
    assert "for 2026-11-12 to 2026-11-14 (UTC) from 2 host(s)" in printed

    refused = subprocess.run([sys.executable, "-m", "agent", "fleet", "export", "--out", str(tmp_path / "x.json"),
                              "--share", str(fleet.share)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 1 and "a .csv or a .parquet file" in refused.stderr
    assert not (tmp_path / "x.json").exists()
