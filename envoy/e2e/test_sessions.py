"""Sessions that last and end well, in real Envoy against the real OP (refresh tokens on, and
rotated on every use): tokens upstream, refresh with one token call under 20 concurrent
requests, a revoked grant, and sign-out at the provider (RP-Initiated Logout).
"""

import re
import threading
import time
import urllib.parse as up

import pytest
import requests

import harness as h

REFRESH_SECS = 3
BACKOFF_SECS = 10  # refresh::BACKOFF_SECS
SESSIONS = {
    "pass_access_token": True,
    "pass_authorization_header": True,
    "end_session": True,
    "cookie_refresh": "%ds" % REFRESH_SECS,
}


@pytest.fixture(scope="module")
def sessions_envoy(wasm, log_dir, ports, op, upstream):
    # Two workers: the refresh is shared across worker VMs through shared data.
    e = h.Envoy(log_dir, "envoy-sessions", ports["sessions"], op.port, upstream.port,
                overrides=SESSIONS, concurrency=2)
    yield e
    e.stop()


def cookie_header(s):
    return "; ".join("%s=%s" % (c.name, c.value) for c in s.cookies
                     if c.name.startswith("_oauth2_proxy"))


def test_tokens_reach_the_upstream_sealed_in_the_cookie(sessions_envoy, op):
    with requests.Session() as s:
        h.login_ok(s, sessions_envoy, "/")
        cookie = s.cookies.get("_oauth2_proxy")
        assert cookie.startswith("3.1."), cookie[:10]
        r = h.get_json(s, sessions_envoy, "/x", headers={
            "X-Forwarded-Access-Token": "forged", "Authorization": "Bearer forged"})
        d = h.upstream_view(r)["hdict"]
        at = d["x-forwarded-access-token"]
        assert len(at) == 1 and at[0] != "forged" and len(at[0]) > 20, d
        assert at[0] not in cookie
        auth = d["authorization"]
        assert len(auth) == 1 and auth[0].startswith("Bearer "), d
        claims = h.jwt_claims(auth[0][len("Bearer "):])
        assert claims["sub"] == "alice" and claims["aud"] == h.CLIENT_ID, claims
        assert claims["iss"] == op.issuer
        # The access token is the OP's: its userinfo endpoint takes it.
        info = requests.get(op.issuer + "/me", headers={"Authorization": "Bearer " + at[0]},
                            timeout=5)
        assert info.status_code == 200 and info.json()["sub"] == "alice", info.text[:200]
        assert "_oauth2_proxy" not in " ".join(d.get("cookie", []))


def test_refresh_makes_one_token_call_under_20_concurrent_requests(sessions_envoy, op):
    with requests.Session() as s:
        h.login_ok(s, sessions_envoy, "/")
        first_at = h.upstream_view(h.get_json(s, sessions_envoy, "/x"))["hdict"][
            "x-forwarded-access-token"][0]
        cookie = cookie_header(s)
        before = op.grants("refresh_token")
        time.sleep(REFRESH_SECS + 0.5)
        results = []
        lock = threading.Lock()
        go = threading.Event()

        def one():
            go.wait()
            r = requests.get(sessions_envoy.base + "/x", allow_redirects=False, timeout=10,
                             headers={"Accept": "application/json", "Cookie": cookie})
            with lock:
                results.append(r)

        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200] * 20, [
            (r.status_code, r.headers.get("x-oidc-filter-reason")) for r in results]
        assert op.grants("refresh_token") - before == 1, op.stats()
        # The refreshing request, and those that came after it, carry the new session.
        renewed = [r for r in results if h.set_cookie_headers(r)]
        assert renewed, "no response re-issued the session"
        new = {c.split(";")[0].split("=", 1)[0]: c.split(";")[0].split("=", 1)[1]
               for c in h.set_cookie_headers(renewed[0])}
        assert new["_oauth2_proxy"] != s.cookies.get("_oauth2_proxy")
        seen = {h.upstream_view(r)["hdict"]["x-forwarded-access-token"][0] for r in results}
        assert len(seen - {first_at}) == 1, "one new access token"
        new_at = (seen - {first_at}).pop()
        # The new cookie: not due, the new token, no further call.
        r = requests.get(sessions_envoy.base + "/x", allow_redirects=False, timeout=10,
                         headers={"Accept": "application/json",
                                  "Cookie": "_oauth2_proxy=" + new["_oauth2_proxy"]})
        assert h.upstream_view(r)["hdict"]["x-forwarded-access-token"] == [new_at]
        assert not h.set_cookie_headers(r)
        # The previous cookie, moments later (a tab that missed the new one): the refreshed
        # session, without another token call (its refresh token is spent: using it would
        # make the OP revoke the grant).
        r = requests.get(sessions_envoy.base + "/x", allow_redirects=False, timeout=10,
                         headers={"Accept": "application/json", "Cookie": cookie})
        assert h.upstream_view(r)["hdict"]["x-forwarded-access-token"] == [new_at]
        assert op.grants("refresh_token") - before == 1, op.stats()
        assert op.stats()["grant_errors"].get("refresh_token", 0) == 0, op.stats()


def test_a_revoked_grant_forces_a_new_login(sessions_envoy, op):
    with requests.Session() as s:
        h.login_ok(s, sessions_envoy, "/", user="bob@example.com")
        h.upstream_view(h.get_json(s, sessions_envoy, "/x"))
        cookie = cookie_header(s)
        assert op.revoke("bob") >= 1
        # Until cookie_refresh the session is what it says (stateless), and for a grace period
        # after (cookie_refresh, at most 60 s) a refusal leaves it working: another replica
        # may have spent the refresh token.
        time.sleep(REFRESH_SECS + 0.5)
        r = h.get_json(s, sessions_envoy, "/x")
        assert r.status_code == 200 and not h.set_cookie_headers(r), r.status_code
        # Past the grace period, and the 10 s the filter waits before trying a failed
        # refresh again.
        time.sleep(max(REFRESH_SECS, BACKOFF_SECS) + 0.5)
        r = h.get_json(s, sessions_envoy, "/x")
        assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (401, "refresh_refused"), \
            (r.status_code, r.text[:200])
        cleared = [c for c in h.set_cookie_headers(r) if c.startswith("_oauth2_proxy=;")]
        assert cleared and "Max-Age=0" in cleared[0], h.set_cookie_headers(r)
        # A browser navigation with the same cookie goes to the provider, with the session's
        # cookies cleared: a login, not a loop, and no second token call.
        calls = op.stats()["grant_errors"].get("refresh_token", 0)
        r = requests.get(sessions_envoy.base + "/page", headers=dict(h.HTML, Cookie=cookie),
                         allow_redirects=False, timeout=10)
        assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (302, "login_redirect"), \
            (r.status_code, r.text[:200])
        assert r.headers["Location"].startswith(op.issuer + "/auth?"), r.headers["Location"]
        assert any(c.startswith("_oauth2_proxy=;") for c in h.set_cookie_headers(r))
        assert op.stats()["grant_errors"].get("refresh_token", 0) == calls
        # The new login works and is a fresh grant.
        with requests.Session() as s2:
            h.login_ok(s2, sessions_envoy, "/", user="bob@example.com")
            h.upstream_view(h.get_json(s2, sessions_envoy, "/x"))


def _logout_at_op(s, url):
    """Follow the filter's sign-out redirect through the OP's confirmation to where it leads."""
    r = s.get(url, headers=h.HTML, allow_redirects=False, timeout=5)
    assert r.status_code == 200 and 'id="op.logoutForm"' in r.text, (r.status_code, r.text[:300])
    action = re.search(r'<form[^>]*id="op.logoutForm"[^>]*action="([^"]+)"', r.text) or \
        re.search(r'<form[^>]*action="([^"]+)"[^>]*id="op.logoutForm"', r.text)
    data = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', r.text))
    data["logout"] = "yes"
    r = s.post(up.urljoin(url, action.group(1)), data=data, headers=h.HTML,
               allow_redirects=False, timeout=5)
    assert r.status_code in (302, 303), (r.status_code, r.text[:300])
    return up.urljoin(url, r.headers["Location"])


def _next_login_page(s, envoy):
    """Where the next login lands at the OP: "login" (form), or "callback" (straight back)."""
    r = s.get(envoy.base + "/oauth2/start?rd=%2Fagain", headers=h.HTML, allow_redirects=False,
              timeout=5)
    assert r.status_code == 302, (r.status_code, r.text[:200])
    url = r.headers["Location"]
    for _ in range(10):
        if url.startswith(envoy.base):
            return "callback"
        r = s.get(url, headers=h.HTML, allow_redirects=False, timeout=5)
        if r.status_code in (302, 303):
            url = up.urljoin(url, r.headers["Location"])
            continue
        assert r.status_code == 200, (r.status_code, r.text[:300])
        if 'name="prompt" value="login"' in r.text:
            return "login"
        if 'name="prompt" value="consent"' in r.text:
            return "consent"
        raise AssertionError(r.text[:300])
    raise AssertionError("too many redirects")


def test_sign_out_ends_the_provider_session(sessions_envoy, op):
    with requests.Session() as s:
        h.login_ok(s, sessions_envoy, "/")
        # Control: with the provider's session alive, a new login needs no password.
        assert _next_login_page(s, sessions_envoy) == "callback"
        ended = op.stats()["end_session"]
        # No rd: the host's / is where the provider sends the user back (registered there as
        # a post_logout_redirect_uri; an rd must be registered too).
        r = s.get(sessions_envoy.base + "/oauth2/sign_out", headers=h.HTML,
                  allow_redirects=False, timeout=5)
        assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (302, "signed_out")
        loc = r.headers["Location"]
        assert loc.startswith(op.issuer + "/session/end?"), loc
        q = h.qs(loc)
        assert q["client_id"] == h.CLIENT_ID
        assert q["post_logout_redirect_uri"] == sessions_envoy.base + "/"
        assert h.jwt_claims(q["id_token_hint"])["sub"] == "alice"
        assert any(c.startswith("_oauth2_proxy=;") for c in h.set_cookie_headers(r))
        back = _logout_at_op(s, loc)
        assert back == sessions_envoy.base + "/", back
        assert op.stats()["end_session"] == ended + 1
        # The provider's session is over: the next login shows its login form.
        assert _next_login_page(s, sessions_envoy) == "login"
