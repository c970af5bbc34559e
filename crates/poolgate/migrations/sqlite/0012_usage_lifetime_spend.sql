-- Issue #13: each client key's and backend's lifetime spend, kept by the usage writer in the
-- transaction that inserts the records (added per batch from the rows it stored, like the
-- hourly rollup), so that restoring a total budget at start-up reads one row. It used to sum the
-- raw records through `usage_key_ts` / `usage_backend_ts` — two B-trees every usage insert
-- updated for that one start-up read; they go. Pruning the raw records or the rollup leaves
-- these totals alone: a total budget counts everything ever spent.
CREATE TABLE usage_lifetime_spend (
    kind         TEXT NOT NULL CHECK (kind IN ('backend', 'client_key')),
    id           TEXT NOT NULL,
    cost_nanousd INTEGER NOT NULL CHECK (cost_nanousd >= 0),
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;

-- What was spent before this migration: as the restore read it until now, the larger of the raw
-- records' sum (kept `usage.retention_days`, by default for ever) and the rollup's (kept
-- `usage.rollup_retention_days`).
INSERT INTO usage_lifetime_spend (kind, id, cost_nanousd)
SELECT kind, id, MAX(total) FROM (
    SELECT 'client_key' AS kind, client_key_id AS id,
           SUM(MAX(COALESCE(cost_nanousd, 0), 0)) AS total
    FROM usage_records WHERE client_key_id IS NOT NULL GROUP BY client_key_id
    UNION ALL
    SELECT 'backend', backend_id, SUM(MAX(COALESCE(cost_nanousd, 0), 0))
    FROM usage_records WHERE backend_id IS NOT NULL GROUP BY backend_id
    UNION ALL
    SELECT 'client_key', client_key_id, SUM(cost_nanousd)
    FROM usage_rollup_hour WHERE client_key_id <> '-' GROUP BY client_key_id
    UNION ALL
    SELECT 'backend', backend_id, SUM(cost_nanousd)
    FROM usage_rollup_hour WHERE backend_id <> '-' GROUP BY backend_id
) GROUP BY kind, id HAVING MAX(total) > 0;

DROP INDEX IF EXISTS usage_key_ts;
DROP INDEX IF EXISTS usage_backend_ts;
