#!/usr/bin/env python3
"""Exclusive categories of poolgate's user-space samples (docs/benchmarks.md, sessions 6 and 7).

Usage: as scripts/perf/feature_shares.py, on the same `perf script` output. Each sample goes
to ONE category: the first frame from the leaf up that matches one (categories in list order
per frame); the sqlx-sqlite worker thread's samples are counted by thread name."""
import re, sys, collections
CATS = [
 ("allocator (jemalloc)", r"_rjem_|je_|do_rallocx|sdallocx|tikv_jemalloc"),
 ("memcpy/memmove/memcmp", r"__mem(move|cpy|cmp|set)"),
 ("clock reads (vDSO)", r"clock_gettime|Instant::now|SystemTime::now"),
 ("SQLite/sqlx on runtime threads", r"sqlite3|sqlx_sqlite|sqlx_core"),
 ("usage writer (batch, binding)", r"usage_writer|insert_usage"),
 ("usage journal line", r"journal::"),
 ("access log formatting", r"AccessLogEntry|poolgate::logging|tracing_subscriber::fmt"),
 ("tracing (spans, dispatch)", r"tracing_core|tracing::|tracing_subscriber"),
 ("metrics", r"poolgate::telemetry|prometheus"),
 ("hyper HTTP/1 parse/encode/io (both sides)", r"hyper::proto::h1|httparse"),
 ("upstream client (hyper-util pool, conn)", r"hyper_util::client|hyper::client|poolgate::upstream|hyper_rustls"),
 ("server glue (hyper server, serving::)", r"hyper::server|hyper_util::server|poolgate::serving|hyper::common|hyper::body"),
 ("client key check (SHA-256)", r"sha2|authenticate_client"),
 ("JSON reads (routing fields, answer usage, chunks)", r"serde_json|TopLevel|usage_of_body|openai_chunk"),
 ("poolgate request path (api, proxy, routing, providers, limits)", r"poolgate::"),
 ("axum/tower", r"axum|tower"),
 ("tokio (scheduler, io driver, sync, timers)", r"tokio::|mio::"),
 ("bytes/http types", r"^bytes::|<bytes::|^http::|<http::"),
]
counts = collections.Counter(); total = 0
def flush(comm, frames):
    global total
    if not frames: return
    total += 1
    if comm and comm.startswith("sqlx-sqlite"):
        counts["usage: the sqlx-sqlite worker thread (INSERTs)"] += 1; return
    for f in frames:
        for name, rx in CATS:
            if re.search(rx, f):
                counts[name] += 1; return
    counts["other (std, libc, unresolved)"] += 1
comm, frames = None, []
for line in open(sys.argv[1], errors="replace"):
    line = line.rstrip("\n")
    if not line.strip():
        flush(comm, frames); comm, frames = None, []; continue
    if not line.startswith((" ", "\t")):
        flush(comm, frames); frames = []; comm = line.split()[0]; continue
    parts = line.strip().split(None, 1)
    frames.append(parts[1] if len(parts) > 1 else "?")
flush(comm, frames)
print(f"samples {total}")
for name, n in counts.most_common():
    print(f"| {name} | {100.0*n/total:.1f} % |")
