-- poolgate schema v7 (PostgreSQL), issue #11 part B: the same as ../sqlite/0007 — the cost of each
-- usage record in nano-dollars (NULL without a price) and its cache-write tokens (on the
-- partitioned parent, so on every partition), prices set through the admin API, and spend limits
-- of client keys and backends. Both new tables are configuration: writing them bumps
-- config_version and notifies the other instances.
ALTER TABLE usage_records ADD COLUMN cost_nanousd BIGINT NULL CHECK (cost_nanousd >= 0);
ALTER TABLE usage_records ADD COLUMN cache_write_tokens BIGINT NULL;
CREATE INDEX usage_key_ts ON usage_records (client_key_id, ts);

CREATE TABLE prices (
    model                 TEXT PRIMARY KEY NOT NULL,
    input_per_mtok        BIGINT NOT NULL CHECK (input_per_mtok >= 0),
    output_per_mtok       BIGINT NOT NULL CHECK (output_per_mtok >= 0),
    cached_input_per_mtok BIGINT NULL CHECK (cached_input_per_mtok >= 0),
    cache_write_per_mtok  BIGINT NULL CHECK (cache_write_per_mtok >= 0),
    updated_at            BIGINT NOT NULL
);
CREATE TRIGGER prices_changed AFTER INSERT OR UPDATE OR DELETE ON prices
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();

CREATE TABLE spend_limits (
    kind            TEXT NOT NULL CHECK (kind IN ('backend', 'client_key')),
    id              TEXT NOT NULL,
    daily_nanousd   BIGINT NULL CHECK (daily_nanousd >= 0),
    monthly_nanousd BIGINT NULL CHECK (monthly_nanousd >= 0),
    total_nanousd   BIGINT NULL CHECK (total_nanousd >= 0),
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TRIGGER spend_limits_changed AFTER INSERT OR UPDATE OR DELETE ON spend_limits
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();

CREATE FUNCTION poolgate_spend_limit_backend_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM spend_limits WHERE kind = 'backend' AND id = OLD.id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER spend_limits_backend_deleted AFTER DELETE ON backends
    FOR EACH ROW EXECUTE FUNCTION poolgate_spend_limit_backend_deleted();

CREATE FUNCTION poolgate_spend_limit_key_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM spend_limits WHERE kind = 'client_key' AND id = NEW.id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER spend_limits_key_revoked AFTER UPDATE OF revoked_at ON client_keys
    FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION poolgate_spend_limit_key_revoked();
