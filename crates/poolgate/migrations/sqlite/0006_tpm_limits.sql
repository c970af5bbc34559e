-- Issue #11 part A: tokens-per-minute limits on backends and client keys (0 = none). The
-- estimate of a request (prompt + output reserve) is reserved at admission and settled with the
-- real usage when the answer ends. 0 for every row written before.
ALTER TABLE backends ADD COLUMN tpm_limit INTEGER NOT NULL DEFAULT 0 CHECK (tpm_limit >= 0);
ALTER TABLE client_keys ADD COLUMN tpm_limit INTEGER NOT NULL DEFAULT 0 CHECK (tpm_limit >= 0);
