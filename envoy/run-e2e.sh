#!/usr/bin/env bash
# Installs the tools (envoy/install.sh), builds dist/oidc_filter.wasm if it is missing, and runs
# the Envoy end-to-end tests. Extra arguments go to pytest, e.g.:
#   envoy/run-e2e.sh -k login -x
#   E2E_BROWSER=1 envoy/run-e2e.sh      # also install Chromium and run the browser tests
#   E2E_KEEP_LOGS=1 envoy/run-e2e.sh    # keep the OP/upstream/Envoy logs (path printed)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"

if [ "${E2E_BROWSER:-0}" = 1 ]; then
  "$HERE/install.sh" --browser --ingress
else
  "$HERE/install.sh"
fi

WASM="${OIDC_FILTER_WASM:-$ROOT/dist/oidc_filter.wasm}"
if [ ! -f "$WASM" ] && [ -f "$ROOT/Makefile" ]; then
  echo "run-e2e.sh: $WASM missing; running make wasm" >&2
  make -C "$ROOT" wasm >&2
fi

cd "$HERE/e2e"
exec "$HERE/.venv/bin/python" -m pytest -p no:cacheprovider "$@"
