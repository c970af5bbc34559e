-- poolgate schema v1 (PostgreSQL): the same concepts as ../0001_init.sql (SQLite), so one store
-- trait serves both. Times are Unix milliseconds (BIGINT) as in SQLite; JSON columns are TEXT
-- holding JSON, as in SQLite, so the rows map to the same records.
--
-- Differences, on purpose:
-- * usage_records is partitioned by day on `ts` (declarative RANGE partitioning); a retention
--   job drops whole partitions. poolgate_ensure_usage_partitions() creates the day partitions
--   ahead of time; rows for a day without one land in usage_records_default, so an insert never
--   fails.
-- * every integer column is BIGINT (the records' fields map to i64 either way).
-- * a configuration change (pools, backends' definitions, client keys, settings) bumps
--   config_version and notifies channel `poolgate_config` with 'config <version>' from a trigger,
--   in the writing transaction: every instance hears it at commit (LISTEN), and one that missed it
--   sees the version move (a periodic check). Health columns of backends do not count.
-- * a usage row is unique per (ts, request_id) (a unique key must include the partition key):
--   a batch retried after a lost acknowledgement is inserted with ON CONFLICT DO NOTHING and
--   never counts twice. The writer takes `ts` from the record (the request's arrival), never
--   from the clock at insert time, so a retry carries the same key.

CREATE TABLE pools (
    name        TEXT PRIMARY KEY,
    priority    BIGINT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);
INSERT INTO pools (name, priority, description, created_at) VALUES
    ('primary', 0, 'Tried first', 0),
    ('fallback', 1, 'Used only when no primary backend is ready', 0);

CREATE TABLE backends (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL UNIQUE,
    label                 TEXT NOT NULL DEFAULT '',
    api_base_url          TEXT NOT NULL,
    api_key_sealed        TEXT NOT NULL,
    api_key_mask          TEXT NOT NULL,
    api                   TEXT NOT NULL CHECK (api IN ('openai', 'anthropic')),
    timeout_seconds       BIGINT NOT NULL CHECK (timeout_seconds > 0),
    rpm_limit             BIGINT NOT NULL CHECK (rpm_limit >= 0),
    weight                BIGINT NOT NULL DEFAULT 1 CHECK (weight > 0),
    pool                  TEXT NOT NULL REFERENCES pools (name) ON UPDATE CASCADE ON DELETE RESTRICT,
    enabled               BOOLEAN NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('healthy', 'cooling', 'error', 'disabled')),
    model_mappings        TEXT NOT NULL DEFAULT '{}',
    source                TEXT NOT NULL CHECK (source IN ('config', 'api')),
    cooldown_until        BIGINT,
    consecutive_429_count BIGINT NOT NULL DEFAULT 0,
    last_error            TEXT,
    metadata              TEXT NOT NULL DEFAULT '{}',
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);
CREATE INDEX backends_pool ON backends (pool);

CREATE TABLE client_keys (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    secret_hash    BYTEA NOT NULL,
    rpm_limit      BIGINT NOT NULL DEFAULT 0 CHECK (rpm_limit >= 0),
    allowed_models TEXT NOT NULL DEFAULT '[]',
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT
);

CREATE TABLE usage_records (
    -- Paging cursor (newest first), like SQLite's AUTOINCREMENT seq; from one sequence, so unique
    -- in practice, but not a key (a key of a partitioned table must contain `ts`).
    seq               BIGINT GENERATED ALWAYS AS IDENTITY,
    request_id        TEXT NOT NULL,
    ts                BIGINT NOT NULL,
    client_key_id     TEXT,
    endpoint          TEXT NOT NULL,
    canonical_model   TEXT,
    backend_id        TEXT,
    upstream_model    TEXT,
    pool              TEXT,
    attempts          BIGINT NOT NULL,
    status            BIGINT NOT NULL,
    outcome           TEXT NOT NULL,
    error_kind        TEXT,
    prompt_tokens     BIGINT,
    completion_tokens BIGINT,
    total_tokens      BIGINT,
    latency_ms        BIGINT NOT NULL,
    ttfb_ms           BIGINT,
    streamed          BOOLEAN NOT NULL,
    CONSTRAINT usage_records_request UNIQUE (ts, request_id)
) PARTITION BY RANGE (ts);
CREATE TABLE usage_records_default PARTITION OF usage_records DEFAULT;
-- Indexes on the parent are created on every partition, present and future.
CREATE INDEX usage_seq ON usage_records (seq);
CREATE INDEX usage_backend_ts ON usage_records (backend_id, ts);
CREATE INDEX usage_model_ts ON usage_records (canonical_model, ts);

-- Creates the day partitions (UTC days) `usage_records_YYYYMMDD` covering [from_ms, from_ms +
-- days) that do not exist yet; returns how many it created. A day whose rows already sit in the
-- default partition is skipped (attaching it would fail); its rows stay correct where they are.
-- Safe to call from several instances at once (a transaction-scoped advisory lock serialises it).
CREATE FUNCTION poolgate_ensure_usage_partitions(from_ms BIGINT, days INTEGER)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    day_ms  CONSTANT BIGINT := 86400000;
    start   BIGINT := from_ms - (from_ms % day_ms);
    created INTEGER := 0;
    name    TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('poolgate_ensure_usage_partitions'));
    FOR i IN 0 .. GREATEST(days, 1) - 1 LOOP
        name := 'usage_records_' || to_char(DATE '1970-01-01' + ((start / day_ms) + i)::INTEGER, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM usage_records_default
            WHERE ts >= start + i * day_ms AND ts < start + (i + 1) * day_ms
        );
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF usage_records FOR VALUES FROM (%s) TO (%s)',
            name, start + i * day_ms, start + (i + 1) * day_ms
        );
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- Drops the day partitions that end at or before `before_ms` (retention), and deletes older rows
-- kept in the default partition; returns how many partitions it dropped.
CREATE FUNCTION poolgate_drop_usage_partitions(before_ms BIGINT)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    part    RECORD;
    dropped INTEGER := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('poolgate_ensure_usage_partitions'));
    FOR part IN
        SELECT child.relname AS name
        FROM pg_inherits
        JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
        JOIN pg_class child ON child.oid = pg_inherits.inhrelid
        WHERE parent.relname = 'usage_records'
          AND child.relname ~ '^usage_records_[0-9]{8}$'
          AND ((to_date(substr(child.relname, 15), 'YYYYMMDD') - DATE '1970-01-01')::BIGINT + 1)
              * 86400000 <= before_ms
    LOOP
        EXECUTE format('DROP TABLE %I', part.name);
        dropped := dropped + 1;
    END LOOP;
    DELETE FROM usage_records_default WHERE ts < before_ms;
    RETURN dropped;
END;
$$;

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Bumped by every configuration change (backends, pools, client keys, settings) in the same
-- transaction; instances compare it periodically as a backstop for missed LISTEN/NOTIFY.
CREATE TABLE config_version (
    id      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    version BIGINT NOT NULL
);
INSERT INTO config_version (id, version) VALUES (TRUE, 0);

-- Every configuration write bumps the version and announces it (delivered at commit, never for
-- a rolled-back write). Statement-level: one bump per statement, however many rows.
CREATE FUNCTION poolgate_config_changed()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current BIGINT;
BEGIN
    UPDATE config_version SET version = version + 1 RETURNING version INTO current;
    PERFORM pg_notify('poolgate_config', 'config ' || current);
    RETURN NULL;
END;
$$;
CREATE TRIGGER pools_changed AFTER INSERT OR UPDATE OR DELETE ON pools
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();
CREATE TRIGGER backends_added_or_removed AFTER INSERT OR DELETE ON backends
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();
-- Not the health columns (cooldown_until, consecutive_429_count, last_error, status): the health
-- writer's updates are not configuration changes.
CREATE TRIGGER backends_changed AFTER UPDATE OF name, label, api_base_url, api_key_sealed,
    api_key_mask, api, timeout_seconds, rpm_limit, weight, pool, enabled, model_mappings, source,
    metadata ON backends
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();
CREATE TRIGGER client_keys_changed AFTER INSERT OR UPDATE OR DELETE ON client_keys
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();
CREATE TRIGGER settings_changed AFTER INSERT OR UPDATE OR DELETE ON settings
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();
