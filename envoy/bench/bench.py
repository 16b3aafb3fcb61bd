#!/usr/bin/env python3
"""`make bench`: what the filter costs per request in a real Envoy, next to the alternatives.

One Envoy (--concurrency 1) per configuration, every route answered by `direct_response` so
that only the HTTP filter chain costs. wrk drives each in turn, interleaved A B C ... A B C ...
for --rounds rounds; wrk and Envoy are pinned to different cores where the machine has two.

  a  none            no auth filter
  b  wasm-noop       dist/noop.wasm: a proxy-wasm filter that does nothing (the wasm floor)
  b2 wasm-cookie-floor  dist/cookie_floor.wasm: reads the Cookie header and sets one header,
                     nothing else; the least any cookie-session filter costs on this host
  c  envoy-oauth2    Envoy's native envoy.filters.http.oauth2, valid HMAC cookies (its
                     defaults: tokens in the cookies AES-encrypted)
  c2 envoy-oauth2-plain  the same with disable_token_encryption: its cheapest setting
  d  oidc-session    our filter, valid session cookie, set_xauthrequest
  e  oidc-redirect   our filter, no session: 302 to the authorization endpoint
  f  oidc-callback   our filter, a full callback: token request (answered by Envoy itself),
                     RS256 ID token check, session cookie, 302

The provider (discovery, JWKS, token endpoint) is a second listener of the same Envoy that
answers with direct_response, so (f) includes the token endpoint's (small) cost on the same
core. Everything to present is minted by `cargo run --example mint-session` with the filter's
own code; the native filter's cookies are computed here as Envoy 1.40 checks them.

Every configuration is checked before it is measured (status, headers, what reaches the
route); during each measurement Envoy's own counters must show only the expected status class.

Prints a table and writes target/bench/results.json. Stdlib only; run with envoy/.venv's
python (envoy/bench/run.sh does).

  bench.py [--duration 5] [--rounds 3] [--connections 10] [--warmup 2] [--only a,d]
           [--envoy PATH] [--out target/bench/results.json]
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

HOST = "app.bench"
ISSUER = "http://idp.bench"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret"
COOKIE_SECRET = "BnNzAujot3tvWQTKh5GrRC9-j68uAYh5C5CbOHkA9bE="  # base64 of 32 random bytes
NATIVE_HMAC_SECRET = "bench-native-hmac-secret-0123456789"
BENCH_USER = "bench-user-0001"

# What a browser sends on every request, beyond the cookies.
COMMON_HEADERS = [
    ("Host", HOST),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("Accept-Language", "en-US,en;q=0.5"),
    ("Accept-Encoding", "gzip, deflate"),
]

CONFIGS = [
    # key, name, description
    ("a", "none", "no auth filter"),
    ("b", "wasm-noop", "no-op wasm filter (wasm floor)"),
    ("b2", "wasm-cookie-floor", "wasm: read Cookie, set 1 header"),
    ("c", "envoy-oauth2", "Envoy oauth2, valid cookies"),
    ("c2", "envoy-oauth2-plain", "Envoy oauth2, tokens unencrypted"),
    ("d", "oidc-session", "oidc-filter, valid session"),
    ("e", "oidc-redirect", "oidc-filter, login redirect"),
    ("f", "oidc-callback", "oidc-filter, full callback"),
]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


# ---------------------------------------------------------------- Envoy configuration


def free_port_block(start, count):
    """First block of `count` consecutive free TCP ports on 127.0.0.1 at or after `start`."""
    port = start
    while port + count < 65000:
        ok = True
        for p in range(port, port + count):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            finally:
                s.close()
            if not ok:
                break
        if ok:
            return port
        port += count
    raise RuntimeError("no free ports")


def direct(body, status=200, content_type="text/plain"):
    return {
        "direct_response": {"status": status, "body": {"inline_string": body}},
        "response_headers_to_add": [
            {"header": {"key": "content-type", "value": content_type}}
        ],
    }


def app_routes():
    """The protected application. The /__verify/* routes let the checks see what the filter
    forwarded (they are never measured); every measured request takes the last route."""
    return [
        {
            "match": {
                "path": "/__verify/identity",
                "headers": [
                    {"name": "x-auth-request-user", "string_match": {"exact": BENCH_USER}},
                    {"name": "x-forwarded-user", "string_match": {"exact": BENCH_USER}},
                    {"name": "cookie", "present_match": True, "invert_match": True},
                ],
            },
            **direct("identity-forwarded\n"),
        },
        {
            "match": {
                "path": "/__verify/floor",
                "headers": [{"name": "x-auth-request-user", "string_match": {"safe_regex": {"regex": "[1-9][0-9]*"}}}],
            },
            **direct("floor-forwarded\n"),
        },
        {
            "match": {
                "path": "/__verify/bearer",
                "headers": [{"name": "authorization", "string_match": {"prefix": "Bearer ey"}}],
            },
            **direct("bearer-forwarded\n"),
        },
        {"match": {"prefix": "/"}, **direct("ok\n")},
    ]


def idp_listener(port, mint):
    discovery = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    token = {
        "access_token": "bench-access-token",
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": mint["id_token"],
    }
    js = "application/json"
    routes = [
        {"match": {"path": "/.well-known/openid-configuration"}, **direct(json.dumps(discovery), content_type=js)},
        {"match": {"path": "/jwks"}, **direct(json.dumps(mint["jwks"]), content_type=js)},
        {"match": {"path": "/token"}, **direct(json.dumps(token), content_type=js)},
        {"match": {"prefix": "/"}, **direct("not found\n", status=404)},
    ]
    return hcm_listener("idp", port, "idp", routes, [])


def hcm_listener(name, port, stat_prefix, routes, filters):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": stat_prefix,
                            "codec_type": "AUTO",
                            "route_config": {
                                "name": f"{name}_route",
                                "max_direct_response_body_size_bytes": 65536,
                                "virtual_hosts": [
                                    {"name": name, "domains": ["*"], "routes": routes}
                                ],
                            },
                            "http_filters": filters
                            + [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                    },
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def wasm_filter(path, vm_id, configuration):
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": vm_id,
                "root_id": "",
                "fail_open": False,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": path}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
            },
        },
    }


def native_oauth2_filter(encrypt_tokens=True):
    return {
        "name": "envoy.filters.http.oauth2",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.oauth2.v3.OAuth2",
            "config": {
                "token_endpoint": {"cluster": "idp", "uri": f"{ISSUER}/token", "timeout": "3s"},
                "authorization_endpoint": f"{ISSUER}/authorize",
                "redirect_uri": "http://%REQ(:authority)%/oauth2/callback",
                "redirect_path_matcher": {"path": {"exact": "/oauth2/callback"}},
                "signout_path": {"path": {"exact": "/oauth2/sign_out"}},
                # Closest to what our filter does with a session: pass the identity upstream.
                "forward_bearer_token": True,
                "auth_scopes": ["openid", "email", "profile"],
                "disable_token_encryption": not encrypt_tokens,
                "credentials": {
                    "client_id": CLIENT_ID,
                    "token_secret": {"name": "token"},
                    "hmac_secret": {"name": "hmac"},
                },
            },
        },
    }


def plugin_config():
    return {
        "oidc_issuer_url": ISSUER,
        "idp_cluster": "idp",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "cookie_secret": COOKIE_SECRET,
        "cookie_secure": False,
        "set_xauthrequest": True,
    }


def envoy_config(key, ports, mint, wasm, noop, floor=None):
    main, idp, admin = ports
    if key == "a":
        filters = []
    elif key == "b":
        filters = [wasm_filter(noop, "noop", "")]
    elif key == "b2":
        filters = [wasm_filter(floor, "cookie_floor", "")]
    elif key == "c":
        filters = [native_oauth2_filter()]
    elif key == "c2":
        filters = [native_oauth2_filter(encrypt_tokens=False)]
    else:
        filters = [wasm_filter(wasm, "oidc_filter", json.dumps(plugin_config()))]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                hcm_listener("main", main, "bench", app_routes(), filters),
                idp_listener(idp, mint),
            ],
            "clusters": [
                {
                    "name": "idp",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": "idp",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": idp,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
            "secrets": [
                {"name": "token", "generic_secret": {"secret": {"inline_string": CLIENT_SECRET}}},
                {"name": "hmac", "generic_secret": {"secret": {"inline_string": NATIVE_HMAC_SECRET}}},
            ],
        },
    }


# ---------------------------------------------------------------- native oauth2 cookies


def aes256cbc_encrypt(plaintext, secret):
    """Envoy's oauth2 token encryption: AES-256-CBC, key = SHA-256(hmac secret), random IV
    prepended, base64url without padding."""
    key = hashlib.sha256(secret.encode()).hexdigest()
    iv = os.urandom(16)
    ct = subprocess.run(
        ["openssl", "enc", "-aes-256-cbc", "-K", key, "-iv", iv.hex()],
        input=plaintext.encode(),
        capture_output=True,
        check=True,
    ).stdout
    return b64url(iv + ct)


def native_cookies(mint, encrypted, hex_hmac=False):
    """Cookies Envoy's oauth2 filter accepts: OauthHMAC = base64(HMAC-SHA256(hmac secret,
    host \\n expires \\n access_token \\n id_token \\n refresh_token)) over the plain tokens,
    the tokens themselves encrypted (1.40's default) or not."""
    expires = str(int(time.time()) + 24 * 3600)
    access = mint["id_token"]  # a JWT-sized access token, as real providers issue
    id_token = mint["id_token"]
    refresh = "bench-refresh-" + "r" * 50
    payload = "\n".join([HOST, expires, access, id_token, refresh]).encode()
    mac = hmac.new(NATIVE_HMAC_SECRET.encode(), payload, hashlib.sha256)
    sig = base64.b64encode(mac.hexdigest().encode() if hex_hmac else mac.digest()).decode()
    enc = (lambda t: aes256cbc_encrypt(t, NATIVE_HMAC_SECRET)) if encrypted else (lambda t: t)
    return "; ".join(
        [
            f"OauthHMAC={sig}",
            f"OauthExpires={expires}",
            f"BearerToken={enc(access)}",
            f"IdToken={enc(id_token)}",
            f"RefreshToken={enc(refresh)}",
        ]
    )


# ---------------------------------------------------------------- processes and probes


class Envoy:
    def __init__(self, key, name, ports, cfg_path, log_path, envoy_bin, cpu):
        self.key, self.name = key, name
        self.main, self.idp, self.admin = ports
        self.log_path = log_path
        cmd = [
            envoy_bin, "-c", cfg_path, "--concurrency", "1", "--disable-hot-restart",
            "-l", "warning", "--log-path", log_path,
        ]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(log_path + ".stderr", "w"), cwd=ROOT, start_new_session=True,
        )

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def admin_get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    def stats(self):
        _, body = self.admin_get("/stats?usedonly&filter=%5Ehttp%5C.bench%5C.")
        out = {}
        for line in body.splitlines():
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None


def request(port, path, headers, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        return r.status, r.getheaders(), r.read().decode(errors="replace")
    finally:
        c.close()


def header_values(headers, name):
    return [v for k, v in headers if k.lower() == name]


def request_past_503(port, path, headers, timeout=20):
    """request(), repeated while it answers 503 (IdP not reached yet), for up to `timeout` s."""
    deadline = time.time() + timeout
    while True:
        s, h, body = request(port, path, headers)
        if s != 503 or time.time() > deadline:
            return s, h, body
        time.sleep(0.2)


def wait_ready(env, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not env.alive():
            raise RuntimeError(f"Envoy ({env.key}) exited; see {env.log_path}*")
        try:
            status, body = env.admin_get("/ready")
            if status == 200 and body.strip() == "LIVE":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"Envoy ({env.key}) not ready after {timeout}s; see {env.log_path}*")


def log_sizes(path):
    return tuple(os.path.getsize(p) if os.path.exists(p) else 0 for p in (path, path + ".stderr"))


def fail(msg):
    raise RuntimeError(msg)


# ---------------------------------------------------------------- wrk


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(s):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s.strip())
    return float(m.group(1)) * UNIT[m.group(2)] if m else None


def run_wrk(port, path, headers, duration, connections, cpu):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for k, v in headers:
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    if out.returncode != 0:
        fail(f"wrk failed: {out.stderr.strip() or out.stdout.strip()}")
    text = out.stdout
    res = {"raw": text}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    res["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        res[f"p{pct}_ms"] = to_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    res["non_2xx_3xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    res["socket_errors"] = m.group(1) if m else None
    return res


# ---------------------------------------------------------------- the run


def cpu_busy():
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                out[int(m.group(1))] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def mint_values(work):
    cfg_path = os.path.join(work, "plugin.json")
    with open(cfg_path, "w") as f:
        json.dump(plugin_config(), f)
    cmd = ["cargo", "run", "-q", "-p", "oidc-filter", "--example", "mint-session", "--", cfg_path, "--ttl", "14400"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"mint-session failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def requests_for(mint, native_cookie, native_plain_cookie=""):
    flow = mint["flow"]
    session = mint["session_cookie"]
    return {
        "a": ("/", COMMON_HEADERS, "2xx"),
        "b": ("/", COMMON_HEADERS, "2xx"),
        "b2": ("/", COMMON_HEADERS + [("Cookie", f"{session['name']}={session['value']}")], "2xx"),
        "c": ("/", COMMON_HEADERS + [("Cookie", native_cookie)], "2xx"),
        "c2": ("/", COMMON_HEADERS + [("Cookie", native_plain_cookie)], "2xx"),
        "d": ("/", COMMON_HEADERS + [("Cookie", f"{session['name']}={session['value']}")], "2xx"),
        "e": ("/", COMMON_HEADERS, "3xx"),
        "f": (
            f"/oauth2/callback?code=bench-code&state={flow['state']}",
            COMMON_HEADERS + [("Cookie", f"{flow['cookie_name']}={flow['cookie_value']}")],
            "3xx",
        ),
    }


def check(env, key, reqs, mint):
    """Each configuration must behave as intended before it is measured."""
    path, headers, _ = reqs[key]
    port = env.main
    if key in ("a", "b"):
        s, _, body = request(port, path, headers)
        if s != 200 or body != "ok\n":
            fail(f"({key}) expected 200 ok, got {s} {body!r}")
        return "200 from direct_response"
    if key == "b2":
        s, _, body = request(port, "/__verify/floor", headers)
        if s != 200 or body != "floor-forwarded\n":
            fail(f"(b2) the Cookie header's length did not reach the route: {s} {body!r}")
        s, _, body = request(port, path, headers)
        if s != 200 or body != "ok\n":
            fail(f"(b2) expected 200 ok, got {s} {body!r}")
        return "200, Cookie read and one header set"
    if key in ("c", "c2"):
        cookie_hdr = headers[-1]
        s, h, _ = request(port, "/__verify/bearer", COMMON_HEADERS + [cookie_hdr])
        if s != 200:
            return None  # caller tries the next cookie format
        s, h, body = request(port, path, headers)
        if s != 200:
            fail(f"({key}) cookies accepted on /__verify/bearer but {s} on {path}")
        s, h, _ = request(port, "/", COMMON_HEADERS)
        if s != 302:
            fail(f"({key}) no cookie should redirect, got {s}")
        return "200 with cookies (bearer token forwarded), 302 without"
    if key == "d":
        s, h, body = request(port, "/__verify/identity", headers)
        if s != 200 or body != "identity-forwarded\n":
            fail(f"(d) identity not forwarded: {s} {body!r} {h}")
        s, h, body = request(port, path, headers)
        if s != 200:
            fail(f"(d) valid session: expected 200, got {s}")
        name, value = mint["session_cookie"]["name"], mint["session_cookie"]["value"]
        bad = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
        s, h, _ = request(port, path, COMMON_HEADERS + [("Cookie", f"{name}={bad}")])
        if s not in (302, 401, 503):
            fail(f"(d) a tampered cookie got {s}")
        return "200, x-auth-request-*/x-forwarded-* set, own cookie removed; tampered cookie refused"
    if key == "e":
        s, h, body = request_past_503(port, path, headers)
        loc = (header_values(h, "location") or [""])[0]
        cookies = header_values(h, "set-cookie")
        if s != 302 or not loc.startswith(f"{ISSUER}/authorize?"):
            fail(f"(e) expected 302 to the authorization endpoint, got {s} {loc!r} {body!r}")
        if not any(c.startswith(f"{mint['session_cookie']['name']}_csrf_") for c in cookies):
            fail(f"(e) no flow cookie: {cookies}")
        return "302 to authorization endpoint with flow cookie"
    if key == "f":
        s, h, body = request_past_503(port, path, headers)
        cookies = header_values(h, "set-cookie")
        name = mint["session_cookie"]["name"]
        if s != 302 or not any(re.match(rf"{re.escape(name)}=[23]\.", c) for c in cookies):
            fail(f"(f) expected 302 with a session cookie, got {s} {h} {body!r}")
        return "302 with a new session cookie (token endpoint answered, ID token validated)"
    fail(key)


def fmt_rate(x):
    return f"{x / 1000:.1f}k" if x >= 10000 else f"{x:.0f}"


def fmt_ms(x):
    if x is None:
        return "-"
    return f"{x * 1000:.0f}µs" if x < 1 else f"{x:.2f}ms"


def summarize(results, keys):
    summary = {}
    for k in keys:
        runs = results[k]["rounds"]
        rps = [r["rps"] for r in runs]
        cpu = [r["cpu_us_per_req"] for r in runs if r.get("cpu_us_per_req")]
        summary[k] = {
            "rps_median": statistics.median(rps),
            "rps_min": min(rps),
            "rps_max": max(rps),
            "p50_ms": statistics.median([r["p50_ms"] for r in runs]),
            "p99_ms": statistics.median([r["p99_ms"] for r in runs]),
            "cpu_us_per_req": statistics.median(cpu) if cpu else None,
        }
    for k in keys:
        s = summary[k]
        for base in ("a", "b", "b2", "c"):
            if base in summary:
                s[f"ratio_to_{base}"] = s["rps_median"] / summary[base]["rps_median"]
                # Ratio of medians of per-round ratios: each round's configurations ran within
                # seconds of each other, so this is less sensitive to drift than the above.
                per_round = [
                    r["rps"] / b["rps"] for r, b in zip(results[k]["rounds"], results[base]["rounds"])
                ]
                s[f"round_ratio_to_{base}"] = statistics.median(per_round)
        if "a" in summary and s["cpu_us_per_req"] and summary["a"]["cpu_us_per_req"]:
            s["cpu_us_over_a"] = s["cpu_us_per_req"] - summary["a"]["cpu_us_per_req"]
    return summary


def print_table(results, summary, keys, host):
    names = {k: (n, d) for k, n, d in CONFIGS}
    hdr = f"{'config':<36} {'req/s median [min–max]':<24} {'p50':>7} {'p99':>8} {'×(a)':>5} {'×(b)':>5} {'×(b2)':>5} {'×(c)':>5} {'CPU/req':>8} {'+vs(a)':>7} {'RSS':>7} {'.wasm':>7}"
    print()
    print(hdr)
    print("-" * len(hdr))
    for k in keys:
        s = summary[k]
        n, d = names[k]
        rate = f"{fmt_rate(s['rps_median'])} [{fmt_rate(s['rps_min'])}–{fmt_rate(s['rps_max'])}]"
        ra = f"{s['ratio_to_a']:.2f}" if "ratio_to_a" in s else "-"
        rb = f"{s['ratio_to_b']:.2f}" if "ratio_to_b" in s else "-"
        rc = f"{s['ratio_to_c']:.2f}" if "ratio_to_c" in s else "-"
        rb2 = f"{s['ratio_to_b2']:.2f}" if "ratio_to_b2" in s else "-"
        cpu = f"{s['cpu_us_per_req']:.1f}µs" if s["cpu_us_per_req"] else "-"
        over = f"{s['cpu_us_over_a']:+.1f}" if s.get("cpu_us_over_a") is not None else "-"
        rss = results[k].get("rss_kib")
        rss = f"{rss / 1024:.0f}MiB" if rss else "-"
        wasm = results[k].get("wasm_bytes")
        wasm = f"{wasm / 1024:.0f}KiB" if wasm else "-"
        print(f"{k + ')':<3} {d:<32} {rate:<24} {fmt_ms(s['p50_ms']):>7} {fmt_ms(s['p99_ms']):>8} {ra:>5} {rb:>5} {rb2:>5} {rc:>5} {cpu:>8} {over:>7} {rss:>7} {wasm:>7}")
    print()
    print("×(a), ×(b), ×(b2), ×(c): median req/s relative to that configuration. CPU/req: Envoy's CPU time")
    print("per request (all threads, pinned to one core), median over rounds; +vs(a): minus (a)'s.")
    print("RSS: Envoy's VmRSS after the run. p50/p99: wrk --latency, median over rounds.")
    if host is not None:
        print()
        print_host(host)


def print_host(host):
    """target/bench/host.json (make bench-host): deterministic per-request counts."""
    cases = host.get("cases") if isinstance(host, dict) else None
    if not isinstance(cases, dict):
        print(f"host-tests (target/bench/host.json): {json.dumps(host)[:500]}")
        return
    unit = host.get("unit", "")
    print(f"host-tests, deterministic (target/bench/host.json; {unit}):")
    for name, c in cases.items():
        if isinstance(c, dict):
            fuel = c.get("fuel")
            fuel = f"{fuel:>12,}" if isinstance(fuel, int) else f"{str(fuel):>12}"
            print(f"  {name:<26} {fuel}  {c.get('what', '')}")
        else:
            print(f"  {name:<26} {c}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", 5)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    ap.add_argument("--connections", type=int, default=int(os.environ.get("BENCH_CONNECTIONS", 10)))
    ap.add_argument("--warmup", type=int, default=2, help="seconds of wrk per config before round 1")
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""), help="e.g. a,b,d")
    ap.add_argument("--envoy", default=os.path.join(ROOT, "envoy", ".venv", "bin", "envoy"))
    ap.add_argument("--wasm", default=os.path.join(ROOT, "dist", "oidc_filter.wasm"))
    ap.add_argument("--noop", default=os.path.join(ROOT, "dist", "noop.wasm"))
    ap.add_argument("--floor", default=os.path.join(ROOT, "dist", "cookie_floor.wasm"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "results.json"))
    ap.add_argument("--host-json", default=os.path.join(ROOT, "target", "bench", "host.json"))
    args = ap.parse_args()

    keys = [k for k, _, _ in CONFIGS]
    if args.only:
        keys = [k for k in keys if k in args.only.split(",")]
    for tool in ("wrk", "openssl"):
        if not shutil.which(tool):
            fail(f"{tool} not found (envoy/bench/run.sh installs it)")
    for path in (args.envoy, args.wasm, args.noop, args.floor):
        if not os.path.exists(path):
            fail(f"{path} missing (make wasm dist/noop.wasm dist/cookie_floor.wasm; envoy/install.sh)")

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2 and shutil.which("taskset"):
        wrk_cpu, envoy_cpu = cpus[0], cpus[-1]
    else:
        wrk_cpu = envoy_cpu = None
    work = os.path.join(os.path.dirname(args.out), "run")
    os.makedirs(work, exist_ok=True)

    log("minting cookies and the ID token (cargo run --example mint-session)")
    mint = mint_values(work)
    wasm_sizes = {"b": os.path.getsize(args.noop), "b2": os.path.getsize(args.floor)}
    for k in ("d", "e", "f"):
        wasm_sizes[k] = os.path.getsize(args.wasm)

    base = free_port_block(28100, 3 * len(CONFIGS))
    envoys = {}
    results = {}
    native_format = None
    log_offsets = {}

    def stop_all(*_):
        for e in envoys.values():
            e.stop()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(143)))
    try:
        for i, k in enumerate(keys):
            ports = (base + 3 * i, base + 3 * i + 1, base + 3 * i + 2)
            cfg = envoy_config(
                k, ports, mint, os.path.abspath(args.wasm), os.path.abspath(args.noop), os.path.abspath(args.floor)
            )
            name = dict((c[0], c[1]) for c in CONFIGS)[k]
            cfg_path = os.path.join(work, f"{k}-{name}.json")
            with open(cfg_path, "w") as f:
                json.dump(cfg, f, indent=1)
            envoys[k] = Envoy(k, name, ports, cfg_path, os.path.join(work, f"{k}-{name}.log"), args.envoy, envoy_cpu)
        for k in keys:
            wait_ready(envoys[k])

        # Native filter: find the cookie format this Envoy accepts (1.40 encrypts tokens by
        # default; the HMAC is over the plain tokens).
        native_cookie = None
        if "c" in keys:
            for encrypted, hex_hmac in ((True, False), (False, False), (True, True), (False, True)):
                cookie = native_cookies(mint, encrypted, hex_hmac)
                reqs = requests_for(mint, cookie)
                if check(envoys["c"], "c", reqs, mint):
                    native_cookie = cookie
                    native_format = {"tokens_encrypted": encrypted, "hmac": "base64(hex)" if hex_hmac else "base64(raw)"}
                    break
            if native_cookie is None:
                fail("(c) Envoy's oauth2 filter accepted none of the cookie formats tried")
        native_plain_cookie = ""
        if "c2" in keys:
            hex_hmac = bool(native_format and native_format["hmac"] == "base64(hex)")
            native_plain_cookie = native_cookies(mint, False, hex_hmac)
        reqs = requests_for(mint, native_cookie or "", native_plain_cookie)
        checks = {}
        for k in keys:
            checks[k] = check(envoys[k], k, reqs, mint)
            if not checks[k]:
                fail(f"({k}) Envoy's oauth2 filter refused the cookies")
            log(f"check ({k}) {envoys[k].name}: {checks[k]}")
        if native_format:
            log(f"native oauth2 cookies: tokens encrypted={native_format['tokens_encrypted']}, HMAC {native_format['hmac']}")

        for k in keys:
            results[k] = {"name": envoys[k].name, "check": checks[k], "rounds": [], "wasm_bytes": wasm_sizes.get(k)}
        if args.warmup > 0:
            log(f"warm-up: {args.warmup}s per configuration")
            for k in keys:
                path, headers, _ = reqs[k]
                run_wrk(envoys[k].main, path, headers, args.warmup, args.connections, wrk_cpu)

        # Only what Envoy logs from here on counts (the format probes above may log).
        log_offsets = {k: log_sizes(envoys[k].log_path) for k in keys}
        load_before = open("/proc/loadavg").read().split()[:3]
        t0 = time.time()
        for rnd in range(args.rounds):
            for k in keys:
                env = envoys[k]
                path, headers, expect = reqs[k]
                st0, cpu0, busy0 = env.stats(), env.cpu_seconds(), cpu_busy()
                w = run_wrk(env.main, path, headers, args.duration, args.connections, wrk_cpu)
                st1, cpu1, busy1 = env.stats(), env.cpu_seconds(), cpu_busy()
                classes = {}
                for cls in ("2xx", "3xx", "4xx", "5xx"):
                    n = f"http.bench.downstream_rq_{cls}"
                    classes[cls] = st1.get(n, 0) - st0.get(n, 0)
                total = sum(classes.values())
                wrong = total - classes[expect]
                w.pop("raw")
                w["status_classes"] = classes
                w["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / total if total else None
                if envoy_cpu is not None:
                    b = busy1[envoy_cpu][0] - busy0[envoy_cpu][0]
                    t = busy1[envoy_cpu][1] - busy0[envoy_cpu][1]
                    tck = os.sysconf("SC_CLK_TCK")
                    w["envoy_core_busy"] = b / t if t else None
                    # Whatever ran on Envoy's core that was not Envoy.
                    w["envoy_core_foreign"] = max(0.0, (b / tck - (cpu1 - cpu0)) / (t / tck)) if t else None
                w["loadavg"] = open("/proc/loadavg").read().split()[:3]
                results[k]["rounds"].append(w)
                flag = "" if wrong == 0 else f"  UNEXPECTED: {wrong} responses not {expect}: {classes}"
                log(
                    f"round {rnd + 1}/{args.rounds} ({k}) {env.name:<18} {w['rps']:>9.0f} req/s"
                    f"  p50 {fmt_ms(w['p50_ms'])}  p99 {fmt_ms(w['p99_ms'])}"
                    f"  cpu {w['cpu_us_per_req'] or 0:.1f}µs/req{flag}"
                )
                if wrong:
                    results[k].setdefault("errors", []).append(f"round {rnd + 1}: {classes}")
        elapsed = time.time() - t0
        for k in keys:
            results[k]["rss_kib"] = envoys[k].rss_kib()
    finally:
        stop_all()

    log_errors = {}
    for k in keys:
        p = envoys[k].log_path
        lines = []
        for fn, offset in zip((p, p + ".stderr"), log_offsets.get(k, (0, 0))):
            if os.path.exists(fn):
                with open(fn, errors="replace") as f:
                    f.seek(offset)
                    lines += [l for l in f if re.search(r"\]\s*\[(error|critical)\]", l)]
        if lines:
            log_errors[k] = {"count": len(lines), "first": lines[0].strip()[:300]}
            results[k]["envoy_log_errors"] = log_errors[k]

    host = None
    if os.path.exists(args.host_json):
        try:
            host = json.load(open(args.host_json))
        except ValueError as e:
            log(f"{args.host_json}: not JSON ({e}); ignored")

    summary = summarize(results, keys)
    envoy_version = subprocess.run([args.envoy, "--version"], capture_output=True, text=True).stdout.strip()
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "envoy": envoy_version.split("version:")[-1].strip(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0].strip(),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None),
        "pinning": {"wrk": wrk_cpu, "envoy": envoy_cpu},
        "duration_s": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "measure_seconds": round(elapsed, 1),
        "loadavg_before": load_before,
        "loadavg_after": open("/proc/loadavg").read().split()[:3],
        "native_oauth2_cookie_format": native_format,
        "configs": {k: {**results[k], "summary": summary[k]} for k in keys},
        "host_tests": host,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)

    print(f"\n{doc['envoy']}, {doc['wrk']}; {doc['cpus']} CPUs ({doc['cpu_model']}); wrk on CPU {wrk_cpu}, Envoy on CPU {envoy_cpu};")
    print(f"{args.rounds} rounds × {args.duration}s, {args.connections} connections, interleaved {' '.join(keys)}; load avg before {' '.join(load_before)}, after {' '.join(doc['loadavg_after'])}")
    print_table(results, summary, keys, host)
    foreign = [r.get("envoy_core_foreign") or 0 for k in keys for r in results[k]["rounds"]]
    if foreign and max(foreign) > 0.05:
        print(f"\nnote: other processes used up to {max(foreign) * 100:.0f}% of Envoy's core during a measurement: compare ratios, not absolute numbers.")
    bad = [k for k in keys if results[k].get("errors")]
    if log_errors:
        which = ", ".join(f"({k}) x{v['count']}" for k, v in log_errors.items())
        print(f"\nnote: Envoy logged errors during the measurement for: {which} (see {work})")
    print(f"\nwrote {os.path.relpath(args.out, ROOT)}")
    if bad:
        print(f"FAILED: unexpected statuses during measurement of {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(1)
