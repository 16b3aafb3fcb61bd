"""End-to-end: Envoy + oidc-filter wasm + oidc-provider + demo upstream, scripted login (no browser)."""

import glob
import json
import re
import os
import socket
import subprocess
import urllib.parse as up

import pytest
import requests

import harness as h
from harness import HTML


SESSION_SET = re.compile(r"(^|[ ,])_oauth2_proxy=2\.")


def cookie_line(lines, name):
    for line in lines:
        if line.split("=", 1)[0].strip() == name:
            return line
    return None


def attrs(line):
    """Set-Cookie attributes as a dict with lower-case names (flags map to True)."""
    out = {}
    for part in line.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        out[k.lower()] = v if _ else True
    return out


# ---------------------------------------------------------------- (a) login

def test_login_flow_sets_session_and_passes_identity(envoy, op, session):
    s = session
    # Unauthenticated browser navigation -> 302 to the OP's authorization endpoint.
    r = s.get(envoy.base + "/some/page?x=1", headers=HTML, allow_redirects=False, timeout=5)
    assert r.status_code == 302, (r.status_code, r.headers, r.text[:200])
    loc = r.headers["Location"]
    assert loc.startswith(op.issuer + "/auth?"), loc
    q = h.qs(loc)
    assert q["response_type"] == "code"
    assert q["client_id"] == h.CLIENT_ID
    assert q["redirect_uri"] == envoy.base + "/oauth2/callback"
    assert set(q["scope"].split()) >= {"openid", "email", "profile"}
    assert q["code_challenge_method"] == "S256"
    for k in ("state", "nonce", "code_challenge"):
        assert len(q[k]) >= 16, (k, q[k])
    assert "code_verifier" not in loc and h.CLIENT_SECRET not in loc
    # Per-flow CSRF cookie on Path=/ (so the next login start can bound their number, and a
    # `__Host-` name works); it never reaches the upstream.
    flow = [c for c in h.set_cookie_headers(r) if c.startswith("_oauth2_proxy_csrf_")]
    assert len(flow) == 1, h.set_cookie_headers(r)
    a = attrs(flow[0])
    assert flow[0].startswith("_oauth2_proxy_csrf_%s=" % q["state"][:16]), flow[0]
    assert a.get("path") == "/"
    assert a.get("httponly") is True
    assert a.get("samesite", "").lower() == "lax"
    assert "secure" not in a  # cookie_secure: false in the demo config

    # Log in at the OP; it redirects back to the filter's callback with code, state and iss.
    cb_url = h.op_login(s, loc, envoy.base, "alice@example.com")
    cbq = h.qs(cb_url)
    assert cbq["state"] == q["state"] and "code" in cbq
    cb = s.get(cb_url, headers=HTML, allow_redirects=False, timeout=10)
    assert cb.status_code == 302, (cb.status_code, cb.headers.get("x-oidc-filter-reason"), cb.text[:200])
    assert cb.headers["Location"] in ("/some/page?x=1", envoy.base + "/some/page?x=1"), cb.headers["Location"]
    lines = h.set_cookie_headers(cb)
    sess = cookie_line(lines, "_oauth2_proxy")
    assert sess is not None, lines
    # Contract: "{cookie_name}=2.<...>" (format 2 binds the MAC to issuer and client_id).
    assert re.match(r"_oauth2_proxy=2\.", sess), sess[:20]
    a = attrs(sess)
    assert a.get("path") == "/" and a.get("httponly") is True
    assert a.get("samesite", "").lower() == "lax"
    assert int(a["max-age"]) > 0
    # The flow cookie is cleared.
    cleared = [c for c in lines if c.startswith("_oauth2_proxy_csrf_")]
    assert cleared and all(attrs(c).get("max-age") == "0" for c in cleared), lines

    # The original page now reaches the upstream, with the identity headers and without our cookie.
    r = s.get(envoy.base + "/some/page?x=1&format=json", headers=HTML, allow_redirects=False, timeout=5)
    v = h.upstream_view(r)
    assert v["path"] == "/some/page" and v["query"] == "x=1&format=json"
    hd = v["hdict"]
    assert hd["x-forwarded-email"] == ["alice@example.com"]
    assert hd["x-forwarded-user"] == ["alice"]
    assert hd["x-forwarded-preferred-username"] == ["alice"]
    assert hd["x-auth-request-email"] == ["alice@example.com"]
    assert hd["x-auth-request-user"] == ["alice"]
    assert hd["x-auth-request-preferred-username"] == ["alice"]
    for c in hd.get("cookie", []):
        assert "_oauth2_proxy" not in c, c
    # Other cookies of the site still reach the upstream.
    s.cookies.set("app_pref", "dark", domain="127.0.0.1", path="/")
    v = h.upstream_view(h.get_json(s, envoy, "/x"))
    assert any("app_pref=dark" in c for c in v["hdict"].get("cookie", [])), v["hdict"].get("cookie")
    assert all("_oauth2_proxy" not in c for c in v["hdict"].get("cookie", []))


def test_html_page_shows_who_is_logged_in(envoy, session):
    h.login_ok(session, envoy, "/")
    r = session.get(envoy.base + "/", headers=HTML, allow_redirects=False, timeout=5)
    assert r.status_code == 200
    assert "Signed in as <strong id=email>alice@example.com</strong>" in r.text


def test_api_request_with_session_passes(envoy, session):
    h.login_ok(session, envoy, "/api")
    for extra in ({}, {"X-Requested-With": "XMLHttpRequest"}):
        v = h.upstream_view(h.get_json(session, envoy, "/api/items", headers=extra))
        assert v["identity"]["x-forwarded-email"] == "alice@example.com"
    r = session.post(envoy.base + "/api/items", json={"a": 1}, headers=h.JSON_ACCEPT, timeout=5)
    v = h.upstream_view(r)
    assert v["method"] == "POST" and v["body_length"] > 0


def test_second_user_gets_own_identity(envoy, session):
    h.login_ok(session, envoy, "/", user="bob@example.com")
    v = h.upstream_view(h.get_json(session, envoy, "/whoami"))
    assert v["identity"]["x-forwarded-email"] == "bob@example.com"
    assert v["identity"]["x-forwarded-user"] == "bob"


# ---------------------------------------------------------------- (b) forged identity headers

FORGED = {
    "X-Forwarded-Email": "evil@attacker.test",
    "X-Forwarded-User": "evil",
    "X-Forwarded-Preferred-Username": "evil",
    "X-Auth-Request-Email": "evil@attacker.test",
    "X-Auth-Request-User": "evil",
    "X-Auth-Request-Preferred-Username": "evil",
    "x_auth_request_email": "evil@attacker.test",
    "x_forwarded_email": "evil@attacker.test",
    "X-Forwarded_Email": "evil@attacker.test",
}


def test_forged_identity_headers_never_reach_upstream(envoy, session):
    h.login_ok(session, envoy, "/")
    v = h.upstream_view(h.get_json(session, envoy, "/forged", headers=FORGED))
    seen = v["headers"]
    assert not any("evil" in val for _, val in seen), [kv for kv in seen if "evil" in kv[1]]
    assert v["hdict"]["x-forwarded-email"] == ["alice@example.com"]
    assert v["hdict"]["x-auth-request-email"] == ["alice@example.com"]
    names = {k for k, _ in seen}
    assert not any("_" in n and ("email" in n or "user" in n) for n in names), names


def raw_get(envoy, path, headers):
    """One HTTP/1.1 GET with header bytes exactly as given; returns (status, body bytes)."""
    req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    req += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
    with socket.create_connection(("127.0.0.1", envoy.port), timeout=5) as s:
        s.sendall(req)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_header_values_that_are_not_utf8(envoy, session):
    """Header values may hold any byte but controls (obs-text, RFC 9110 5.5). One must not
    fail the request or the filter, and it reaches the upstream byte for byte."""
    h.login_ok(session, envoy, "/")
    ours = session.cookies.get("_oauth2_proxy").encode()
    accept = (b"Accept", b"application/json")
    status, _ = raw_get(envoy, "/latin1", [accept, (b"X-Note", b"caf\xe9")])
    assert status == 401
    status, body = raw_get(envoy, "/latin1", [
        accept,
        (b"X-Note", b"caf\xe9 \xff"),
        (b"Cookie", b"pref=d\xe9j\xe0; _oauth2_proxy=" + ours + b"; x=1"),
    ])
    assert status == 200, body[:200]
    seen = json.loads(body)
    hdict = dict(seen["headers"])  # the upstream reads header bytes as Latin-1
    assert hdict["x-note"] == "caf\xe9 \xff"
    assert hdict["cookie"] == "pref=d\xe9j\xe0; x=1"
    assert seen["identity"]["x-forwarded-email"] == "alice@example.com"
    # The filter still answers every request afterwards.
    v = h.upstream_view(h.get_json(session, envoy, "/after-latin1"))
    assert v["identity"]["x-forwarded-email"] == "alice@example.com"


def test_forged_headers_without_session_are_refused(envoy, session):
    r = h.get_json(session, envoy, "/forged", headers=FORGED)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    r = session.get(envoy.base + "/forged", headers=dict(HTML, **FORGED), allow_redirects=False, timeout=5)
    assert r.status_code == 302


# ---------------------------------------------------------------- (c) tampered cookies

def _tamper(value):
    i = len(value) // 2
    c = value[i]
    return value[:i] + ("A" if c != "A" else "B") + value[i + 1:]


def test_tampered_session_cookie_is_refused(envoy, session):
    h.login_ok(session, envoy, "/")
    good = session.cookies.get("_oauth2_proxy")
    assert good and re.match(r"2\.", good), good[:5]
    body = good.split(".", 1)[1]
    variants = {
        "flipped middle": _tamper(good),
        "flipped last": good[:-1] + ("A" if good[-1] != "A" else "B"),
        "truncated": good[: len(good) // 2],
        "no version": body,
        "v2 prefix": "v2." + body,
        "1 prefix (format 1)": "1." + body,
        "3 prefix": "3." + body,
        "empty": "",
        "garbage": "v1.not-a-real-session",
    }
    for what, val in variants.items():
        with requests.Session() as s2:
            s2.cookies.set("_oauth2_proxy", val, domain="127.0.0.1", path="/")
            r = s2.get(envoy.base + "/p?format=json", headers=HTML, allow_redirects=False, timeout=5)
            assert r.status_code in (302, 401), (what, r.status_code, r.text[:200])
            r = h.get_json(s2, envoy, "/p")
            assert r.status_code == 401, (what, r.status_code, r.text[:200])
            assert r.headers.get("x-oidc-filter-reason") == "unauthenticated", (what, r.headers)
    # The untampered cookie still works.
    with requests.Session() as s3:
        s3.cookies.set("_oauth2_proxy", good, domain="127.0.0.1", path="/")
        v = h.upstream_view(h.get_json(s3, envoy, "/p"))
        assert v["identity"]["x-forwarded-email"] == "alice@example.com"


def test_session_cookie_from_another_secret_is_refused(envoy, strict_envoy, session):
    """A cookie minted by an Envoy with another cookie_secret is not accepted (both ways)."""
    h.login_ok(session, envoy, "/")
    main_cookie = session.cookies.get("_oauth2_proxy")
    with requests.Session() as s2:
        h.login_ok(s2, strict_envoy, "/")
        strict_cookie = s2.cookies.get("_sso")
    assert main_cookie and strict_cookie
    r = requests.get(strict_envoy.base + "/p", headers=dict(h.JSON_ACCEPT, Cookie="_sso=" + main_cookie),
                     allow_redirects=False, timeout=5)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    r = requests.get(envoy.base + "/p", headers=dict(h.JSON_ACCEPT, Cookie="_oauth2_proxy=" + strict_cookie),
                     allow_redirects=False, timeout=5)
    assert r.status_code == 401, (r.status_code, r.text[:200])


def test_strict_envoy_settings(strict_envoy):
    """cookie_name, SameSite=Strict, pass_user_headers=false, set_xauthrequest=true."""
    with requests.Session() as s:
        res = h.login_ok(s, strict_envoy, "/strict")
        line = cookie_line(h.set_cookie_headers(res.callback), "_sso")
        assert line and attrs(line).get("samesite", "").lower() == "strict", h.set_cookie_headers(res.callback)
        flow = [c for c in h.set_cookie_headers(res.start) if c.startswith("_sso_csrf_")]
        assert flow, h.set_cookie_headers(res.start)
        v = h.upstream_view(h.get_json(s, strict_envoy, "/strict", headers=FORGED))
        assert v["hdict"]["x-auth-request-email"] == ["alice@example.com"]
        assert "x-forwarded-email" not in v["hdict"], v["hdict"].get("x-forwarded-email")
        assert not any("evil" in val for _, val in v["headers"])
        assert all("_sso" not in c for c in v["hdict"].get("cookie", []))


def test_email_domain_not_allowed(strict_envoy):
    with requests.Session() as s:
        res = h.login(s, strict_envoy, "/", user="eve@other.test")
        cb = res.callback
        assert (cb.status_code, cb.headers.get("x-oidc-filter-reason")) == (403, "email_not_allowed"), (
            cb.status_code, cb.text[:200])
        assert not any(c.startswith("_sso=") and "Max-Age=0" not in c for c in h.set_cookie_headers(cb))


# ---------------------------------------------------------------- (d) sign-out

def test_sign_out_clears_cookie(envoy, session):
    h.login_ok(session, envoy, "/")
    assert h.get_json(session, envoy, "/p").status_code == 200
    r = session.get(envoy.base + "/oauth2/sign_out", headers=HTML, allow_redirects=False, timeout=5)
    assert r.status_code == 302, (r.status_code, r.text[:200])
    assert r.headers["Location"] in ("/", envoy.base + "/"), r.headers["Location"]
    line = cookie_line(h.set_cookie_headers(r), "_oauth2_proxy")
    assert line is not None, h.set_cookie_headers(r)
    a = attrs(line)
    assert a.get("max-age") == "0" and a.get("path") == "/", line
    assert session.cookies.get("_oauth2_proxy") in (None, "")
    r = h.get_json(session, envoy, "/p")
    assert r.status_code == 401
    r = session.get(envoy.base + "/p", headers=HTML, allow_redirects=False, timeout=5)
    assert r.status_code == 302 and r.headers["Location"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize("rd,ok", [
    ("/bye?x=1", True),
    ("https://evil.example/", False),
    ("//evil.example/", False),
    ("/\\evil.example/", False),
    ("https:evil.example", False),
])
def test_sign_out_redirect_is_validated(envoy, session, rd, ok):
    r = session.get(envoy.base + "/oauth2/sign_out?rd=" + up.quote(rd, safe=""), headers=HTML,
                    allow_redirects=False, timeout=5)
    if ok:
        assert r.status_code == 302 and r.headers["Location"] in (rd, envoy.base + rd), r.headers
    else:
        loc = r.headers.get("Location", "")
        target = up.urljoin(envoy.base + "/", loc.replace("\\", "/"))
        assert up.urlsplit(target).hostname in (None, "127.0.0.1"), (rd, r.status_code, loc)


# ---------------------------------------------------------------- (e) API clients

@pytest.mark.parametrize("method,headers", [
    ("GET", {"Accept": "application/json"}),
    ("GET", {"Accept": "*/*", "X-Requested-With": "XMLHttpRequest"}),
    ("GET", {"Accept": "text/html", "Sec-Fetch-Mode": "cors"}),
    ("POST", {"Accept": "text/html"}),
    ("DELETE", {}),
])
def test_api_client_without_session_gets_401(envoy, session, method, headers):
    r = session.request(method, envoy.base + "/api/thing", headers=headers, allow_redirects=False, timeout=5)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    assert r.headers.get("x-oidc-filter-reason") == "unauthenticated"
    assert "unauthenticated" in r.text
    assert r.headers.get("www-authenticate")
    assert "set-cookie" not in r.headers


# ---------------------------------------------------------------- callback abuse, login policy

def test_callback_without_flow_cookie_is_refused(envoy, session):
    res = h.login(session, envoy, "/")
    # Replay the callback in a fresh cookie jar: the flow cookie is missing.
    with requests.Session() as s2:
        r = s2.get(res.callback_url, headers=HTML, allow_redirects=False, timeout=5)
    assert r.status_code == 403, (r.status_code, r.text[:200])
    assert r.headers.get("x-oidc-filter-reason") == "login_expired"
    assert not SESSION_SET.search(r.headers.get("set-cookie", ""))


def test_callback_with_wrong_state_is_refused(envoy, session):
    r = session.get(envoy.base + "/p", headers=HTML, allow_redirects=False, timeout=5)
    assert r.status_code == 302
    state = h.qs(r.headers["Location"])["state"]
    bad = state[:16] + ("A" if state[16] != "A" else "B") + state[17:]
    r = session.get(envoy.base + "/oauth2/callback?code=abc&state=" + up.quote(bad), headers=HTML,
                    allow_redirects=False, timeout=5)
    assert r.status_code == 403, (r.status_code, r.text[:200])
    assert r.headers.get("x-oidc-filter-reason") in ("state_mismatch", "login_expired")


def test_callback_replay_is_refused(envoy, session):
    res = h.login_ok(session, envoy, "/")
    r = session.get(res.callback_url, headers=HTML, allow_redirects=False, timeout=10)
    assert r.status_code in (403, 502), (r.status_code, r.text[:200])
    assert not SESSION_SET.search(r.headers.get("set-cookie", ""))


def test_callback_error_from_idp(envoy, session):
    r = session.get(envoy.base + "/p", headers=HTML, allow_redirects=False, timeout=5)
    state = h.qs(r.headers["Location"])["state"]
    r = session.get(envoy.base + "/oauth2/callback?error=access_denied&state=" + up.quote(state),
                    headers=HTML, allow_redirects=False, timeout=5)
    assert r.status_code == 403, (r.status_code, r.text[:200])
    assert r.headers.get("x-oidc-filter-reason") == "idp_error"


def test_unverified_email_is_refused(envoy, session):
    res = h.login(session, envoy, "/", user="mallory@example.com")
    assert res.callback.status_code == 403, (res.callback.status_code, res.callback.text[:200])
    assert res.callback.headers.get("x-oidc-filter-reason") == "email_unverified"
    assert not SESSION_SET.search(res.callback.headers.get("set-cookie", ""))


def test_start_endpoint_and_open_redirect(envoy, session):
    r = session.get(envoy.base + "/oauth2/start?rd=" + up.quote("https://evil.example/x"),
                    headers=HTML, allow_redirects=False, timeout=5)
    assert r.status_code in (302, 400, 403), r.status_code
    if r.status_code == 302:
        res_cb = h.op_login(session, r.headers["Location"], envoy.base, "alice@example.com")
        cb = session.get(res_cb, headers=HTML, allow_redirects=False, timeout=10)
        assert cb.status_code == 302
        target = up.urljoin(envoy.base + "/", cb.headers["Location"])
        assert up.urlsplit(target).hostname == "127.0.0.1", cb.headers["Location"]
    r = session.get(envoy.base + "/oauth2/start?rd=" + up.quote("/after?y=2"), headers=HTML,
                    allow_redirects=False, timeout=5)
    assert r.status_code == 302
    cb_url = h.op_login(session, r.headers["Location"], envoy.base, "alice@example.com")
    cb = session.get(cb_url, headers=HTML, allow_redirects=False, timeout=10)
    assert cb.status_code == 302
    assert cb.headers["Location"] in ("/after?y=2", envoy.base + "/after?y=2")


def test_local_replies_carry_reason(envoy, session):
    r = session.get(envoy.base + "/oauth2/callback", headers=HTML, allow_redirects=False, timeout=5)
    assert r.status_code in (400, 403)
    assert r.headers.get("x-oidc-filter-reason") in ("bad_request", "callback_invalid", "login_expired")
    assert r.headers["x-oidc-filter-reason"] in r.text


# ---------------------------------------------------------------- (f) config files validate

def _config_files():
    here = os.path.dirname(h.HERE)
    files = sorted(glob.glob(os.path.join(here, "*.yaml")) + glob.glob(os.path.join(here, "*.yaml.in")))
    return [f for f in files if not f.endswith(".in")]


@pytest.mark.parametrize("path", _config_files(), ids=os.path.basename)
def test_config_validates(wasm, path, tmp_path):
    env = dict(os.environ)
    env.setdefault("OIDC_CLIENT_SECRET", "validate-only-client-secret")
    env.setdefault("OIDC_COOKIE_SECRET", "Gaj95_hO74goecxxo-6ecp_VVsSmlri-iaInVltK3ec=")
    # The configs name dist/oidc_filter.wasm relative to the repository root.
    text = open(path, encoding="utf-8").read().replace("filename: dist/oidc_filter.wasm",
                                                       "filename: %s" % wasm)
    cfg = tmp_path / os.path.basename(path)
    cfg.write_text(text)
    r = subprocess.run([h.envoy_binary(), "--mode", "validate", "-c", str(cfg),
                        "--log-level", "warning"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "OK" in r.stdout + r.stderr


def test_config_files_exist():
    names = {os.path.basename(p) for p in _config_files()}
    assert {"envoy.yaml", "envoy.https-issuer.yaml"} <= names, names


def test_bad_plugin_config_is_refused(wasm, tmp_path):
    import render_config
    cfg = render_config.render(wasm_path=wasm, overrides={
        "client_id": "x", "client_secret": "y", "cookie_secret": "short", "no_such_option": 1})
    path = render_config.write(cfg, str(tmp_path / "bad.json"))
    r = subprocess.run([h.envoy_binary(), "--mode", "validate", "-c", path, "--log-level", "warning"],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    assert "oidc-filter: config: cookie_secret" in out, out[-2000:]
    assert "oidc-filter: config: no_such_option" in out, out[-2000:]


# ---------------------------------------------------------------- more request shapes

def test_head_and_navigate_without_session_redirect(envoy, session):
    r = session.head(envoy.base + "/page", headers=HTML, allow_redirects=False, timeout=5)
    assert r.status_code == 302
    r = session.get(envoy.base + "/page", headers={"Accept": "*/*", "Sec-Fetch-Mode": "navigate"},
                    allow_redirects=False, timeout=5)
    assert r.status_code == 302, r.status_code


def test_duplicated_and_odd_identity_headers_are_stripped(envoy, session):
    """Raw HTTP/1.1: repeated identity headers, odd case, underscores -> none reaches upstream."""
    import http.client
    h.login_ok(session, envoy, "/")
    cookie = session.cookies.get("_oauth2_proxy")
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=5)
    conn.putrequest("GET", "/dup", skip_accept_encoding=True)
    conn.putheader("Accept", "application/json")
    conn.putheader("Cookie", "a=1; _oauth2_proxy=%s; b=2" % cookie)
    for name in ("X-Forwarded-Email", "x-forwarded-email", "X-FORWARDED-EMAIL", "x_forwarded_email",
                 "X-Auth-Request-Email", "x-auth-request-user", "X-Forwarded-User",
                 "x-forwarded-preferred-username", "X_Auth_Request_Preferred_Username"):
        conn.putheader(name, "evil@attacker.test")
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200, (resp.status, body[:200])
    import json
    data = json.loads(body)
    evil = [kv for kv in data["headers"] if "evil" in kv[1]]
    assert not evil, evil
    ident = data["identity"]
    assert ident["x-forwarded-email"] == "alice@example.com"
    cookies = [v for k, v in data["headers"] if k == "cookie"]
    assert cookies and all("_oauth2_proxy" not in c for c in cookies), cookies
    assert any("a=1" in c and "b=2" in c for c in cookies), cookies


def test_session_cookie_among_many_cookies(envoy, session):
    h.login_ok(session, envoy, "/")
    cookie = session.cookies.get("_oauth2_proxy")
    many = "; ".join("c%d=%d" % (i, i) for i in range(30))
    r = requests.get(envoy.base + "/many", headers=dict(h.JSON_ACCEPT, Cookie=many + "; _oauth2_proxy=" + cookie),
                     allow_redirects=False, timeout=5)
    v = h.upstream_view(r)
    assert v["identity"]["x-forwarded-email"] == "alice@example.com"
    sent = "; ".join(v["hdict"]["cookie"])
    assert "c0=0" in sent and "c29=29" in sent and "_oauth2_proxy" not in sent


@pytest.mark.parametrize("path", ["//evil.example/foo", "/\\evil.example/foo", "/%2F%2Fevil.example/x",
                                  "/%5Cevil.example"])
def test_return_url_from_odd_path_stays_on_site(envoy, path):
    """The URL the user is sent back to after login never leaves the site."""
    with requests.Session() as s:
        res = h.login(s, envoy, path)
        cb = res.callback
        assert cb.status_code == 302, (cb.status_code, cb.text[:200])
        loc = cb.headers["Location"]
        assert loc.startswith("/") and not loc.startswith("//") and "\\" not in loc, loc
        # As a browser would resolve it (browsers treat "\" like "/").
        target = up.urljoin(envoy.base + "/", loc.replace("\\", "/"))
        assert up.urlsplit(target).netloc == "127.0.0.1:%d" % envoy.port, loc


def test_callback_with_other_issuer_is_refused(envoy, session):
    """RFC 9207 mix-up defence: the callback's iss must be the configured issuer."""
    r = session.get(envoy.base + "/p", headers=HTML, allow_redirects=False, timeout=5)
    cb = h.op_login(session, r.headers["Location"], envoy.base, "alice@example.com")
    q = h.qs(cb)
    assert q.get("iss")
    q["iss"] = "https://evil.example"
    r = session.get(envoy.base + "/oauth2/callback?" + up.urlencode(q), headers=HTML,
                    allow_redirects=False, timeout=10)
    assert r.status_code == 403, (r.status_code, r.text[:200])
    assert not SESSION_SET.search(r.headers.get("set-cookie", ""))


def test_replayed_callback_makes_no_second_token_call(envoy, op):
    """One code exchange per login cookie, across the Envoy's worker VMs (shared data): the
    same callback again, with the same login cookie (a double click, a reload before the
    answer, a stolen URL and cookie), gets an answer of its own, never a second token-endpoint
    call (that would end in login_complete or, the code being spent, token_request_failed)."""
    import requests
    with requests.Session() as s:
        res = h.login_ok(s, envoy, "/replay-me?x=1")
        flow = {k: v for k, v in res.start.cookies.items() if k.startswith("_oauth2_proxy_csrf_")}
        assert len(flow) == 1, flow
        session = s.cookies.get("_oauth2_proxy")
        assert session
    # With the session the first callback set: the replay goes where the login was going.
    with requests.Session() as s2:
        for k, v in dict(flow, _oauth2_proxy=session).items():
            s2.cookies.set(k, v, domain="127.0.0.1", path="/")
        again = s2.get(res.callback_url, headers=h.HTML, allow_redirects=False, timeout=10)
        assert again.status_code == 302, (again.status_code, again.text[:200])
        assert again.headers.get("x-oidc-filter-reason") == "login_already_complete"
        assert again.headers["Location"].endswith("/replay-me?x=1")
    # Without a session: a clear refusal.
    with requests.Session() as s3:
        for k, v in flow.items():
            s3.cookies.set(k, v, domain="127.0.0.1", path="/")
        r = s3.get(res.callback_url, headers=h.HTML, allow_redirects=False, timeout=10)
        assert r.status_code == 403, (r.status_code, r.text[:200])
        assert r.headers.get("x-oidc-filter-reason") == "callback_replayed"
