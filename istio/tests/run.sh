#!/usr/bin/env bash
# Runs the istio/ tests in a virtualenv at istio/.venv (created or updated only when needed).
#   bash istio/tests/run.sh [pytest args...]
# Needs: python3 with venv; PyPI for the first run. The shared folder is expected at
# <repo>/../shared (override with OIDC_FILTER_SHARED=/path/to/shared).
set -euo pipefail

tests_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
istio_dir="$(dirname "$tests_dir")"
repo_dir="$(dirname "$istio_dir")"
venv="$istio_dir/.venv"
req="$tests_dir/requirements.txt"
stamp="$venv/.requirements.sha256"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
want="$(sha256sum "$req" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ] || ! "$venv/bin/python" -c 'import pytest, yaml, jsonschema' 2>/dev/null; then
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
    echo "$want" > "$stamp"
fi

cd "$repo_dir"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$tests_dir" "$@"
