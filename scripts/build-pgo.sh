#!/usr/bin/env bash
# Builds poolgate with profile-guided optimisation (PGO). An instrumented build serves the
# benchmark harness's load for about a minute (chat completions as JSON and as streams, over
# HTTP/1.1 and HTTP/2, one connection and 64, 1,000 req/s, 500 held streams, client keys, 50
# backends, RPM limits, 429 fail-over) and then every other endpoint in both wire formats
# (scripts/pgo/train-endpoints.sh); the counts it wrote are merged; a second build inlines and
# lays out the code by them. Same behaviour, less CPU and latency per request: measured
# against the plain release build in docs/benchmarks.md (session 19); how to deploy it in
# docs/deploy.md.
#
#   scripts/build-pgo.sh [OUT_DIR]
#
# OUT_DIR (default: target/pgo) receives the binary, OUT_DIR/poolgate, and beside it what made
# it: the two builds' target directories (instrumented/, optimized/), the counts (profiles/,
# poolgate.profdata) and the training run's report (training/). A link to the release
# mock-upstream sits next to the binary, so `bench --bin-dir OUT_DIR` measures it.
#
# Needs curl, python3 and rustup's llvm-tools component (`rustup component add llvm-tools`:
# `llvm-profdata` of rustc's own LLVM), and about 5 GB of disk (the two target directories).
# Takes about 20 minutes on 2 cores: two full release builds of poolgate and a minute of load.
# The profile belongs to this source and this compiler: run the script again after changing
# either.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/target/pgo}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

SYSROOT=$(rustc --print sysroot)
HOST=$(rustc -vV | awk '/^host:/ {print $2}')
LLVM_PROFDATA=$SYSROOT/lib/rustlib/$HOST/bin/llvm-profdata
if [[ ! -x $LLVM_PROFDATA ]]; then
    echo "build-pgo: $LLVM_PROFDATA not found; run: rustup component add llvm-tools" >&2
    exit 1
fi
for tool in curl python3; do
    if ! command -v "$tool" > /dev/null; then
        echo "build-pgo: $tool is needed for the training load" >&2
        exit 1
    fi
done
# The plain builds (the harness, the mock upstream) land where cargo puts them.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

cd "$ROOT"
# The training load: the harness (with the hyper floor it keeps beside itself) and the mock
# upstream, plain release builds in the usual target directory.
cargo build --release --locked -p bench -p mock-upstream

# 1. The instrumented build, in its own target directory (its flags differ from the plain
#    build's, so sharing one would rebuild everything both times). CARGO_ENCODED_RUSTFLAGS:
#    one flag, whatever spaces OUT holds, and it takes precedence over a RUSTFLAGS of the caller.
rm -rf "$OUT/profiles" "$OUT/training-bin" "$OUT/training"
CARGO_ENCODED_RUSTFLAGS="-Cprofile-generate=$OUT/profiles/build-scripts" \
    cargo build --release --locked -p poolgate --target-dir "$OUT/instrumented"

# 2. The training load. LLVM_PROFILE_FILE keeps poolgate's counts apart from those of the
#    instrumented build scripts; %m merges every poolgate process's counts into one file.
mkdir -p "$OUT/training-bin"
cp "$OUT/instrumented/release/poolgate" "$OUT/training-bin/poolgate"
ln -sf "$TARGET/release/mock-upstream" "$OUT/training-bin/mock-upstream"
"$TARGET/release/bench" --only closed,open,stream,held,features --no-nginx --no-floor \
    --repeats 1 --connections 1,64 --rates 1000 --held-streams 500 --held-settle-ms 500 \
    --bin-dir "$OUT/training-bin" --out "$OUT/training" \
    --poolgate-env "LLVM_PROFILE_FILE=$OUT/profiles/poolgate-%m.profraw"
# What the harness does not send: the other endpoints, Anthropic's format both ways, the
# admin API. Fewer requests than the harness's: enough for those paths not to count as cold.
LLVM_PROFILE_FILE="$OUT/profiles/poolgate-%m.profraw" \
    "$ROOT/scripts/pgo/train-endpoints.sh" "$OUT/training-bin" "$OUT/training/endpoints"
"$LLVM_PROFDATA" merge -o "$OUT/poolgate.profdata" "$OUT"/profiles/poolgate-*.profraw

# 3. The optimised build. Cargo does not see a new profile under the same flags, so the old
#    build goes first.
rm -rf "$OUT/optimized"
CARGO_ENCODED_RUSTFLAGS="-Cprofile-use=$OUT/poolgate.profdata" \
    cargo build --release --locked -p poolgate --target-dir "$OUT/optimized"
cp "$OUT/optimized/release/poolgate" "$OUT/poolgate"
ln -sf "$TARGET/release/mock-upstream" "$OUT/mock-upstream"
echo "build-pgo: $OUT/poolgate"
