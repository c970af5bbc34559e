-- Issue #11 part B: prices, the cost of each usage record, and spend budgets.
--
-- The cost of a record in nano-dollars (10^-9 USD, an exact integer: `SUM()` never rounds), NULL
-- when the upstream model has no price; the prompt tokens the upstream wrote to its cache
-- (Anthropic's `cache_creation_input_tokens`, part of prompt_tokens like cached_tokens).
ALTER TABLE usage_records ADD COLUMN cost_nanousd INTEGER NULL CHECK (cost_nanousd >= 0);
ALTER TABLE usage_records ADD COLUMN cache_write_tokens INTEGER NULL;
-- Spend per key and per backend over a window (budget restore at start-up).
CREATE INDEX usage_key_ts ON usage_records (client_key_id, ts);

-- Prices set through the admin API (`PUT /admin/api/prices/{model}`), in thousandths of a dollar
-- per million tokens (= nano-dollars per token). They override the config file's and the
-- defaults embedded in the binary.
CREATE TABLE prices (
    model                TEXT PRIMARY KEY NOT NULL,
    input_per_mtok       INTEGER NOT NULL CHECK (input_per_mtok >= 0),
    output_per_mtok      INTEGER NOT NULL CHECK (output_per_mtok >= 0),
    cached_input_per_mtok INTEGER NULL CHECK (cached_input_per_mtok >= 0),
    cache_write_per_mtok INTEGER NULL CHECK (cache_write_per_mtok >= 0),
    updated_at           INTEGER NOT NULL
);

-- Spend limits in nano-dollars, NULL = none: a client key's daily / monthly / total budget, a
-- backend's monthly cap (daily and total stay NULL). Gone with their key or backend.
CREATE TABLE spend_limits (
    kind          TEXT NOT NULL CHECK (kind IN ('backend', 'client_key')),
    id            TEXT NOT NULL,
    daily_nanousd   INTEGER NULL CHECK (daily_nanousd >= 0),
    monthly_nanousd INTEGER NULL CHECK (monthly_nanousd >= 0),
    total_nanousd   INTEGER NULL CHECK (total_nanousd >= 0),
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TRIGGER spend_limits_backend_deleted AFTER DELETE ON backends
BEGIN
    DELETE FROM spend_limits WHERE kind = 'backend' AND id = OLD.id;
END;
CREATE TRIGGER spend_limits_key_revoked AFTER UPDATE OF revoked_at ON client_keys
WHEN NEW.revoked_at IS NOT NULL
BEGIN
    DELETE FROM spend_limits WHERE kind = 'client_key' AND id = NEW.id;
END;
