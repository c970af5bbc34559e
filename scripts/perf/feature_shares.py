#!/usr/bin/env python3
"""Where poolgate's user-space CPU goes, by feature (docs/benchmarks.md, session 7).

Usage: perf record -e cycles:u -F 999 --call-graph dwarf -p $(pgrep -f "poolgate serve") -o p.data -- sleep 5
       perf script -i p.data -F comm,tid,ip,sym --no-inline > p.txt && scripts/perf/feature_shares.py p.txt

Each sample counts once: under the first rule (in order) its thread name or any frame of its
stack matches; what no rule matches is "the rest" (HTTP, runtime, forwarding)."""
import collections,re,sys
n=0; c=collections.Counter()
comm=None; frames=[]
RULES=[ # first matching rule over the whole stack (checked in order) wins
 ("usage record: sqlx-sqlite worker thread (SQLite's work before session 12's rusqlite writer)", lambda comm,fr: comm.startswith("sqlx-sqlite")),
 ("usage record: journal line + write, queue (UsageSink::record; the batch's write task)", lambda comm,fr: any("UsageSink::record" in f or "journal::group" in f for f in fr)),
 ("usage record: the store writer task (batching, binding; since session 12 SQLite's own work too)", lambda comm,fr: any("usage_writer" in f for f in fr)),
 ("access line (AccessLogEntry::emit: tracing, formatting, buffer)", lambda comm,fr: any("AccessLogEntry::emit" in f for f in fr)),
 ("metrics and observation (observer, minus the access line)", lambda comm,fr: any("poolgate::telemetry" in f for f in fr)),
 ("client key check (authenticate_client)", lambda comm,fr: any("authenticate_client" in f for f in fr)),
 ("request JSON read (routing fields, splice)", lambda comm,fr: any(re.search(r"ParsedRequest::parse|Inbound::openai|FieldsVisitor|SplicedBody::splice",f) for f in fr)),
 ("answer usage read (usage_of_body)", lambda comm,fr: any("usage_of_body" in f for f in fr)),
 ("usage draft (new, attempt, finish: record fields, cost)", lambda comm,fr: any("UsageDraft" in f for f in fr)),
]
def fl():
    global n
    if comm is None or not frames: return
    n+=1
    for name,rule in RULES:
        if rule(comm,frames): c[name]+=1; return
    c["the rest: HTTP both sides, runtime, routing, forwarding"]+=1
for line in open(sys.argv[1],errors="replace"):
    line=line.rstrip("\n")
    if not line.strip(): fl(); comm=None; frames=[]; continue
    if not line.startswith((" ","\t")): fl(); frames=[]; comm=line.split()[0]; continue
    p=line.strip().split(None,1); frames.append(p[1] if len(p)>1 else "?")
fl()
print("samples",n)
for k,v in c.most_common(): print(f"| {k} | {100*v/n:.1f} % |")
