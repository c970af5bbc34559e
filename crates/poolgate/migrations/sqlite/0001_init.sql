-- poolgate schema v1 (SQLite).
CREATE TABLE pools (
    name        TEXT PRIMARY KEY NOT NULL,
    priority    INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
);
INSERT INTO pools (name, priority, description, created_at) VALUES
    ('primary', 0, 'Tried first', 0),
    ('fallback', 1, 'Used only when no primary backend is ready', 0);

CREATE TABLE backends (
    id                    TEXT PRIMARY KEY NOT NULL,
    name                  TEXT NOT NULL UNIQUE,
    label                 TEXT NOT NULL DEFAULT '',
    api_base_url          TEXT NOT NULL,
    api_key_sealed        TEXT NOT NULL,
    api_key_mask          TEXT NOT NULL,
    api                   TEXT NOT NULL CHECK (api IN ('openai', 'anthropic')),
    timeout_seconds       INTEGER NOT NULL CHECK (timeout_seconds > 0),
    rpm_limit             INTEGER NOT NULL CHECK (rpm_limit >= 0),
    weight                INTEGER NOT NULL DEFAULT 1 CHECK (weight > 0),
    pool                  TEXT NOT NULL REFERENCES pools (name) ON UPDATE CASCADE ON DELETE RESTRICT,
    enabled               INTEGER NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('healthy', 'cooling', 'error', 'disabled')),
    model_mappings        TEXT NOT NULL DEFAULT '{}',
    source                TEXT NOT NULL CHECK (source IN ('config', 'api')),
    cooldown_until        INTEGER,
    consecutive_429_count INTEGER NOT NULL DEFAULT 0,
    last_error            TEXT,
    metadata              TEXT NOT NULL DEFAULT '{}',
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
);
CREATE INDEX backends_pool ON backends (pool);

CREATE TABLE client_keys (
    id             TEXT PRIMARY KEY NOT NULL,
    name           TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    secret_hash    BLOB NOT NULL,
    rpm_limit      INTEGER NOT NULL DEFAULT 0 CHECK (rpm_limit >= 0),
    allowed_models TEXT NOT NULL DEFAULT '[]',
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER
);

CREATE TABLE usage_records (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id        TEXT NOT NULL,
    ts                INTEGER NOT NULL,
    client_key_id     TEXT,
    endpoint          TEXT NOT NULL,
    canonical_model   TEXT,
    backend_id        TEXT,
    upstream_model    TEXT,
    pool              TEXT,
    attempts          INTEGER NOT NULL,
    status            INTEGER NOT NULL,
    outcome           TEXT NOT NULL,
    error_kind        TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    total_tokens      INTEGER,
    latency_ms        INTEGER NOT NULL,
    ttfb_ms           INTEGER,
    streamed          INTEGER NOT NULL
);
CREATE INDEX usage_ts ON usage_records (ts);
CREATE INDEX usage_backend_ts ON usage_records (backend_id, ts);
CREATE INDEX usage_model_ts ON usage_records (canonical_model, ts);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
