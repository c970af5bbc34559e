-- poolgate schema v9 (PostgreSQL), issue #13: the same as ../sqlite/0011 — the HTTP version
-- poolgate speaks to a backend's upstream (`auto`, `http1`, `http2`); `auto` for every row
-- written before.
ALTER TABLE backends ADD COLUMN http_version TEXT NOT NULL DEFAULT 'auto'
    CHECK (http_version IN ('auto', 'http1', 'http2'));

-- `http_version` is configuration: an update of it is announced like the other columns.
DROP TRIGGER backends_changed ON backends;
CREATE TRIGGER backends_changed AFTER UPDATE OF name, label, api_base_url, api_key_sealed,
    api_key_mask, api, timeout_seconds, rpm_limit, weight, pool, enabled, model_mappings, source,
    metadata, responses, api_version, tpm_limit, http_version ON backends
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();
