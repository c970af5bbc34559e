#!/usr/bin/env bash
# End-to-end tests with the official Python SDKs against real poolgate and mock-upstream binaries.
# Usage: bash tests/python/run.sh [extra pytest args]
# Env: POOLGATE_VENV (default target/python-venv), PYTHON (default python3).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

venv="${POOLGATE_VENV:-target/python-venv}"
requirements="tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "run.sh: creating virtualenv $venv"
    "${PYTHON:-python3}" -m venv "$venv"
fi

wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
    echo "run.sh: installing $requirements"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$wanted" >"$stamp"
fi

cargo build --quiet -p poolgate -p mock-upstream

# pytest's exit code is the script's. No .pytest_cache or __pycache__ in the work tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python "$@"
