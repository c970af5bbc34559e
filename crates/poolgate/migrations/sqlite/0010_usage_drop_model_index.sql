-- Issue #13: one B-tree less to update on every usage insert. No query reads
-- `usage_model_ts (canonical_model, ts)`: the statistics and the usage list filter the model as
-- `(? IS NULL OR canonical_model = ?)`, which SQLite cannot answer from an index (it plans the
-- statement once, before the value is known), so they read `usage_ts` (the time range) or scan
-- by `seq`; spend restores read `usage_key_ts` / `usage_backend_ts`. (PostgreSQL keeps its
-- index: its per-value plans can use it.)
DROP INDEX IF EXISTS usage_model_ts;
