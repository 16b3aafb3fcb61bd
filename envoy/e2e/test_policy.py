"""Who may pass, against the real OP's users: groups (alice: admins, staff; bob: staff; eve:
none), a Keycloak-style nested roles claim (realm_access.roles), per-host policies, the
headers they feed, and /oauth2/auth's allowed_* query.

One Envoy, one provider, two hosts: 127.0.0.1 takes group admins only; localhost takes
anyone with the viewer role.
"""

import types

import pytest
import requests

import harness as h

POLICY = {
    "pass_groups": True,
    "set_xauthrequest": True,
    "claim_headers": {"X-Roles": "realm_access.roles"},
    "skip_auth_routes": ["GET=^/health$", "^/public/"],
    "hosts": [
        {"host": "127.0.0.1", "allowed_groups": ["admins"], "routes": [
            {"path": "/ops/", "allowed_groups": ["ops"]},
            {"path": "/blocked", "action": "deny"},
            {"path": "/open/", "methods": ["GET"], "action": "skip"},
        ]},
        {"host": "localhost",
         "claim_rules": [{"claim": "realm_access.roles", "contains": ["viewer"]}]},
    ],
}


@pytest.fixture(scope="module")
def policy_envoy(wasm, log_dir, ports, op, upstream):
    e = h.Envoy(log_dir, "envoy-policy", ports["policy"], op.port, upstream.port,
                overrides=POLICY, concurrency=1)
    yield e
    e.stop()


def on_localhost(e):
    return types.SimpleNamespace(base="http://localhost:%d" % e.port, port=e.port)


def test_groups_and_roles_reach_the_upstream(policy_envoy):
    with requests.Session() as s:
        h.login_ok(s, policy_envoy, "/", user="alice@example.com")
        r = h.get_json(s, policy_envoy, "/x", headers={
            "X-Forwarded-Groups": "root", "x_roles": "root", "X-Auth-Request-Groups": "root"})
        view = h.upstream_view(r)
        d = view["hdict"]
        assert d["x-forwarded-groups"] == ["admins,staff"], d
        assert d["x-auth-request-groups"] == ["admins,staff"], d
        assert d["x-roles"] == ["grafana-admin,viewer"], d
        assert "x_roles" not in d, d


def test_a_user_outside_the_groups_gets_403_not_a_loop(policy_envoy):
    with requests.Session() as s:
        res = h.login(s, policy_envoy, "/", user="bob@example.com")
        cb = res.callback
        assert (cb.status_code, cb.headers.get("x-oidc-filter-reason")) == (403, "group_not_allowed")
        assert "Sign out" in cb.text
        assert "_oauth2_proxy" not in s.cookies, "no session for a refused user"


def test_the_other_hosts_policy_is_its_own(policy_envoy):
    lh = on_localhost(policy_envoy)
    with requests.Session() as s:
        # bob is not in admins but has the viewer role: in on localhost.
        h.login_ok(s, lh, "/", user="bob@example.com")
        r = h.get_json(s, lh, "/x")
        assert h.upstream_view(r)["hdict"]["x-roles"] == ["viewer"]
        # His session is host-only; presented to 127.0.0.1 it is refused by that host's
        # policy, with the reason (he is signed in, so not a login redirect).
        cookie = s.cookies.get("_oauth2_proxy")
        r = requests.get(policy_envoy.base + "/x", headers=h.HTML, allow_redirects=False,
                         cookies={"_oauth2_proxy": cookie}, timeout=5)
        assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (403, "group_not_allowed")
    with requests.Session() as s:
        res = h.login(s, lh, "/", user="eve@other.test")
        assert (res.callback.status_code,
                res.callback.headers.get("x-oidc-filter-reason")) == (403, "claim_not_allowed")


def test_oauth2_auth_takes_the_allowed_query(policy_envoy):
    with requests.Session() as s:
        h.login_ok(s, policy_envoy, "/", user="alice@example.com")
        for q, want in (("", 202), ("?allowed_groups=admins", 202),
                        ("?allowed_groups=ops,nobody", 403),
                        ("?allowed_emails=alice@example.com", 202),
                        ("?allowed_email_domains=other.test", 403)):
            r = h.get_json(s, policy_envoy, "/oauth2/auth" + q)
            assert r.status_code == want, (q, r.status_code, r.headers.get("x-oidc-filter-reason"))
        r = h.get_json(s, policy_envoy, "/oauth2/auth")
        assert r.headers["x-auth-request-groups"] == "admins,staff"
    r = requests.get(policy_envoy.base + "/oauth2/auth?allowed_groups=admins",
                     headers=h.JSON_ACCEPT, timeout=5)
    assert r.status_code == 401


def test_skip_auth_routes_pass_without_a_session(policy_envoy):
    for host in (policy_envoy, on_localhost(policy_envoy)):
        r = requests.get(host.base + "/health", headers={
            "Accept": "application/json", "X-Forwarded-Email": "forged@evil.test"}, timeout=5)
        view = h.upstream_view(r)
        assert view["identity"] == {}, view["identity"]
        r = requests.get(host.base + "/public/app.css", headers=h.JSON_ACCEPT, timeout=5)
        assert h.upstream_view(r)["path"] == "/public/app.css"
        for method, path in (("POST", "/health"), ("GET", "/healthz"),
                             ("GET", "/public%2F..%2Fadmin"), ("GET", "/public/..;/admin")):
            r = requests.request(method, host.base + path, headers=h.JSON_ACCEPT,
                                 allow_redirects=False, timeout=5)
            # 127.0.0.1 has routes that refuse: an ambiguous path is refused before that.
            ambiguous = "%2F" in path or ";" in path
            want = ((400, "path_ambiguous") if ambiguous and host is policy_envoy
                    else (401, "unauthenticated"))
            assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == want, (method, path)


def test_routes_allow_with_rules_skip_and_deny(policy_envoy):
    e = policy_envoy
    # skip: no session, no identity (a forged one is dropped).
    r = requests.get(e.base + "/open/a", headers={**h.JSON_ACCEPT, "X-Forwarded-User": "root"},
                     allow_redirects=False, timeout=5)
    assert "x-forwarded-user" not in h.upstream_view(r)["hdict"]
    r = requests.post(e.base + "/open/a", headers=h.JSON_ACCEPT, allow_redirects=False, timeout=5)
    assert r.status_code == 401
    with requests.Session() as s:
        h.login_ok(s, e, "/", user="alice@example.com")
        assert h.get_json(s, e, "/x").status_code == 200
        # allow with rules: alice is an admin, not in ops.
        r = h.get_json(s, e, "/ops/dashboard")
        assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (403, "group_not_allowed")
        # deny, in every spelling Envoy passes on.
        for p in ["/blocked", "/blocked/x", "//blocked", "/open/../blocked", "/%62locked"]:
            r = h.get_json(s, e, p)
            assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == \
                (403, "route_denied"), (p, r.status_code, r.text)
        r = h.get_json(s, e, "/blocked;x")
        assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (400, "path_ambiguous")
