#!/usr/bin/env bash
# oidc-filter demo: a local OpenID provider, a demo upstream and Envoy with the filter.
#   envoy/demo.sh            (`make demo` builds dist/oidc_filter.wasm first, then runs this)
# Settings (environment): DEMO_PORT (Envoy listener, 8080), OP_PORT (9000), UPSTREAM_PORT (8081),
# ADMIN_PORT (Envoy admin, 9901), PROMETHEUS_PORT (9090), OIDC_FILTER_WASM (dist/oidc_filter.wasm).
# Stops everything on Ctrl-C.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DEMO_PORT="${DEMO_PORT:-8080}"
OP_PORT="${OP_PORT:-9000}"
UPSTREAM_PORT="${UPSTREAM_PORT:-8081}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
WASM="${OIDC_FILTER_WASM:-$ROOT/dist/oidc_filter.wasm}"
RUN="$HERE/.run/demo"

"$HERE/install.sh" --prometheus

if [ ! -f "$WASM" ]; then
  echo "demo.sh: $WASM not found: run 'make wasm' (or 'make demo') first" >&2
  exit 1
fi
for p in "$DEMO_PORT" "$OP_PORT" "$UPSTREAM_PORT" "$ADMIN_PORT" "$PROMETHEUS_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "demo.sh: port $p on 127.0.0.1 is already in use (set DEMO_PORT/OP_PORT/UPSTREAM_PORT/ADMIN_PORT/PROMETHEUS_PORT)" >&2
    exit 1
  fi
done

mkdir -p "$RUN"
PIDS=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "demo.sh: stopping..."
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "demo.sh: stopped (logs in $RUN)"
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

# setsid: a Ctrl-C reaches only this script, which then stops the children in order.
setsid node "$HERE/op/server.mjs" --port "$OP_PORT" --envoy-ports "$DEMO_PORT" --quiet >"$RUN/op.log" 2>&1 &
PIDS+=($!)
setsid "$HERE/.venv/bin/python" "$HERE/upstream.py" --port "$UPSTREAM_PORT" >"$RUN/upstream.log" 2>&1 &
PIDS+=($!)

wait_http() { # url seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if "$HERE/.venv/bin/python" -c "import sys,urllib.request as u; u.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}
wait_http "http://127.0.0.1:$OP_PORT/.well-known/openid-configuration" 20 \
  || { echo "demo.sh: the OpenID provider did not start:" >&2; cat "$RUN/op.log" >&2; exit 1; }

"$HERE/.venv/bin/python" "$HERE/render_config.py" --listen-port "$DEMO_PORT" --admin-port "$ADMIN_PORT" \
  --idp-port "$OP_PORT" --upstream-port "$UPSTREAM_PORT" --wasm "$WASM" -o "$RUN/envoy.json"
setsid "$HERE/.venv/bin/envoy" -c "$RUN/envoy.json" --base-id "$DEMO_PORT" --concurrency 2 \
  --log-level warning --component-log-level wasm:info >"$RUN/envoy.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/ready" 30 \
  || { echo "demo.sh: Envoy did not start:" >&2; tail -30 "$RUN/envoy.log" >&2; exit 1; }

# A real Prometheus scraping Envoy's /stats/prometheus: the filter's metrics, the kind of
# service the filter protects.
cat >"$RUN/prometheus.yml" <<PROM
global:
  scrape_interval: 5s
scrape_configs:
- job_name: envoy
  metrics_path: /stats/prometheus
  static_configs:
  - targets: ["127.0.0.1:$ADMIN_PORT"]
PROM
setsid prometheus --config.file="$RUN/prometheus.yml" --storage.tsdb.path="$RUN/prometheus-data" \
  --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >"$RUN/prometheus.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" 30 \
  || { echo "demo.sh: Prometheus did not start:" >&2; tail -30 "$RUN/prometheus.log" >&2; exit 1; }

cat <<MSG

  oidc-filter demo is running.

    Open:   http://127.0.0.1:$DEMO_PORT/      (or http://localhost:$DEMO_PORT/)
    Login:  alice@example.com / password       (also bob@example.com / password)
    Logout: http://127.0.0.1:$DEMO_PORT/oauth2/sign_out

    OpenID provider  http://127.0.0.1:$OP_PORT/.well-known/openid-configuration
    Upstream         127.0.0.1:$UPSTREAM_PORT (shows the headers it receives)
    Envoy admin      http://127.0.0.1:$ADMIN_PORT/
    Prometheus       http://127.0.0.1:$PROMETHEUS_PORT/graph?g0.expr=oidc_filter_decisions_total
                     (the filter's metrics, scraped from Envoy's /stats/prometheus)
    Config           $RUN/envoy.json (envoy/envoy.yaml with these ports)
    Logs             $RUN/{op,upstream,envoy,prometheus}.log

  Press Ctrl-C to stop.

MSG

# Exit (and clean up) as soon as any of them dies.
set +e
wait -n "${PIDS[@]}"
echo "demo.sh: a process exited; last Envoy log lines:" >&2
tail -20 "$RUN/envoy.log" >&2
exit 1
