#!/usr/bin/env bash
# The dashboard's end-to-end tests: a real headless Chromium (Debian's `chromium`) driven by
# playwright-core against the real `poolgate` and `mock-upstream` binaries.
# Screenshots go to target/dashboard-screenshots/ (UPDATE_DOCS_SCREENSHOT=1 also refreshes
# docs/img/dashboard-overview.png).
set -euo pipefail
cd "$(dirname "$0")/../.."
E2E=tests/e2e

CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [[ ! -x "$CHROMIUM_PATH" ]]; then
  echo "e2e: $CHROMIUM_PATH not found. Install Debian's Chromium: apt-get install -y chromium" >&2
  echo "     (.ci/run installs it; playwright's own browser downloads are not used)" >&2
  exit 1
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "e2e: node and npm are needed (apt-get install -y nodejs npm)" >&2
  exit 1
fi

# npm ci when node_modules is missing or older than the lock file.
stamp="$E2E/node_modules/.package-lock.json"
if [[ ! -f "$stamp" || "$E2E/package-lock.json" -nt "$stamp" ]]; then
  (cd "$E2E" && npm ci --no-audit --no-fund --loglevel=error)
fi

cargo build --locked -p poolgate -p mock-upstream

export CHROMIUM_PATH
exec node --test --test-reporter=spec "$E2E"/*.test.js
