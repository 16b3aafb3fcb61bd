"""Several providers and hosts in one Envoy: two real OPs (two oidc-provider instances), each
host logs in at its own provider, sessions do not cross, an `"auth": false` host passes, and a
host no entry names is refused.

One Envoy serves a.test (provider "a", OP A), b.test (provider "b", OP B, example.com
addresses only) and open.test (no auth). Requests go to 127.0.0.1 with the Host header of the
site; each login's OP interaction has a jar of its own, and the filter's cookies are carried
by hand, per host, as a browser would keep them (host-only cookies).
"""

import urllib.parse as up

import pytest
import requests

import harness as h


@pytest.fixture(scope="module")
def sites(log_dir, wasm, upstream):
    port = h.free_port()
    op_a = h.OP(log_dir, [port], name="op-a",
                redirect_uris=["http://a.test:%d/oauth2/callback" % port])
    op_b = h.OP(log_dir, [port], name="op-b",
                redirect_uris=["http://b.test:%d/oauth2/callback" % port])
    provider = {"client_id": h.CLIENT_ID, "client_secret": h.CLIENT_SECRET}
    overrides = {
        # No flat provider: both are named.
        "oidc_issuer_url": None, "client_id": None, "client_secret": None,
        "idp_cluster": None, "scope": None,
        "set_xauthrequest": True,
        "providers": {
            "a": dict(provider, oidc_issuer_url=op_a.issuer, idp_cluster="idp"),
            "b": dict(provider, oidc_issuer_url=op_b.issuer, idp_cluster="idp-b"),
        },
        "hosts": [
            {"host": "a.test", "provider": "a"},
            {"host": ["b.test", "*.b.test"], "provider": "b", "email_domains": ["example.com"]},
            {"host": "open.test", "auth": False},
        ],
        "unmatched_hosts": "deny",
    }
    envoy = h.Envoy(log_dir, "envoy-hosts", port, op_a.port, upstream.port,
                    overrides=overrides, wait_idp=False, extra_idps={"idp-b": op_b.port})

    def ready():
        # Each worker VM loads each provider on its own: several probes per host.
        for host in ("a.test", "b.test"):
            for _ in range(4):
                if get(envoy, host, "/__readiness_probe").status_code != 302:
                    return False
        return True
    h.wait_until(ready, 20, "both providers loaded", 0.2)
    yield {"envoy": envoy, "a": op_a, "b": op_b}
    envoy.stop()
    op_a.stop()
    op_b.stop()


def get(envoy, host, path, cookies=None, headers=None, accept=h.HTML):
    hdrs = dict(accept)
    hdrs["Host"] = "%s:%d" % (host, envoy.port)
    if cookies:
        hdrs["Cookie"] = "; ".join("%s=%s" % kv for kv in cookies.items())
    hdrs.update(headers or {})
    return requests.get(envoy.base + path, headers=hdrs, allow_redirects=False, timeout=10)


def set_cookies(resp):
    """name -> value of the cookies a reply sets (cleared ones left out)."""
    out = {}
    for line in h.set_cookie_headers(resp):
        name, _, value = line.split(";", 1)[0].partition("=")
        if value:
            out[name.strip()] = value.strip()
    return out


def login_at(envoy, host, user="alice@example.com", path="/hello"):
    """A whole login at `host`: (the authorization URL, the callback's reply)."""
    r = get(envoy, host, path)
    assert r.status_code == 302, (r.status_code, r.headers.get("x-oidc-filter-reason"))
    auth_url = r.headers["Location"]
    with requests.Session() as at_op:
        cb_url = h.op_login(at_op, auth_url, "http://%s:%d" % (host, envoy.port), user)
    u = up.urlsplit(cb_url)
    cb = get(envoy, host, u.path + "?" + u.query, cookies=set_cookies(r))
    return auth_url, cb


def session_at(envoy, host, user="alice@example.com"):
    _, cb = login_at(envoy, host, user)
    assert cb.status_code == 302, (cb.status_code, cb.headers.get("x-oidc-filter-reason"))
    assert cb.headers["Location"] == "/hello"
    cookies = set_cookies(cb)
    assert list(cookies) == ["_oauth2_proxy"], cookies
    return cookies


def test_each_host_logs_in_at_its_own_provider(sites):
    envoy = sites["envoy"]
    for host, op in (("a.test", sites["a"]), ("b.test", sites["b"])):
        auth_url, cb = login_at(envoy, host)
        assert auth_url.startswith(op.issuer + "/"), (host, auth_url)
        assert h.qs(auth_url)["redirect_uri"] == "http://%s:%d/oauth2/callback" % (host, envoy.port)
        assert cb.status_code == 302, (host, cb.status_code, cb.headers.get("x-oidc-filter-reason"))
        view = h.upstream_view(get(envoy, host, "/hello", cookies=set_cookies(cb),
                                   accept=h.JSON_ACCEPT))
        assert view["identity"]["x-forwarded-email"] == "alice@example.com", view
        assert view["identity"]["x-auth-request-email"] == "alice@example.com", view
    # A subdomain pattern reaches its provider too.
    r = get(envoy, "x.b.test", "/")
    assert r.status_code == 302 and r.headers["Location"].startswith(sites["b"].issuer + "/")


def test_sessions_do_not_cross_providers(sites):
    envoy = sites["envoy"]
    a = session_at(envoy, "a.test")
    b = session_at(envoy, "b.test")
    # Same cookie name, same cookie_secret: only the MAC's binding to the provider's issuer
    # and client tells them apart.
    assert a.keys() == b.keys() and a != b
    assert get(envoy, "a.test", "/x", cookies=a, accept=h.JSON_ACCEPT).status_code == 200
    assert get(envoy, "b.test", "/x", cookies=b, accept=h.JSON_ACCEPT).status_code == 200
    for host, foreign, op in (("b.test", a, sites["b"]), ("a.test", b, sites["a"])):
        r = get(envoy, host, "/x", cookies=foreign, accept=h.JSON_ACCEPT)
        assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (401, "unauthenticated")
        r = get(envoy, host, "/x", cookies=foreign)
        assert r.status_code == 302 and r.headers["Location"].startswith(op.issuer + "/"), host


def test_the_hosts_policy_applies(sites):
    envoy = sites["envoy"]
    # b.test takes example.com addresses only; a.test takes any (the top level's "*").
    _, cb = login_at(envoy, "b.test", user="eve@other.test")
    assert (cb.status_code, cb.headers.get("x-oidc-filter-reason")) == (403, "email_not_allowed")
    _, cb = login_at(envoy, "a.test", user="eve@other.test")
    assert cb.status_code == 302, cb.headers.get("x-oidc-filter-reason")


def test_an_unprotected_host_passes_untouched(sites):
    envoy = sites["envoy"]
    a = session_at(envoy, "a.test")
    r = get(envoy, "open.test", "/status", cookies=a, accept=h.JSON_ACCEPT,
            headers={"X-Forwarded-Email": "forged@evil.test", "X-Auth-Request-User": "forged"})
    view = h.upstream_view(r)
    assert view["path"] == "/status"
    # No identity there, none a client forged, and not our session cookie.
    assert view["identity"] == {}, view["identity"]
    assert "cookie" not in view["hdict"], view["hdict"]
    # The filter's endpoints are the upstream's paths on that host.
    assert h.upstream_view(get(envoy, "open.test", "/oauth2/start",
                                              accept=h.JSON_ACCEPT))["path"] == "/oauth2/start"


def test_a_host_no_entry_names_is_refused(sites):
    envoy = sites["envoy"]
    for path in ("/", "/oauth2/start", "/oauth2/callback?code=x&state=y"):
        r = get(envoy, "elsewhere.test", path)
        assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (403, "host_not_configured")


def test_sign_out_is_per_host(sites):
    envoy = sites["envoy"]
    a = session_at(envoy, "a.test")
    b = session_at(envoy, "b.test")
    r = get(envoy, "b.test", "/oauth2/sign_out", cookies=b)
    assert r.status_code == 302
    cleared = [line for line in h.set_cookie_headers(r) if line.startswith("_oauth2_proxy=;")]
    assert cleared, h.set_cookie_headers(r)
    # a.test's session is another cookie (host-only): still good.
    assert get(envoy, "a.test", "/x", cookies=a, accept=h.JSON_ACCEPT).status_code == 200
