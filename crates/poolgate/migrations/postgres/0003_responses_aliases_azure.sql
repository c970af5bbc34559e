-- poolgate schema v3 (PostgreSQL), issue #15: the same concepts as ../sqlite/0003 — Azure
-- backends and the Responses capability, model aliases, response affinity, cached tokens in usage
-- records. (Number 0002 is SQLite's usage uniqueness, which 0001 already has here.)

-- Azure in `api`, and two new columns (NULL: the API kind's default).
ALTER TABLE backends DROP CONSTRAINT backends_api_check;
ALTER TABLE backends ADD CONSTRAINT backends_api_check
    CHECK (api IN ('openai', 'anthropic', 'azure'));
ALTER TABLE backends ADD COLUMN responses BOOLEAN;
ALTER TABLE backends ADD COLUMN api_version TEXT;

-- The new columns are configuration: an update of them is announced like the others (still not
-- the health columns).
DROP TRIGGER backends_changed ON backends;
CREATE TRIGGER backends_changed AFTER UPDATE OF name, label, api_base_url, api_key_sealed,
    api_key_mask, api, timeout_seconds, rpm_limit, weight, pool, enabled, model_mappings, source,
    metadata, responses, api_version ON backends
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();

-- Prompt tokens the upstream read from its cache (part of prompt_tokens); on the partitioned
-- parent, so on every partition.
ALTER TABLE usage_records ADD COLUMN cached_tokens BIGINT;

-- One name for another canonical model; configuration like the rest (announced).
CREATE TABLE model_aliases (
    alias      TEXT PRIMARY KEY,
    target     TEXT NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('config', 'api')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TRIGGER model_aliases_changed AFTER INSERT OR UPDATE OR DELETE ON model_aliases
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();

-- Which backend made each Responses API response (and for which caller), until it expires.
-- Written behind the request path by the instance that served it; the writer announces each
-- batch on channel `poolgate_owners`, so the other instances add the owners to their maps (a
-- follow-up on any instance reaches the owner).
CREATE TABLE response_owners (
    response_id TEXT PRIMARY KEY,
    backend_id  TEXT NOT NULL,
    caller      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX response_owners_expires ON response_owners (expires_at);
CREATE INDEX response_owners_created ON response_owners (created_at);
