"""Fixtures: one OP, one upstream and one Envoy (with the oidc-filter wasm) for the session."""

import os
import shutil
import tempfile

import pytest

import harness as h


def pytest_report_header(config):
    return "oidc-filter wasm: %s" % h.wasm_path()


@pytest.fixture(scope="session")
def log_dir():
    keep = os.environ.get("E2E_LOG_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        yield keep
        return
    d = tempfile.mkdtemp(prefix="oidc-e2e-")
    yield d
    if os.environ.get("E2E_KEEP_LOGS") != "1":
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def wasm():
    path = h.wasm_path()
    if not os.path.exists(path):
        pytest.exit("oidc-filter wasm not found at %s: run `make wasm` (or set OIDC_FILTER_WASM)"
                    % path, returncode=3)
    return path


@pytest.fixture(scope="session")
def ports():
    """Envoy listener ports, reserved up front so the OP can register their redirect URIs."""
    return {n: h.free_port() for n in ("main", "peer", "short", "other", "browser", "hostprefix",
                                    "policy", "bearer", "sessions", "chunks")}


@pytest.fixture(scope="session")
def op(log_dir, ports):
    p = h.OP(log_dir, ports.values())
    yield p
    p.stop()


@pytest.fixture(scope="session")
def upstream(log_dir):
    u = h.Upstream(log_dir)
    yield u
    u.stop()


@pytest.fixture(scope="session")
def envoy(wasm, log_dir, ports, op, upstream):
    e = h.Envoy(log_dir, "envoy-main", ports["main"], op.port, upstream.port,
                overrides={"set_xauthrequest": True})
    yield e
    e.stop()


@pytest.fixture
def session():
    import requests
    with requests.Session() as s:
        yield s


EXPIRE_SECS = 60  # the filter's minimum cookie_expire


@pytest.fixture(scope="session")
def expiring(log_dir, ports, op, upstream, wasm):
    """An Envoy with cookie_expire=1m and a session made on it as early as possible."""
    import time

    import requests
    e = h.Envoy(log_dir, "envoy-short", ports["short"], op.port, upstream.port,
                concurrency=1, overrides={"cookie_expire": "%ds" % EXPIRE_SECS})
    s = requests.Session()
    res = h.login_ok(s, e, "/")
    yield {"envoy": e, "session": s, "login": res, "expires": time.monotonic() + EXPIRE_SECS,
           "cookie": s.cookies.get("_oauth2_proxy")}
    s.close()
    e.stop()


STRICT = {
    "cookie_secret": "eY01eM6m4VbQxYRBc3a8Y61hUPiDgc1CjnHnT3h8VDc=",
    "cookie_name": "_sso",
    "cookie_samesite": "strict",
    "email_domains": ["example.com"],
    "pass_user_headers": False,
    "set_xauthrequest": True,
}


@pytest.fixture(scope="session")
def strict_envoy(wasm, log_dir, ports, op, upstream):
    """A second Envoy: other cookie secret and name, email_domains example.com only,
    only X-Auth-Request-* identity headers."""
    e = h.Envoy(log_dir, "envoy-strict", ports["other"], op.port, upstream.port,
                overrides=STRICT, concurrency=1)
    yield e
    e.stop()
