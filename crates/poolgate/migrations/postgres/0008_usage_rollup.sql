-- poolgate schema v8 (PostgreSQL), issue #11 part B: the same as ../sqlite/0008 — the hourly
-- usage rollup, upserted by the usage writer in the transaction that inserts the records, kept
-- when day partitions of raw records are dropped, pruned by `usage.rollup_retention_days`.
CREATE TABLE usage_rollup_hour (
    bucket_ms          BIGINT NOT NULL,
    client_key_id      TEXT NOT NULL,
    backend_id         TEXT NOT NULL,
    canonical_model    TEXT NOT NULL,
    upstream_model     TEXT NOT NULL,
    requests           BIGINT NOT NULL DEFAULT 0,
    errors             BIGINT NOT NULL DEFAULT 0,
    cancelled          BIGINT NOT NULL DEFAULT 0,
    prompt_tokens      BIGINT NOT NULL DEFAULT 0,
    completion_tokens  BIGINT NOT NULL DEFAULT 0,
    cached_tokens      BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    cost_nanousd       BIGINT NOT NULL DEFAULT 0,
    estimated_requests BIGINT NOT NULL DEFAULT 0,
    latency_ms_sum     BIGINT NOT NULL DEFAULT 0,
    ttfb_ms_sum        BIGINT NOT NULL DEFAULT 0,
    ttfb_count         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_ms, client_key_id, backend_id, canonical_model, upstream_model)
);

INSERT INTO usage_rollup_hour
SELECT (ts / 3600000) * 3600000, COALESCE(client_key_id, '-'), COALESCE(backend_id, '-'),
       COALESCE(canonical_model, '-'), COALESCE(upstream_model, '-'),
       COUNT(*),
       SUM(CASE WHEN outcome = 'cancelled' THEN 0
                WHEN outcome = 'success' AND status < 400 THEN 0 ELSE 1 END),
       SUM(CASE WHEN outcome = 'cancelled' THEN 1 ELSE 0 END),
       SUM(GREATEST(COALESCE(prompt_tokens, 0), 0)),
       SUM(GREATEST(COALESCE(completion_tokens, 0), 0)),
       SUM(GREATEST(COALESCE(cached_tokens, 0), 0)),
       SUM(GREATEST(COALESCE(cache_write_tokens, 0), 0)),
       SUM(GREATEST(COALESCE(cost_nanousd, 0), 0)),
       SUM(CASE WHEN tokens_estimated THEN 1 ELSE 0 END),
       SUM(GREATEST(latency_ms, 0)),
       COALESCE(SUM(CASE WHEN ttfb_ms >= 0 THEN ttfb_ms END), 0),
       COUNT(CASE WHEN ttfb_ms >= 0 THEN 1 END)
FROM usage_records
WHERE ts >= 0
GROUP BY 1, 2, 3, 4, 5;
