"""End-to-end: several Envoys, concurrent logins, OP key rotation, OP down at start, expiry."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import harness as h
from harness import HTML


def test_two_logins_interleaved(envoy):
    """Two users log in at the same time; each ends up with their own identity."""
    with requests.Session() as s1, requests.Session() as s2:
        r1 = s1.get(envoy.base + "/one", headers=HTML, allow_redirects=False, timeout=5)
        r2 = s2.get(envoy.base + "/two", headers=HTML, allow_redirects=False, timeout=5)
        assert r1.status_code == r2.status_code == 302
        assert h.qs(r1.headers["Location"])["state"] != h.qs(r2.headers["Location"])["state"]
        cb1 = h.op_login(s1, r1.headers["Location"], envoy.base, "alice@example.com")
        cb2 = h.op_login(s2, r2.headers["Location"], envoy.base, "bob@example.com")
        c2 = s2.get(cb2, headers=HTML, allow_redirects=False, timeout=10)
        c1 = s1.get(cb1, headers=HTML, allow_redirects=False, timeout=10)
        assert c1.status_code == c2.status_code == 302, (c1.text[:200], c2.text[:200])
        assert c1.headers["Location"].endswith("/one") and c2.headers["Location"].endswith("/two")
        v1 = h.upstream_view(h.get_json(s1, envoy, "/me"))
        v2 = h.upstream_view(h.get_json(s2, envoy, "/me"))
        assert v1["identity"]["x-forwarded-email"] == "alice@example.com"
        assert v2["identity"]["x-forwarded-email"] == "bob@example.com"


def test_two_tabs_one_browser(envoy):
    """One cookie jar starts two logins (two tabs); both callbacks succeed (per-flow cookies)."""
    with requests.Session() as s:
        r1 = s.get(envoy.base + "/tab1", headers=HTML, allow_redirects=False, timeout=5)
        r2 = s.get(envoy.base + "/tab2", headers=HTML, allow_redirects=False, timeout=5)
        assert r1.status_code == r2.status_code == 302
        cb1 = h.op_login(s, r1.headers["Location"], envoy.base, "alice@example.com")
        cb2 = h.op_login(s, r2.headers["Location"], envoy.base, "alice@example.com")
        c1 = s.get(cb1, headers=HTML, allow_redirects=False, timeout=10)
        c2 = s.get(cb2, headers=HTML, allow_redirects=False, timeout=10)
        assert c1.status_code == 302 and c1.headers["Location"].endswith("/tab1"), c1.text[:200]
        assert c2.status_code == 302 and c2.headers["Location"].endswith("/tab2"), c2.text[:200]


def test_parallel_logins_threads(envoy):
    """Eight logins in parallel threads, alternating users."""
    users = ["alice@example.com", "bob@example.com"] * 4

    def one(i_user):
        i, user = i_user
        with requests.Session() as s:
            h.login_ok(s, envoy, "/p%d" % i, user=user)
            v = h.upstream_view(h.get_json(s, envoy, "/p%d" % i))
            return v["identity"]["x-forwarded-email"]

    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(one, enumerate(users)))
    assert got == users


@pytest.mark.slow
def test_two_envoys_share_sessions(envoy, log_dir, ports, op, upstream):
    """Two Envoys with the same config (same cookie_secret) accept each other's sessions."""
    peer = h.Envoy(log_dir, "envoy-peer", ports["peer"], op.port, upstream.port,
                   overrides={"set_xauthrequest": True})
    try:
        with requests.Session() as s:
            h.login_ok(s, envoy, "/")
            cookie = s.cookies.get("_oauth2_proxy")
            # As behind a load balancer: same Host, other replica.
            hdrs = dict(h.JSON_ACCEPT, Host="127.0.0.1:%d" % envoy.port,
                        Cookie="_oauth2_proxy=" + cookie)
            r = requests.get(peer.base + "/shared", headers=hdrs, allow_redirects=False, timeout=5)
            v = h.upstream_view(r)
            assert v["identity"]["x-forwarded-email"] == "alice@example.com"
        with requests.Session() as s:
            h.login_ok(s, peer, "/", user="bob@example.com")
            cookie = s.cookies.get("_oauth2_proxy")
            hdrs = dict(h.JSON_ACCEPT, Host="127.0.0.1:%d" % peer.port, Cookie="_oauth2_proxy=" + cookie)
            r = requests.get(envoy.base + "/shared", headers=hdrs, allow_redirects=False, timeout=5)
            assert h.upstream_view(r)["identity"]["x-forwarded-email"] == "bob@example.com"
    finally:
        peer.stop()


@pytest.mark.slow
def test_op_key_rotation_while_envoy_runs(envoy, op):
    with requests.Session() as old:
        h.login_ok(old, envoy, "/")
        before = op.kid()
        out = op.rotate()
        assert out["old_kid"] == before and out["kid"] != before
        # ID tokens are now signed with a key the filter has not seen: it must refetch the JWKS.
        # Several logins so that each worker thread (own VM, own JWKS cache) sees one.
        for i in range(4):
            with requests.Session() as s:
                res = h.login(s, envoy, "/rot%d" % i)
                assert res.callback.status_code == 302, (
                    i, res.callback.status_code, res.callback.headers.get("x-oidc-filter-reason"),
                    res.callback.text[:200], envoy.proc.tail(10))
                v = h.upstream_view(h.get_json(s, envoy, "/rot"))
                assert v["identity"]["x-forwarded-email"] == "alice@example.com"
        # A session made before the rotation stays valid (sessions are MAC'd, not re-verified).
        v = h.upstream_view(h.get_json(old, envoy, "/still"))
        assert v["identity"]["x-forwarded-email"] == "alice@example.com"


@pytest.mark.slow
def test_op_down_at_start_then_up(log_dir, wasm, upstream):
    """Envoy starts while the OP is down: login start is 503 + Retry-After, never a pass;
    once the OP is up, login works without restarting Envoy."""
    op_port = h.free_port()
    e_port = h.free_port()
    e = h.Envoy(log_dir, "envoy-opdown", e_port, op_port, upstream.port, wait_idp=False,
                concurrency=1, overrides={"idp_timeout": "1s"})
    op2 = None
    try:
        with requests.Session() as s:
            r = s.get(e.base + "/page", headers=HTML, allow_redirects=False, timeout=10)
            assert r.status_code == 503, (r.status_code, r.text[:200])
            assert r.headers.get("x-oidc-filter-reason") == "idp_not_ready"
            assert r.headers.get("retry-after"), r.headers
            r = h.get_json(s, e, "/api")
            assert r.status_code in (401, 503), r.status_code
            r = s.get(e.base + "/oauth2/callback?code=x&state=y", headers=HTML, allow_redirects=False, timeout=10)
            assert r.status_code in (403, 503), r.status_code
            op2 = h.OP(log_dir, [e_port], port=op_port, name="op-late")
            e.wait_idp_ready(timeout=60)
            h.login_ok(s, e, "/late")
            v = h.upstream_view(h.get_json(s, e, "/late"))
            assert v["identity"]["x-forwarded-email"] == "alice@example.com"
            # OP goes away again: existing sessions keep working, new logins wait.
            op2.stop()
            op2 = None
            v = h.upstream_view(h.get_json(s, e, "/late2"))
            assert v["identity"]["x-forwarded-email"] == "alice@example.com"
    finally:
        if op2:
            op2.stop()
        e.stop()


def test_expiring_session_starts_valid(expiring):
    """Half of the expiry test: the session of the short-lived Envoy (cookie_expire 1m) works.
    test_zz_expiry.py checks it after it has expired (the wait overlaps the other tests)."""
    e, s = expiring["envoy"], expiring["session"]
    line = [c for c in h.set_cookie_headers(expiring["login"].callback) if c.startswith("_oauth2_proxy=")][0]
    assert "Max-Age=60;" in line or line.endswith("Max-Age=60"), line
    v = h.upstream_view(h.get_json(s, e, "/x"))
    assert v["identity"]["x-forwarded-email"] == "alice@example.com"


def test_many_requests_with_session(envoy):
    """A burst of authenticated requests from a few threads all pass with the right identity."""
    with requests.Session() as s:
        h.login_ok(s, envoy, "/")
        cookie = s.cookies.get("_oauth2_proxy")
    errors = []

    def worker():
        with requests.Session() as c:
            for i in range(50):
                r = c.get(envoy.base + "/burst/%d" % i,
                          headers=dict(h.JSON_ACCEPT, Cookie="_oauth2_proxy=" + cookie), timeout=5)
                if r.status_code != 200 or r.json()["identity"].get("x-forwarded-email") != "alice@example.com":
                    errors.append((r.status_code, r.text[:100]))

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]
