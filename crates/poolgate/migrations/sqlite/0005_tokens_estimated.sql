-- Issue #14 item 11 (first column of #11's usage additions): the record's token figures are
-- poolgate's estimate, not the upstream's — a stream whose client left (or whose upstream broke)
-- before the usage frame is billed for the prompt and the output it delivered, counted with the
-- tokenizer. 0 for every record written before.
ALTER TABLE usage_records ADD COLUMN tokens_estimated INTEGER NOT NULL DEFAULT 0
    CHECK (tokens_estimated IN (0, 1));
