"""Append-only, named migrations. Never edit one that has shipped: add the next."""

from __future__ import annotations

M001_INITIAL = """
CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    department  TEXT NOT NULL,
    role        TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id),
    token_hash  TEXT NOT NULL UNIQUE,
    label       TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE TABLE requests (
    id                    TEXT PRIMARY KEY,
    ts                    TEXT NOT NULL,
    user_id               INTEGER NOT NULL REFERENCES users(id),
    user_name             TEXT NOT NULL,
    department            TEXT NOT NULL,
    feature               TEXT NOT NULL DEFAULT '',
    requested_model       TEXT NOT NULL,
    model                 TEXT NOT NULL,
    provider              TEXT NOT NULL,
    route                 TEXT NOT NULL,
    reason                TEXT NOT NULL DEFAULT '',
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    tokens_estimated      INTEGER NOT NULL DEFAULT 0,
    cost_micro_usd        INTEGER,
    price_source          TEXT NOT NULL,
    cost_saved_micro_usd  INTEGER NOT NULL DEFAULT 0,
    cache_hit             INTEGER NOT NULL DEFAULT 0,
    latency_ms            INTEGER NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('ok', 'error', 'aborted')),
    error_type            TEXT NOT NULL DEFAULT '',
    stream                INTEGER NOT NULL DEFAULT 0,
    attempts              INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX requests_ts ON requests(ts);
CREATE INDEX requests_user_ts ON requests(user_id, ts);
CREATE INDEX requests_department_ts ON requests(department, ts);
"""

M002_CACHE = """
CREATE TABLE cache_entries (
    id                    INTEGER PRIMARY KEY,
    scope                 TEXT NOT NULL,
    fingerprint           TEXT NOT NULL,
    model                 TEXT NOT NULL,
    query_hash            TEXT NOT NULL,
    query                 TEXT NOT NULL,
    answer                TEXT NOT NULL,
    finish_reason         TEXT NOT NULL,
    vector                BLOB NOT NULL,
    input_tokens          INTEGER NOT NULL,
    output_tokens         INTEGER NOT NULL,
    cost_micro_usd        INTEGER,
    created_at            TEXT NOT NULL,
    last_hit_at           TEXT,
    hit_count             INTEGER NOT NULL DEFAULT 0,
    expires_at            TEXT NOT NULL
);
CREATE INDEX cache_entries_exact ON cache_entries(scope, fingerprint, query_hash);
CREATE INDEX cache_entries_expiry ON cache_entries(expires_at)
"""

M003_ROUTING = """
ALTER TABLE requests ADD COLUMN tier TEXT NOT NULL DEFAULT '';
ALTER TABLE requests ADD COLUMN route_score REAL;
ALTER TABLE requests ADD COLUMN confidence REAL;
ALTER TABLE requests ADD COLUMN parent_id TEXT NOT NULL DEFAULT '';
ALTER TABLE requests ADD COLUMN prompt_tokens_before INTEGER;
ALTER TABLE requests ADD COLUMN prompt_tokens_after INTEGER;
ALTER TABLE requests ADD COLUMN optimizer_note TEXT NOT NULL DEFAULT ''
"""

M004_POLICY = """
CREATE TABLE policies (
    id           INTEGER PRIMARY KEY,
    version      INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    body         TEXT NOT NULL,
    signature    TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    applied_at   TEXT NOT NULL
);
CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    ts           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    user_id      INTEGER,
    department   TEXT,
    dedupe_key   TEXT UNIQUE,
    body         TEXT NOT NULL
);
CREATE INDEX events_user ON events(user_id, id)
"""

M005_GPU = """
CREATE TABLE gpu_minutes (
    gpu_index          INTEGER NOT NULL,
    gpu_name           TEXT NOT NULL,
    minute             TEXT NOT NULL,
    busy_s             REAL NOT NULL,
    idle_s             REAL NOT NULL,
    unknown_s          REAL NOT NULL,
    energy_wh          REAL,
    util_avg_pct       REAL,
    peak_mem_used_mib  REAL,
    mem_total_mib      REAL,
    samples            INTEGER NOT NULL,
    PRIMARY KEY (gpu_index, minute)
);
CREATE TABLE gpu_charges (
    minute          TEXT NOT NULL,
    gpu_index       INTEGER NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('user', 'os_user', 'idle', 'other')),
    subject         TEXT NOT NULL,
    department      TEXT NOT NULL DEFAULT '',
    seconds         REAL NOT NULL,
    cost_micro_usd  INTEGER,
    PRIMARY KEY (minute, gpu_index, kind, subject)
);
CREATE INDEX gpu_charges_subject ON gpu_charges(kind, subject, minute);
ALTER TABLE requests ADD COLUMN model_load_ms INTEGER;
CREATE INDEX requests_user_name_ts ON requests(user_name, ts);
CREATE INDEX requests_feature_ts ON requests(feature, ts)
"""

M006_PREFERENCES = """
CREATE TABLE user_preferences (
    user_id       INTEGER PRIMARY KEY REFERENCES users(id),
    cloud_paused  INTEGER NOT NULL DEFAULT 0,
    updated_at    TEXT NOT NULL
)
"""

MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("m001_initial", M001_INITIAL),
    ("m002_cache", M002_CACHE),
    ("m003_routing", M003_ROUTING),
    ("m004_policy", M004_POLICY),
    ("m005_gpu", M005_GPU),
    ("m006_preferences", M006_PREFERENCES),
)
