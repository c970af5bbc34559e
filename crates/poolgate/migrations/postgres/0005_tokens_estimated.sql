-- poolgate schema v5 (PostgreSQL), issue #14 item 11: the same concept as ../sqlite/0005 — the
-- record's token figures are poolgate's estimate, not the upstream's (a stream whose client left,
-- or whose upstream broke, before the usage frame is billed for the prompt and the output it
-- delivered, counted with the tokenizer). false for every record written before. On the
-- partitioned parent, so on every partition.
ALTER TABLE usage_records ADD COLUMN tokens_estimated BOOLEAN NOT NULL DEFAULT false;
