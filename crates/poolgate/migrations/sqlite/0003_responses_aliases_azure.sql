-- poolgate schema v3 (SQLite), issue #15: Azure backends and the Responses capability, model
-- aliases, response affinity, cached tokens in usage records.

-- SQLite cannot change a CHECK constraint: the backends table is rebuilt with `azure` allowed
-- in `api` and two new columns. No table references `backends`, so it can be dropped in place.
CREATE TABLE backends_v3 (
    id                    TEXT PRIMARY KEY NOT NULL,
    name                  TEXT NOT NULL UNIQUE,
    label                 TEXT NOT NULL DEFAULT '',
    api_base_url          TEXT NOT NULL,
    api_key_sealed        TEXT NOT NULL,
    api_key_mask          TEXT NOT NULL,
    api                   TEXT NOT NULL CHECK (api IN ('openai', 'anthropic', 'azure')),
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
    updated_at            INTEGER NOT NULL,
    -- NULL: the API kind's default (on for openai, by URL form and version for azure).
    responses             INTEGER,
    -- Azure's api-version; NULL: the default.
    api_version           TEXT
);
INSERT INTO backends_v3 (id, name, label, api_base_url, api_key_sealed, api_key_mask, api,
    timeout_seconds, rpm_limit, weight, pool, enabled, status, model_mappings, source,
    cooldown_until, consecutive_429_count, last_error, metadata, created_at, updated_at)
SELECT id, name, label, api_base_url, api_key_sealed, api_key_mask, api,
    timeout_seconds, rpm_limit, weight, pool, enabled, status, model_mappings, source,
    cooldown_until, consecutive_429_count, last_error, metadata, created_at, updated_at
FROM backends;
DROP TABLE backends;
ALTER TABLE backends_v3 RENAME TO backends;
CREATE INDEX backends_pool ON backends (pool);

-- Prompt tokens the upstream read from its cache (part of prompt_tokens).
ALTER TABLE usage_records ADD COLUMN cached_tokens INTEGER;

-- One name for another canonical model.
CREATE TABLE model_aliases (
    alias      TEXT PRIMARY KEY NOT NULL,
    target     TEXT NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('config', 'api')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Which backend made each Responses API response (and for which caller), until it expires.
-- Written behind the request path; loaded into memory at start.
CREATE TABLE response_owners (
    response_id TEXT PRIMARY KEY NOT NULL,
    backend_id  TEXT NOT NULL,
    caller      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX response_owners_expires ON response_owners (expires_at);
