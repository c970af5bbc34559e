#!/usr/bin/env python3
"""What one usage record costs SQLite itself: the shipped schema (every migration in
crates/poolgate/migrations/sqlite, applied in order to a fresh WAL database), records inserted
as poolgate writes them (batches of 512 in one transaction, 128-row INSERT ... ON CONFLICT
(request_id) DO NOTHING, one rollup upsert per batch), time-ordered request ids like poolgate's
UUIDv7s. Prints microseconds per record for the shipped schema and for variants without an
index, so each index's share can be read off. Only the execute calls are timed (the records
are built before); Python's own binding is included.

    python3 scripts/perf/sqlite_insert_cost.py [records]
"""
import glob
import os
import sqlite3
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIGRATIONS = sorted(glob.glob(os.path.join(ROOT, "crates/poolgate/migrations/sqlite/*.sql")))
COLUMNS = ("request_id, ts, client_key_id, endpoint, canonical_model, backend_id, upstream_model, "
           "pool, attempts, status, outcome, error_kind, prompt_tokens, completion_tokens, "
           "total_tokens, latency_ms, ttfb_ms, streamed, cached_tokens, tokens_estimated, "
           "cost_nanousd, cache_write_tokens")
BATCH, ROWS = 512, 128
ROLLUP = ("INSERT INTO usage_rollup_hour (bucket_ms, client_key_id, backend_id, canonical_model, "
          "upstream_model, requests, errors, cancelled, prompt_tokens, completion_tokens, "
          "cached_tokens, cache_write_tokens, cost_nanousd, estimated_requests, latency_ms_sum, "
          "ttfb_ms_sum, ttfb_count) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
          "ON CONFLICT (bucket_ms, client_key_id, backend_id, canonical_model, upstream_model) "
          "DO UPDATE SET requests = requests + excluded.requests")


def fresh(path, drop):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for migration in MIGRATIONS:
        with open(migration) as f:
            db.executescript(f.read())
    for index in drop:
        db.execute(f"DROP INDEX {index}")
    return db


def record(ts):
    request_id = "req_" + f"{ts:012x}" + "7" + uuid.uuid4().hex[13:]
    return (request_id, ts, "key_0123456789", "chat_completions", "gpt-4o-mini", "backend-a",
            "gpt-4o-mini-2024", "primary", 1, 200, "success", None, 12, 30, 42, 3, None, 0, None,
            0, 1234, None)


def micros_per_record(db, records, conflict):
    tail = " ON CONFLICT (request_id) DO NOTHING" if conflict else ""
    group = "(" + ",".join("?" * 22) + ")"
    insert = f"INSERT INTO usage_records ({COLUMNS}) VALUES " + ", ".join([group] * ROWS) + tail
    start_ts = 1764500000000
    batches = []
    for b in range(records // BATCH):
        rows = [record(start_ts + (b * BATCH + i) // 20) for i in range(BATCH)]
        batches.append([[v for r in rows[k:k + ROWS] for v in r] for k in range(0, BATCH, ROWS)])
    started = time.perf_counter()
    for chunks in batches:
        db.execute("BEGIN IMMEDIATE")
        for chunk in chunks:
            db.execute(insert, chunk)
        db.execute(ROLLUP, (start_ts // 3600000 * 3600000, "k", "b", "m", "u", BATCH,
                            0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1))
        db.execute("COMMIT")
    return (time.perf_counter() - started) / (len(batches) * BATCH) * 1e6


def main():
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(f"SQLite {sqlite3.sqlite_version}, {records} records, batches of {BATCH}")
    variants = [
        ("shipped schema", (), True),
        ("without usage_ts", ("usage_ts",), True),
        ("without usage_backend_ts, usage_key_ts", ("usage_backend_ts", "usage_key_ts"), True),
        ("without usage_request_id (no ON CONFLICT)", ("usage_request_id",), False),
        ("without any of the four", ("usage_request_id", "usage_ts", "usage_backend_ts",
                                     "usage_key_ts"), False),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "usage.db")
        for name, drop, conflict in variants:
            micros = micros_per_record(fresh(path, drop), records, conflict)
            print(f"{name}: {micros:.2f} µs per record")


if __name__ == "__main__":
    main()
