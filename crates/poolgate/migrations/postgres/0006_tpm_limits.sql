-- poolgate schema v6 (PostgreSQL), issue #11 part A: the same concept as ../sqlite/0006 —
-- tokens-per-minute limits on backends and client keys (0 = none). 0 for every row written
-- before.
ALTER TABLE backends ADD COLUMN tpm_limit BIGINT NOT NULL DEFAULT 0 CHECK (tpm_limit >= 0);
ALTER TABLE client_keys ADD COLUMN tpm_limit BIGINT NOT NULL DEFAULT 0 CHECK (tpm_limit >= 0);

-- `tpm_limit` is configuration: an update of it is announced like the other columns (part B's
-- 0007 recreates this trigger with its own columns appended; keep the list in one place there).
DROP TRIGGER backends_changed ON backends;
CREATE TRIGGER backends_changed AFTER UPDATE OF name, label, api_base_url, api_key_sealed,
    api_key_mask, api, timeout_seconds, rpm_limit, weight, pool, enabled, model_mappings, source,
    metadata, responses, api_version, tpm_limit ON backends
    FOR EACH STATEMENT EXECUTE FUNCTION poolgate_config_changed();
