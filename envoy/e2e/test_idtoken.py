"""The filter refuses bad token responses and bad ID tokens from the provider.

The local OP is told (admin API /misbehave) to alter its token endpoint's answer; each login
must then end in the documented local reply, with no session cookie.
"""

import re

import pytest
import requests

import harness as h

SESSION_SET = re.compile(r"(^|[ ,])_oauth2_proxy=2\.")

CASES = [
    # mode, status, reason
    # Control: the test OP re-signs the unchanged ID token with its real key -> accepted. So the
    # other ID-token cases fail for the one claim/header they change, not for the re-signing.
    ("resign", 302, "login_complete"),
    ("wrong_aud", 502, "id_token_invalid"),
    ("wrong_iss", 502, "id_token_invalid"),
    ("wrong_nonce", 502, "id_token_invalid"),
    ("no_nonce", 502, "id_token_invalid"),
    ("expired", 502, "id_token_invalid"),
    ("alg_none", 502, "id_token_invalid"),
    ("bad_signature", 502, "id_token_invalid"),
    ("foreign_key", 502, "id_token_invalid"),
    ("unknown_kid", 502, "id_token_invalid"),
    ("hs256_client_secret", 502, "id_token_invalid"),
    ("unverified_email", 403, "email_unverified"),
    ("token_error", 502, "token_request_failed"),
    ("not_json", 502, "token_response_invalid"),
    ("no_id_token", 502, "token_response_invalid"),
]


@pytest.fixture
def misbehaving_op(op):
    yield op
    op.misbehave("")


@pytest.mark.parametrize("mode,status,reason", CASES, ids=[c[0] for c in CASES])
def test_bad_token_response_is_refused(envoy, misbehaving_op, mode, status, reason):
    misbehaving_op.misbehave(mode)
    with requests.Session() as s:
        res = h.login(s, envoy, "/guarded")
        cb = res.callback
        assert (cb.status_code, cb.headers.get("x-oidc-filter-reason")) == (status, reason), (
            cb.status_code, cb.headers.get("x-oidc-filter-reason"), cb.text[:200])
        if status == 302:  # the control case
            assert any(SESSION_SET.search(c) for c in h.set_cookie_headers(cb))
            assert h.upstream_view(h.get_json(s, envoy, "/guarded"))["identity"]["x-forwarded-user"] == "alice"
            return
        assert not any(SESSION_SET.search(c) for c in h.set_cookie_headers(cb)), h.set_cookie_headers(cb)
        assert h.CLIENT_SECRET not in cb.text and "eyJ" not in cb.text
        # Still no access afterwards.
        assert h.get_json(s, envoy, "/guarded").status_code == 401
    # Back to normal: the same Envoy logs in fine (nothing cached from the bad answer).
    misbehaving_op.misbehave("")
    with requests.Session() as s:
        h.login_ok(s, envoy, "/after")
