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

# Spend per UTC day and per (user, department, feature, model, provider, route, tier): what the
# dashboard reads, so it costs the same with a million requests as with ten. The trigger keeps it
# in the same transaction as each request row (requests are append-only: never updated or
# deleted), and the backfill makes it whole for ledgers written before it existed.
M007_SPEND_DAILY = """
CREATE TABLE spend_daily (
    day                          TEXT NOT NULL,
    user_id                      INTEGER NOT NULL,
    department                   TEXT NOT NULL,
    feature                      TEXT NOT NULL,
    model                        TEXT NOT NULL,
    provider                     TEXT NOT NULL,
    route                        TEXT NOT NULL,
    tier                         TEXT NOT NULL,
    requests                     INTEGER NOT NULL,
    input_tokens                 INTEGER NOT NULL,
    output_tokens                INTEGER NOT NULL,
    cost_micro_usd               INTEGER NOT NULL,
    cache_saved_micro_usd        INTEGER NOT NULL,
    compression_saved_micro_usd  INTEGER NOT NULL,
    unpriced_requests            INTEGER NOT NULL,
    failed_requests              INTEGER NOT NULL,
    PRIMARY KEY (user_id, day, department, feature, model, provider, route, tier)
) WITHOUT ROWID;
CREATE INDEX spend_daily_day ON spend_daily(day);
INSERT INTO spend_daily
SELECT substr(ts, 1, 10), user_id, department, feature, model, provider, route, tier,
       sum(parent_id = ''), sum(input_tokens), sum(output_tokens), coalesce(sum(cost_micro_usd), 0),
       sum(CASE WHEN cache_hit THEN cost_saved_micro_usd ELSE 0 END),
       sum(CASE WHEN cache_hit THEN 0 ELSE cost_saved_micro_usd END),
       sum(cost_micro_usd IS NULL), sum(status != 'ok')
FROM requests GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;
CREATE TRIGGER requests_spend_daily AFTER INSERT ON requests BEGIN
    INSERT INTO spend_daily VALUES (
        substr(NEW.ts, 1, 10), NEW.user_id, NEW.department, NEW.feature, NEW.model, NEW.provider,
        NEW.route, NEW.tier, NEW.parent_id = '', NEW.input_tokens, NEW.output_tokens,
        coalesce(NEW.cost_micro_usd, 0),
        CASE WHEN NEW.cache_hit THEN NEW.cost_saved_micro_usd ELSE 0 END,
        CASE WHEN NEW.cache_hit THEN 0 ELSE NEW.cost_saved_micro_usd END,
        NEW.cost_micro_usd IS NULL, NEW.status != 'ok')
    ON CONFLICT (user_id, day, department, feature, model, provider, route, tier) DO UPDATE SET
        requests = requests + excluded.requests,
        input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cost_micro_usd = cost_micro_usd + excluded.cost_micro_usd,
        cache_saved_micro_usd = cache_saved_micro_usd + excluded.cache_saved_micro_usd,
        compression_saved_micro_usd = compression_saved_micro_usd + excluded.compression_saved_micro_usd,
        unpriced_requests = unpriced_requests + excluded.unpriced_requests,
        failed_requests = failed_requests + excluded.failed_requests;
END
"""

# Budget holds: what the request was expected to send (the o200k estimate of its input, before
# the provider counted) and what was held for it, so each model's reported / estimated input ratio
# can be learned from the ledger (agent.budgets.calibration). Fleet publishing: how far each
# stream of rows has reached the share (agent.fleet.publisher).
M008_HOLDS_AND_FLEET = """
ALTER TABLE requests ADD COLUMN input_tokens_expected INTEGER;
ALTER TABLE requests ADD COLUMN hold_micro_usd INTEGER;
CREATE INDEX requests_model_ts ON requests(model, ts);
CREATE TABLE fleet_watermarks (
    stream       TEXT PRIMARY KEY,
    position     TEXT NOT NULL,
    segments     INTEGER NOT NULL,
    updated_at   TEXT NOT NULL
)
"""

M009_THROTTLES = """
CREATE TABLE throttles (
    user_name       TEXT PRIMARY KEY,
    since           TEXT NOT NULL,
    limit_per_hour  REAL NOT NULL,
    reason          TEXT NOT NULL
)
"""

# The alert outbox (agent.alerts.outbox): one row per alert event and channel, written with the
# event, until the receiver took it or it failed for good. No URL: channels resolve when posting.
M010_DELIVERIES = """
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    event_id     INTEGER NOT NULL REFERENCES events(id),
    channel      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      TEXT NOT NULL,
    last_error   TEXT NOT NULL DEFAULT '',
    finished_at  TEXT,
    UNIQUE (event_id, channel)
);
CREATE INDEX deliveries_pending ON deliveries(state, next_at)
"""

# Deliveries learn two things: the fleet key that claims an alert on the share (one post for the
# fleet), and the state 'skipped' (another host of the fleet posted it). SQLite cannot change a
# CHECK: the table is rebuilt, rows kept.
M011_DELIVERY_CLAIMS = """
CREATE TABLE deliveries_new (
    id           INTEGER PRIMARY KEY,
    event_id     INTEGER NOT NULL REFERENCES events(id),
    channel      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'skipped')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      TEXT NOT NULL,
    last_error   TEXT NOT NULL DEFAULT '',
    finished_at  TEXT,
    claim        TEXT,
    UNIQUE (event_id, channel)
);
INSERT INTO deliveries_new (id, event_id, channel, state, attempts, next_at, last_error, finished_at)
    SELECT id, event_id, channel, state, attempts, next_at, last_error, finished_at FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_pending ON deliveries(state, next_at)
"""

# Usage in full: the provider's prompt cache (tokens read and written, and what it saved) and
# reasoning tokens; the daily rollup sums the provider cache's saving beside ours.
M012_PROVIDER_CACHE = """
ALTER TABLE requests ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN provider_cache_saved_micro_usd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE spend_daily ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE spend_daily ADD COLUMN provider_cache_saved_micro_usd INTEGER NOT NULL DEFAULT 0;
DROP TRIGGER requests_spend_daily;
CREATE TRIGGER requests_spend_daily AFTER INSERT ON requests BEGIN
    INSERT INTO spend_daily (day, user_id, department, feature, model, provider, route, tier, requests,
                             input_tokens, output_tokens, cost_micro_usd, cache_saved_micro_usd,
                             compression_saved_micro_usd, unpriced_requests, failed_requests,
                             cache_read_tokens, provider_cache_saved_micro_usd)
    VALUES (
        substr(NEW.ts, 1, 10), NEW.user_id, NEW.department, NEW.feature, NEW.model, NEW.provider,
        NEW.route, NEW.tier, NEW.parent_id = '', NEW.input_tokens, NEW.output_tokens,
        coalesce(NEW.cost_micro_usd, 0),
        CASE WHEN NEW.cache_hit THEN NEW.cost_saved_micro_usd ELSE 0 END,
        CASE WHEN NEW.cache_hit THEN 0 ELSE NEW.cost_saved_micro_usd END,
        NEW.cost_micro_usd IS NULL, NEW.status != 'ok', NEW.cache_read_tokens,
        NEW.provider_cache_saved_micro_usd)
    ON CONFLICT (user_id, day, department, feature, model, provider, route, tier) DO UPDATE SET
        requests = requests + excluded.requests,
        input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cost_micro_usd = cost_micro_usd + excluded.cost_micro_usd,
        cache_saved_micro_usd = cache_saved_micro_usd + excluded.cache_saved_micro_usd,
        compression_saved_micro_usd = compression_saved_micro_usd + excluded.compression_saved_micro_usd,
        unpriced_requests = unpriced_requests + excluded.unpriced_requests,
        failed_requests = failed_requests + excluded.failed_requests,
        cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
        provider_cache_saved_micro_usd = provider_cache_saved_micro_usd + excluded.provider_cache_saved_micro_usd;
END
"""

MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("m001_initial", M001_INITIAL),
    ("m002_cache", M002_CACHE),
    ("m003_routing", M003_ROUTING),
    ("m004_policy", M004_POLICY),
    ("m005_gpu", M005_GPU),
    ("m006_preferences", M006_PREFERENCES),
    ("m007_spend_daily", M007_SPEND_DAILY),
    ("m008_holds_and_fleet", M008_HOLDS_AND_FLEET),
    ("m009_throttles", M009_THROTTLES),
    ("m010_deliveries", M010_DELIVERIES),
    ("m011_delivery_claims", M011_DELIVERY_CLAIMS),
    ("m012_provider_cache", M012_PROVIDER_CACHE),
)
