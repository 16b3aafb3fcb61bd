"""Bearer tokens for API clients, in real Envoy against the real OP: access tokens from the
OP's client-credentials grant (RS256, typ at+jwt, aud urn:oidc-filter:api; api-client has
groups ["robots"], api-client-2 none) pass on the token alone; bad ones get RFC 6750's 401,
never a redirect; the host's policy applies to them; a token signed by a key the filter has
not fetched yet is let in once the keys are refetched.

One Envoy, one provider: 127.0.0.1 takes group robots only; localhost takes any client.
"""

import base64
import json
import time

import pytest
import requests

import harness as h

API_AUDIENCE = "urn:oidc-filter:api"


@pytest.fixture(scope="module")
def bearer_envoy(wasm, log_dir, ports, op, upstream):
    issuer = "http://127.0.0.1:%d" % op.port
    e = h.Envoy(log_dir, "envoy-bearer", ports["bearer"], op.port, upstream.port, overrides={
        "skip_jwt_bearer_tokens": True,
        "extra_jwt_issuers": ["%s=%s" % (issuer, API_AUDIENCE)],
        "pass_groups": True,
        "set_xauthrequest": True,
        "hosts": [
            {"host": "127.0.0.1", "allowed_groups": ["robots"]},
            {"host": "localhost"},
        ],
    }, concurrency=1)
    yield e
    e.stop()


def client_token(op, client="api-client"):
    """An access token from the OP's token endpoint (client-credentials grant)."""
    r = requests.post("http://127.0.0.1:%d/token" % op.port,
                      auth=(client, "%s-secret" % client),
                      data={"grant_type": "client_credentials"}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def call(e, token, host=None, path="/api/orders", **headers):
    hdrs = {"Accept": "application/json", "Authorization": "Bearer %s" % token}
    hdrs.update(headers)
    if host:
        hdrs["Host"] = host
    return requests.get(e.base + path, headers=hdrs, allow_redirects=False, timeout=5)


def test_op_issues_rfc9068_tokens(op):
    t = client_token(op)
    part = t.split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    claims = h.jwt_claims(t)
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256"
    assert claims["aud"] == API_AUDIENCE and claims["sub"] == "api-client"


def test_a_client_credentials_token_passes_with_its_identity(bearer_envoy, op):
    t = client_token(op)
    r = call(bearer_envoy, t, **{"X-Forwarded-User": "admin", "X-Auth-Request-Groups": "root"})
    d = h.upstream_view(r)["hdict"]
    assert d["x-forwarded-user"] == ["api-client"], d
    assert d["x-auth-request-user"] == ["api-client"], d
    assert d["x-forwarded-groups"] == ["robots"], d
    assert d["x-auth-request-groups"] == ["robots"], d
    assert d["authorization"] == ["Bearer %s" % t], "the token goes on to the API"
    # Again (from the VM's cache): the same answer.
    for _ in range(5):
        assert h.upstream_view(call(bearer_envoy, t))["hdict"]["x-forwarded-user"] == ["api-client"]


def test_the_hosts_policy_applies_to_tokens(bearer_envoy, op):
    t = client_token(op, "api-client-2")
    r = call(bearer_envoy, t)
    assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (403, "group_not_allowed")
    assert r.headers["WWW-Authenticate"] == \
        'Bearer realm="oidc-filter", error="insufficient_scope"'
    # localhost has no group rule.
    r = call(bearer_envoy, t, host="localhost:%d" % bearer_envoy.port)
    assert h.upstream_view(r)["hdict"]["x-forwarded-user"] == ["api-client-2"]


def test_bad_tokens_get_rfc6750_401_never_a_redirect(bearer_envoy, op):
    t = client_token(op)
    head, payload, sig = t.split(".")
    claims = h.jwt_claims(t)
    claims["sub"] = "admin"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for bad in ["%s.%s.%s" % (head, forged_payload, sig),   # another payload, same signature
                "%s.%s.%s" % (head, payload, sig[:-4] + "AAAA"),
                "%s.%s." % (head, payload)]:
        for accept in ("application/json", "text/html"):
            r = call(bearer_envoy, bad, Accept=accept)
            assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == \
                (401, "bearer_invalid"), (bad[:40], r.status_code, r.text)
            assert r.headers["WWW-Authenticate"].startswith(
                'Bearer realm="oidc-filter", error="invalid_token"'), r.headers
            assert "Location" not in r.headers
    # Without credentials, the 401 offers both ways in.
    r = requests.get(bearer_envoy.base + "/api", headers=h.JSON_ACCEPT, timeout=5,
                     allow_redirects=False)
    assert r.status_code == 401
    assert 'Bearer realm="oidc-filter"' in r.headers.get("WWW-Authenticate", ""), r.headers


def test_browser_sessions_still_work_beside_tokens(bearer_envoy):
    lh = type("E", (), {"base": "http://localhost:%d" % bearer_envoy.port,
                        "port": bearer_envoy.port})
    with requests.Session() as s:
        h.login_ok(s, lh, "/", user="bob@example.com")
        r = h.get_json(s, lh, "/x")
        assert h.upstream_view(r)["hdict"]["x-forwarded-user"] == ["bob"]


def test_zz_a_token_of_a_new_signing_key_passes_after_a_refetch(bearer_envoy, op):
    """Runs last in this module: the OP rotates its key (the old one leaves its JWKS)."""
    old = client_token(op)
    assert call(bearer_envoy, old).status_code == 200
    op.rotate()
    new = client_token(op)
    assert h.jwt_claims(new)["sub"] == "api-client"
    r = call(bearer_envoy, new)
    # Unknown kid: the keys are refetched; the client is told to retry at once.
    assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (503, "bearer_key_unknown")
    assert r.headers.get("Retry-After") == "1"
    deadline = time.time() + 10
    while r.status_code == 503 and time.time() < deadline:
        time.sleep(1)
        r = call(bearer_envoy, new)
    assert h.upstream_view(r)["hdict"]["x-forwarded-user"] == ["api-client"]
    # The old token is still valid until its exp (verified and cached before the rotation).
    assert call(bearer_envoy, old).status_code == 200


@pytest.mark.parametrize("client,alg", [("api-client-ps", "PS256"), ("api-client-es", "ES256")])
def test_tokens_signed_ps256_and_es256_pass_and_tampered_ones_do_not(bearer_envoy, op, client, alg):
    t = client_token(op, client)
    part = t.split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert header["alg"] == alg, header
    r = call(bearer_envoy, t, host="localhost")
    assert r.status_code == 200, (r.status_code, r.text)
    assert h.upstream_view(r)["hdict"]["x-forwarded-user"] == [client]
    # The same claims under a changed signature: refused.
    head, body, sig = t.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    forged = "%s.%s.%s" % (head, body, base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="))
    r = call(bearer_envoy, forged, host="localhost")
    assert r.status_code == 401, (r.status_code, r.text)
    assert "invalid_token" in r.headers.get("www-authenticate", ""), r.headers
