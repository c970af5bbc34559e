-- Issue #14 (hardening).

-- Per-key concurrency limit (0 = unlimited).
ALTER TABLE client_keys ADD COLUMN max_parallel_requests INTEGER NOT NULL DEFAULT 0
    CHECK (max_parallel_requests >= 0);

-- One usage record per request: the crash-safe journal may replay a record the store already
-- committed, and the insert skips it. Any duplicate that already exists is removed first (the
-- oldest row of each request id is kept), so this migration cannot fail on old data; IF NOT
-- EXISTS keeps it harmless where an earlier migration created the same index.
DELETE FROM usage_records
WHERE seq NOT IN (SELECT MIN(seq) FROM usage_records GROUP BY request_id);
CREATE UNIQUE INDEX IF NOT EXISTS usage_records_request_id ON usage_records (request_id);

-- RPM bucket levels, so limits survive a restart: exact after a graceful stop, a checkpoint at
-- most `limits.checkpoint_interval_ms` old after a crash. `kind` is `backend` or `client_key`;
-- `level_units` is the bucket's fill in 1/60,000,000,000 of a request, as of `at_ms`.
CREATE TABLE limiter_levels (
    kind        TEXT NOT NULL CHECK (kind IN ('backend', 'client_key')),
    id          TEXT NOT NULL,
    rpm         INTEGER NOT NULL CHECK (rpm > 0),
    level_units INTEGER NOT NULL CHECK (level_units >= 0),
    at_ms       INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);

-- A level goes with its backend, or with its client key when the key is revoked.
CREATE TRIGGER limiter_levels_backend_deleted AFTER DELETE ON backends
BEGIN
    DELETE FROM limiter_levels WHERE kind = 'backend' AND id = OLD.id;
END;
CREATE TRIGGER limiter_levels_key_revoked AFTER UPDATE OF revoked_at ON client_keys
WHEN NEW.revoked_at IS NOT NULL
BEGIN
    DELETE FROM limiter_levels WHERE kind = 'client_key' AND id = NEW.id;
END;
