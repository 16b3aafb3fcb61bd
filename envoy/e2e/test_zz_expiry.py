"""Session expiry (runs last: the wait for the 1-minute session overlaps the other tests)."""

import time

import requests

import harness as h
from harness import HTML


def test_expired_session_needs_new_login(expiring):
    e, s, cookie = expiring["envoy"], expiring["session"], expiring["cookie"]
    wait = expiring["expires"] + 1.5 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    # Keep sending the old cookie even after a browser would have dropped it.
    r = requests.get(e.base + "/x", headers=dict(h.JSON_ACCEPT, Cookie="_oauth2_proxy=" + cookie),
                     allow_redirects=False, timeout=5)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    r = requests.get(e.base + "/x", headers=dict(HTML, Cookie="_oauth2_proxy=" + cookie),
                     allow_redirects=False, timeout=5)
    assert r.status_code == 302 and r.headers["Location"].startswith("http://127.0.0.1:")
    # A new login (the OP still has its own session, so no password form) works again.
    h.login_ok(s, e, "/again")
    v = h.upstream_view(h.get_json(s, e, "/again"))
    assert v["identity"]["x-forwarded-email"] == "alice@example.com"
