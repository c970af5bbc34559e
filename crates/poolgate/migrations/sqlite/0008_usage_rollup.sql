-- Issue #11 part B: the hourly usage rollup. One row per (UTC hour, client key, backend,
-- canonical model, upstream model) — `-` where the record has none — with the sums the
-- statistics need. The usage writer upserts it in the transaction that inserts the records
-- (only the records actually inserted count), so rollup and records never disagree; the raw
-- retention (`usage.retention_days`) leaves it alone, `usage.rollup_retention_days` prunes it.
-- Stats over long ranges (or ranges older than the raw retention) read it instead of the records.
CREATE TABLE usage_rollup_hour (
    bucket_ms          INTEGER NOT NULL,
    client_key_id      TEXT NOT NULL,
    backend_id         TEXT NOT NULL,
    canonical_model    TEXT NOT NULL,
    upstream_model     TEXT NOT NULL,
    requests           INTEGER NOT NULL DEFAULT 0,
    errors             INTEGER NOT NULL DEFAULT 0,
    cancelled          INTEGER NOT NULL DEFAULT 0,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    cached_tokens      INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_nanousd       INTEGER NOT NULL DEFAULT 0,
    estimated_requests INTEGER NOT NULL DEFAULT 0,
    latency_ms_sum     INTEGER NOT NULL DEFAULT 0,
    ttfb_ms_sum        INTEGER NOT NULL DEFAULT 0,
    ttfb_count         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_ms, client_key_id, backend_id, canonical_model, upstream_model)
);

-- The records stored before this migration.
INSERT INTO usage_rollup_hour
SELECT (ts / 3600000) * 3600000, COALESCE(client_key_id, '-'), COALESCE(backend_id, '-'),
       COALESCE(canonical_model, '-'), COALESCE(upstream_model, '-'),
       COUNT(*),
       SUM(CASE WHEN outcome = 'cancelled' THEN 0
                WHEN outcome = 'success' AND status < 400 THEN 0 ELSE 1 END),
       SUM(CASE WHEN outcome = 'cancelled' THEN 1 ELSE 0 END),
       SUM(MAX(COALESCE(prompt_tokens, 0), 0)), SUM(MAX(COALESCE(completion_tokens, 0), 0)),
       SUM(MAX(COALESCE(cached_tokens, 0), 0)), SUM(MAX(COALESCE(cache_write_tokens, 0), 0)),
       SUM(MAX(COALESCE(cost_nanousd, 0), 0)),
       SUM(CASE WHEN tokens_estimated THEN 1 ELSE 0 END),
       SUM(MAX(latency_ms, 0)),
       COALESCE(SUM(CASE WHEN ttfb_ms >= 0 THEN ttfb_ms END), 0),
       COUNT(CASE WHEN ttfb_ms >= 0 THEN 1 END)
FROM usage_records
WHERE ts >= 0
GROUP BY 1, 2, 3, 4, 5;
