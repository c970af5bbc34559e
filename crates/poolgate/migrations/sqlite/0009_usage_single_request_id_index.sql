-- One unique index on usage_records.request_id is enough: 0002 created `usage_request_id`, and
-- 0004 (written for databases without 0002's index) added a second one under another name on
-- every database that had it — two B-trees to update on each usage insert. The first stays.
DROP INDEX IF EXISTS usage_records_request_id;
