"""What a host publishes: Parquet segments of its finished ledger rows, and their schemas.

Two streams, one schema each: ``requests`` (one row per request, its tokens, money and savings)
and ``gpu`` (one row per GPU minute charge). Money is integer micro-USD; no prompt or answer text
is ever in a segment (the ledger holds none). Segments are immutable: each is written once, under
a new name, and only the host's manifest (``summary.json``) says which ones count.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from agent.fleet.files import write_atomic

# Bumped when a column changes meaning or goes; readers skip hosts that write a newer one.
SCHEMA_VERSION = 1
STREAMS = ("requests", "gpu")
# Each host folder's manifest: which segments count, totals, watermarks.
MANIFEST = "summary.json"

REQUESTS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("day", pa.date32()),
        ("host_id", pa.string()),
        ("user_name", pa.string()),
        ("department", pa.string()),
        ("feature", pa.string()),
        ("requested_model", pa.string()),
        ("model", pa.string()),
        ("provider", pa.string()),
        ("route", pa.string()),
        ("tier", pa.string()),
        ("status", pa.string()),
        ("parent_id", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("tokens_estimated", pa.bool_()),
        ("cost_micro_usd", pa.int64()),  # null: the price was unknown
        ("price_source", pa.string()),
        ("cache_hit", pa.bool_()),
        ("cache_saved_micro_usd", pa.int64()),
        ("compression_saved_micro_usd", pa.int64()),
        ("routing_saved_micro_usd", pa.int64()),
        ("latency_ms", pa.int64()),
        ("reason", pa.string()),  # "" unless fleet.publish_reasons
        # Usage in full (added in schema 1, at the end: segments written before have none of them,
        # read as null; readers use union_by_name): input from / to the provider's prompt cache,
        # reasoning tokens, and what the provider's cache took off the bill.
        ("cache_read_tokens", pa.int64()),
        ("cache_write_tokens", pa.int64()),
        ("reasoning_tokens", pa.int64()),
        ("provider_cache_saved_micro_usd", pa.int64()),
    ],
    metadata={"aifinops.schema": str(SCHEMA_VERSION), "aifinops.stream": "requests"},
)

GPU_SCHEMA = pa.schema(
    [
        ("minute", pa.timestamp("us", tz="UTC")),
        ("day", pa.date32()),
        ("host_id", pa.string()),
        ("gpu_index", pa.int32()),
        ("kind", pa.string()),  # user, os_user, idle, other
        ("subject", pa.string()),
        ("department", pa.string()),
        ("seconds", pa.float64()),
        ("cost_micro_usd", pa.int64()),
    ],
    metadata={"aifinops.schema": str(SCHEMA_VERSION), "aifinops.stream": "gpu"},
)

SCHEMAS = {"requests": REQUESTS_SCHEMA, "gpu": GPU_SCHEMA}


def encode(table: pa.Table) -> bytes:
    """A segment's bytes: zstd-compressed Parquet, one row group."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=max(table.num_rows, 1))
    return sink.getvalue()


def write_segment(path: Path, table: pa.Table) -> bytes:
    """Write the segment (temp file + fsync + rename) and return its bytes (for the checksum)."""
    data = encode(table)
    write_atomic(path, data)
    return data
