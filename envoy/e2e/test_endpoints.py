"""oauth2-proxy's other endpoints in real Envoy: /oauth2/userinfo, /oauth2/ping, /oauth2/ready."""

import requests

import harness as h


def test_userinfo_ping_and_ready(envoy):
    r = requests.get(envoy.base + "/oauth2/ping", timeout=5)
    assert (r.status_code, r.text, r.headers["x-oidc-filter-reason"]) == (200, "OK\n", "ping")
    # The fixture waited for the provider: every worker VM is ready.
    for _ in range(4):
        r = requests.get(envoy.base + "/oauth2/ready", timeout=5)
        assert r.status_code == 200 and r.headers["x-oidc-filter-reason"] == "ready"
    with requests.Session() as s:
        assert h.get_json(s, envoy, "/oauth2/userinfo").status_code == 401
        h.login_ok(s, envoy, "/", user="bob@example.com")
        r = h.get_json(s, envoy, "/oauth2/userinfo")
        assert r.status_code == 200, r.text[:200]
        assert r.json() == {"user": "bob", "email": "bob@example.com",
                            "preferredUsername": "bob"}
