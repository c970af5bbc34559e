-- poolgate schema v4 (PostgreSQL), issue #14 (hardening): the same concepts as
-- ../sqlite/0004_hardening.sql.

-- Per-key concurrency limit (0 = unlimited). A client-key column: its updates are announced like
-- the others (client_keys_changed fires on every statement).
ALTER TABLE client_keys ADD COLUMN max_parallel_requests BIGINT NOT NULL DEFAULT 0
    CHECK (max_parallel_requests >= 0);

-- One usage record per request: here since 0001 as UNIQUE (ts, request_id) (a partitioned
-- table's unique constraint must contain the partition key). A record's `ts` is fixed when the
-- request arrives, so a journal replay of a committed record conflicts and is skipped
-- (ON CONFLICT (ts, request_id) DO NOTHING) like a retried batch.

-- RPM bucket levels, so limits survive a restart when this database is used without Redis (in
-- cluster mode the buckets live in Redis and nothing is written here). `kind` is `backend` or
-- `client_key`; `level_units` is the bucket's fill in 1/60,000,000,000 of a request, as of
-- `at_ms`. Not configuration: writes are not announced.
CREATE TABLE limiter_levels (
    kind        TEXT NOT NULL CHECK (kind IN ('backend', 'client_key')),
    id          TEXT NOT NULL,
    rpm         BIGINT NOT NULL CHECK (rpm > 0),
    level_units BIGINT NOT NULL CHECK (level_units >= 0),
    at_ms       BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);

-- A level goes with its backend, or with its client key when the key is revoked.
CREATE FUNCTION poolgate_limiter_level_backend_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM limiter_levels WHERE kind = 'backend' AND id = OLD.id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER limiter_levels_backend_deleted AFTER DELETE ON backends
    FOR EACH ROW EXECUTE FUNCTION poolgate_limiter_level_backend_deleted();

CREATE FUNCTION poolgate_limiter_level_key_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM limiter_levels WHERE kind = 'client_key' AND id = NEW.id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER limiter_levels_key_revoked AFTER UPDATE OF revoked_at ON client_keys
    FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION poolgate_limiter_level_key_revoked();
