#!/usr/bin/env python3
"""The code a process ran, from callgrind files (docs/benchmarks.md, session 29).

Usage: code_footprint.py REQUESTS FILE [FILE ...]

FILEs are callgrind outputs written with `--dump-instr=yes --compress-pos=no
--compress-strings=no` (scripts/perf/code_footprint.sh writes them): one per thread with
`--separate-threads=yes`. For each file, and for the thread that ran the most instructions
(the one that served the requests), prints the instructions per request and the distinct
64-byte code lines that ran at least once, in KiB and in 4 KiB pages: the code a request
streams through the instruction cache. The lines are a union over the counted window, so code
that runs once a second (a cached date) counts as fully as code that runs per request. The
lines run once per request or more (one of their instructions ran at least 0.9 times per
request: callgrind's instrumentation is switched on while requests flow, and a work-stealing
runtime can serve a few of them on another thread) are counted apart, and for the request
thread the crates (or shared objects), functions and source files with the most of those are
named."""
import collections
import re
import sys

# A line "runs once per request or more" when one of its instructions ran this many times per
# request (see the docstring).
PER_REQUEST = 0.9


def crate_of(function, obj):
    """The crate a demangled Rust name belongs to; the object's file name outside the binary."""
    # A shared library: its file name.
    name = obj.rsplit("/", 1)[-1]
    if name.startswith(("lib", "ld-")):
        return name
    bare = function.lstrip("<&").replace("mut ", "").replace("dyn ", "")
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", bare)
    # C inside the binary (nginx, or jemalloc and SQLite linked into poolgate).
    return match.group(1) if match else f"{name}: C code"


def short(source):
    """A source path from the crate on: `poolgate/src/proxy/attempt.rs`, `tokio-1.47.1/src/…`."""
    parts = source.split("/")
    if "src" in parts:
        at = len(parts) - 1 - parts[::-1].index("src")
        return "/".join(parts[max(at - 1, 0):])
    return source or "(no debug info)"


def read(path):
    """(instructions, {(object, line): [function, object, most runs of one of its instructions,
    source file]}) of one callgrind file. A line's source file is that of its first instruction
    counted: the inlined code's own file (`fi=`, `fe=`), not the function's it was inlined
    into."""
    instructions = 0
    lines = {}
    obj = function = function_file = source = ""
    after_calls = False
    with open(path, errors="replace") as file:
        for text in file:
            if text.startswith("ob="):
                obj = text[3:].strip()
            elif text.startswith("fl="):
                function_file = source = text[3:].strip()
            elif text.startswith(("fi=", "fe=")):
                source = text[3:].strip()
            elif text.startswith("fn="):
                function = text[3:].strip()
                source = function_file
            elif text.startswith("calls="):
                after_calls = True
                continue
            elif text.startswith("0x"):
                # The line after `calls=` is the call's inclusive cost at its site, not code run.
                if not after_calls:
                    address, *costs = text.split()
                    cost = int(costs[-1]) if costs else 0
                    if cost:
                        instructions += cost
                        key = (obj, int(address, 16) >> 6)
                        line = lines.setdefault(key, [function, obj, 0, source])
                        line[2] = max(line[2], cost)
            after_calls = False
    return instructions, lines


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    requests = int(sys.argv[1])
    threads = [(path, *read(path)) for path in sys.argv[2:]]
    threads = [t for t in threads if t[1]]
    if not threads or requests <= 0:
        sys.exit("no instructions counted")
    for path, instructions, lines in threads:
        pages = {(obj, line >> 6) for obj, line in lines}
        every = sum(1 for _, _, runs, _ in lines.values() if runs >= PER_REQUEST * requests)
        print(
            f"{path.rsplit('/', 1)[-1]}: {instructions / requests:,.0f} instructions per request, "
            f"{len(lines):,} code lines ({len(lines) * 64 / 1024:.0f} KiB) in {len(pages)} pages, "
            f"{every:,} of them ({every * 64 / 1024:.0f} KiB) run once per request or more"
        )
    path, instructions, lines = max(threads, key=lambda t: t[1])
    every = [(f, o, src) for f, o, runs, src in lines.values() if runs >= PER_REQUEST * requests]
    print(f"\nthe request thread ({path.rsplit('/', 1)[-1]}), lines run once per request or more:")
    print("by crate (or shared object):")
    for crate, count in collections.Counter(crate_of(f, o) for f, o, _ in every).most_common(15):
        print(f"  {count:6,} {100 * count / len(every):5.1f} %  {crate}")
    print("by function:")
    for function, count in collections.Counter(f for f, _, _ in every).most_common(20):
        print(f"  {count:6,}  {function[:100]}")
    print("by source file (inlined code counted in its own file):")
    for source, count in collections.Counter(short(src) for _, _, src in every).most_common(25):
        print(f"  {count:6,}  {source}")


if __name__ == "__main__":
    main()
