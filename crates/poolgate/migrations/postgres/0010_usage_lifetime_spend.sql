-- poolgate schema v10 (PostgreSQL), issue #13: as ../sqlite/0012 — each client key's and
-- backend's lifetime spend, added per batch by the usage writer in the insert's transaction and
-- never pruned, which the restore of a total budget reads. (PostgreSQL keeps `usage_key_ts` and
-- `usage_backend_ts`: its per-value plans can use them for the usage list's filters.)
CREATE TABLE usage_lifetime_spend (
    kind         TEXT NOT NULL CHECK (kind IN ('backend', 'client_key')),
    id           TEXT NOT NULL,
    cost_nanousd BIGINT NOT NULL CHECK (cost_nanousd >= 0),
    PRIMARY KEY (kind, id)
);

-- What was spent before: as the restore read it until now, the larger of the raw records' sum
-- and the rollup's.
INSERT INTO usage_lifetime_spend (kind, id, cost_nanousd)
SELECT kind, id, MAX(total) FROM (
    SELECT 'client_key' AS kind, client_key_id AS id,
           SUM(GREATEST(COALESCE(cost_nanousd, 0), 0))::bigint AS total
    FROM usage_records WHERE client_key_id IS NOT NULL GROUP BY client_key_id
    UNION ALL
    SELECT 'backend', backend_id, SUM(GREATEST(COALESCE(cost_nanousd, 0), 0))::bigint
    FROM usage_records WHERE backend_id IS NOT NULL GROUP BY backend_id
    UNION ALL
    SELECT 'client_key', client_key_id, SUM(cost_nanousd)::bigint
    FROM usage_rollup_hour WHERE client_key_id <> '-' GROUP BY client_key_id
    UNION ALL
    SELECT 'backend', backend_id, SUM(cost_nanousd)::bigint
    FROM usage_rollup_hour WHERE backend_id <> '-' GROUP BY backend_id
) AS spent GROUP BY kind, id HAVING MAX(total) > 0;
