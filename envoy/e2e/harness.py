"""Process and HTTP helpers for the oidc-filter Envoy e2e tests (no browser).

Starts the local OpenID provider (envoy/op/server.mjs), the demo upstream (envoy/upstream.py)
and Envoy instances on free 127.0.0.1 ports, and logs in through the filter with a plain
`requests.Session` (manual redirects, one cookie jar).
"""

import base64
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.parse as up

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ENVOY_DIR = os.path.dirname(HERE)
ROOT = os.path.dirname(ENVOY_DIR)
sys.path.insert(0, ENVOY_DIR)

import render_config  # noqa: E402  (envoy/render_config.py)

VENV_BIN = os.path.join(ENVOY_DIR, ".venv", "bin")
CLIENT_ID = "demo-client"
CLIENT_SECRET = "e2e-client-secret-" + base64.urlsafe_b64encode(os.urandom(9)).decode()
COOKIE_SECRET = base64.urlsafe_b64encode(os.urandom(32)).decode()
PASSWORD = "password"

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
JSON_ACCEPT = {"Accept": "application/json"}


def envoy_binary():
    cand = os.path.join(VENV_BIN, "envoy")
    if os.path.exists(cand):
        return cand
    return "envoy"


def wasm_path():
    return os.environ.get("OIDC_FILTER_WASM") or os.path.join(ROOT, "dist", "oidc_filter.wasm")


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_HANDED_OUT = set()
_PORTS = random.Random(os.getpid())


def free_port():
    """A free 127.0.0.1 port below the kernel's ephemeral range, never the same one twice.

    Ports are often reserved long before their listener binds (the OP registers redirect URIs
    for every Envoy at session start). A port from the ephemeral range can meanwhile become the
    local end of one of the thousands of connections the tests make, and the listener then
    fails with EADDRINUSE; below that range only listeners compete.
    """
    low = _ephemeral_low()
    if low > 12000:
        for _ in range(200):
            port = _PORTS.randrange(10000, low)
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _HANDED_OUT.add(port)
    return port


def port_open(port, host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(pred, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # noqa: BLE001  (not ready yet)
            last = e
        time.sleep(interval)
    raise TimeoutError("timed out after %ss waiting for %s (last: %r)" % (timeout, what, last))


class Proc:
    """A child process with its output in a log file; stopped with SIGTERM then SIGKILL."""

    def __init__(self, name, argv, log_dir, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(log_dir, "%s.log" % name)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True)

    def alive(self):
        return self.proc.poll() is None

    def log_text(self):
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout=5):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._log.close()


class OP:
    """The local OpenID provider (node envoy/op/server.mjs)."""

    def __init__(self, log_dir, envoy_ports, port=None, name="op", redirect_uris=None,
                 tls=None):
        """tls: (cert, key, ca) PEM paths: serve HTTPS as https://localhost:PORT."""
        self.port = port or free_port()
        self.admin_port = free_port()
        self.issuer = "http://127.0.0.1:%d" % self.port
        self.verify = True
        argv = ["node", os.path.join(ENVOY_DIR, "op", "server.mjs"),
                "--port", str(self.port), "--admin-port", str(self.admin_port),
                "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET,
                "--envoy-ports", ",".join(str(p) for p in envoy_ports)]
        if tls:
            self.issuer = "https://localhost:%d" % self.port
            self.verify = tls[2]
            argv += ["--issuer", self.issuer, "--tls-cert", tls[0], "--tls-key", tls[1]]
        if redirect_uris:
            argv += ["--redirect-uris", ",".join(redirect_uris)]
        self.proc = Proc(name, argv, log_dir)
        # Node starts in a second or two; a loaded CI machine once took over 20 s. The OP's
        # own log goes with a timeout, since the test's log directory is removed afterwards,
        # and an OP that never came up is stopped (no fixture owns it yet).
        try:
            wait_until(self._ready, 60, "OP discovery on :%d" % self.port)
        except TimeoutError as e:
            tail = self.proc.tail()
            self.proc.stop()
            raise TimeoutError("%s\nOP log:\n%s" % (e, tail)) from None

    def _ready(self):
        if not self.proc.alive():
            raise RuntimeError("OP exited:\n" + self.proc.tail())
        r = requests.get(self.issuer + "/.well-known/openid-configuration", timeout=1,
                         verify=self.verify)
        return r.status_code == 200

    def kid(self):
        return requests.get("http://127.0.0.1:%d/healthz" % self.admin_port, timeout=2).json()["kid"]

    def rotate(self):
        r = requests.post("http://127.0.0.1:%d/rotate" % self.admin_port, timeout=10)
        r.raise_for_status()
        return r.json()

    def stats(self):
        """What the token endpoint did: {"grants": {grant_type: n}, "grant_errors": {...},
        "end_session": n}."""
        return requests.get("http://127.0.0.1:%d/stats" % self.admin_port, timeout=2).json()

    def grants(self, grant_type):
        return self.stats()["grants"].get(grant_type, 0)

    def revoke(self, sub):
        """End every grant of account `sub` (its refresh tokens stop working)."""
        r = requests.post("http://127.0.0.1:%d/revoke" % self.admin_port, params={"sub": sub},
                          timeout=5)
        r.raise_for_status()
        return r.json()["revoked"]

    def misbehave(self, mode=""):
        """Make the token endpoint answer badly (see op/server.mjs); "" turns it off."""
        r = requests.post("http://127.0.0.1:%d/misbehave" % self.admin_port,
                          params={"mode": mode}, timeout=5)
        r.raise_for_status()

    def stop(self):
        self.proc.stop()


class Upstream:
    def __init__(self, log_dir):
        self.port = free_port()
        self.proc = Proc("upstream", [sys.executable, os.path.join(ENVOY_DIR, "upstream.py"),
                                      "--port", str(self.port), "--quiet"], log_dir)
        wait_until(lambda: port_open(self.port), 10, "upstream on :%d" % self.port)

    def stop(self):
        self.proc.stop()


_base_ids = itertools.count(100 + os.getpid() % 1000 * 10)


class Envoy:
    """One Envoy process running envoy/envoy.yaml rendered with test ports and settings."""

    def __init__(self, log_dir, name, port, idp_port, upstream_port, overrides=None,
                 wait_idp=True, concurrency=2, extra_idps=None, base=None):
        self.name = name
        self.port = port
        self.admin_port = free_port()
        self.base = "http://127.0.0.1:%d" % port
        plugin = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                  "cookie_secret": COOKIE_SECRET}
        plugin.update(overrides or {})
        cfg = render_config.render(port, self.admin_port, idp_port, upstream_port,
                                   wasm_path(), plugin,
                                   base=render_config.load_base(base) if base else None)
        # More providers: a copy of the "idp" cluster per name, to another port.
        for cname, cport in (extra_idps or {}).items():
            render_config.add_cluster_like(cfg, "idp", cname, cport)
        self.config_path = render_config.write(cfg, os.path.join(log_dir, "%s.json" % name))
        self.base_id = next(_base_ids)
        argv = [envoy_binary(), "-c", self.config_path, "--base-id", str(self.base_id),
                "--concurrency", str(concurrency), "--log-level", "warning",
                "--component-log-level", "wasm:info",
                "--drain-time-s", "1", "--parent-shutdown-time-s", "2"]
        self.proc = Proc(name, argv, log_dir)
        wait_until(self._live, 30, "%s admin /ready" % name)
        if wait_idp:
            self.wait_idp_ready()

    def _live(self):
        if not self.proc.alive():
            raise RuntimeError("%s exited (rc=%s):\n%s" % (self.name, self.proc.proc.returncode,
                                                          self.proc.tail()))
        r = requests.get("http://127.0.0.1:%d/ready" % self.admin_port, timeout=1)
        return r.status_code == 200

    def wait_idp_ready(self, timeout=20):
        """Wait until the filter has loaded discovery + JWKS in every worker VM."""
        def ready():
            if not self.proc.alive():
                raise RuntimeError("%s exited:\n%s" % (self.name, self.proc.tail()))
            # Each worker thread has its own VM and its own IdP state, and each connection
            # goes to one of them: 16 ready answers in a row on new connections miss a
            # worker with a chance of 2^-15 (two workers).
            for _ in range(16):
                r = requests.get(self.base + "/oauth2/ready", allow_redirects=False, timeout=2,
                                 headers={"Connection": "close"})
                if r.status_code != 200:
                    return False
            return True
        wait_until(ready, timeout, "%s filter IdP-ready (302 on login start)" % self.name, 0.2)

    def stop(self):
        self.proc.stop()


# ---------------------------------------------------------------- login through the filter

def qs(url):
    return dict(up.parse_qsl(up.urlsplit(url).query, keep_blank_values=True))


def set_cookie_headers(resp):
    """All Set-Cookie header lines of a requests response (requests folds them otherwise)."""
    raw = resp.raw.headers
    if hasattr(raw, "get_all"):
        return raw.get_all("Set-Cookie") or []
    return raw.getlist("Set-Cookie")


def op_login(s, auth_url, envoy_base, login, password=PASSWORD, timeout=5):
    """Follow the OP from the authorization URL until it redirects back to the Envoy.

    Answers the login and consent forms; returns the callback URL (on envoy_base).
    """
    url = auth_url
    for _ in range(20):
        if url.startswith(envoy_base):
            return url
        r = s.get(url, headers=HTML, allow_redirects=False, timeout=timeout)
        if r.status_code in (302, 303):
            url = up.urljoin(url, r.headers["Location"])
            continue
        if r.status_code == 200 and "/interaction/" in url:
            if 'name="prompt" value="login"' in r.text:
                data = {"prompt": "login", "login": login, "password": password}
            elif 'name="prompt" value="consent"' in r.text:
                data = {"prompt": "consent"}
            else:
                raise AssertionError("unexpected OP page at %s: %s" % (url, r.text[:300]))
            r = s.post(url, data=data, headers=HTML, allow_redirects=False, timeout=timeout)
            if r.status_code == 200 and "Invalid email or password" in r.text:
                raise AssertionError("OP refused the login of %s" % login)
            assert r.status_code in (302, 303), (r.status_code, r.text[:300])
            url = up.urljoin(url, r.headers["Location"])
            continue
        raise AssertionError("unexpected OP answer %s at %s: %s" % (r.status_code, url, r.text[:300]))
    raise AssertionError("too many redirects at the OP")


class LoginResult:
    def __init__(self, start, auth_url, callback_url, callback):
        self.start = start            # the filter's 302 to the OP
        self.auth_url = auth_url
        self.callback_url = callback_url
        self.callback = callback      # the filter's answer to the callback


def login(s, envoy, path="/", user="alice@example.com", password=PASSWORD, host=None):
    """Unauthenticated GET path -> OP login -> callback. Returns a LoginResult (no asserts on
    the callback answer, so tests can check failures too)."""
    base = envoy.base if host is None else "http://%s" % host
    hdrs = dict(HTML)
    r = s.get(envoy.base + path, headers=hdrs, allow_redirects=False, timeout=5)
    assert r.status_code == 302, "expected 302 to the OP, got %s %s %s" % (
        r.status_code, r.headers.get("x-oidc-filter-reason"), r.text[:200])
    auth_url = r.headers["Location"]
    cb_url = op_login(s, auth_url, base, user, password)
    cb = s.get(envoy.base + up.urlsplit(cb_url).path + "?" + up.urlsplit(cb_url).query,
               headers=hdrs, allow_redirects=False, timeout=10)
    return LoginResult(r, auth_url, cb_url, cb)


def login_ok(s, envoy, path="/", user="alice@example.com"):
    res = login(s, envoy, path, user)
    assert res.callback.status_code == 302, "callback: %s %s %s" % (
        res.callback.status_code, res.callback.headers.get("x-oidc-filter-reason"),
        res.callback.text[:200])
    return res


def upstream_view(resp):
    """The JSON the demo upstream returned: method, path, headers (list), identity (dict)."""
    assert resp.status_code == 200, "expected 200 from upstream, got %s %s %s" % (
        resp.status_code, resp.headers.get("x-oidc-filter-reason"), resp.text[:200])
    data = resp.json()
    data["hdict"] = {}
    for k, v in data["headers"]:
        data["hdict"].setdefault(k, []).append(v)
    return data


def get_json(s, envoy, path, headers=None, **kw):
    h = dict(JSON_ACCEPT)
    h.update(headers or {})
    return s.get(envoy.base + path, headers=h, allow_redirects=False, timeout=5, **kw)


def jwt_claims(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
