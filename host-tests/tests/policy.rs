//! Who may pass, through the real .wasm: groups and claim rules at the callback and on every
//! request, the headers they feed (and forged copies dropped), skip_auth_routes and the
//! bypasses they refuse, and bearer tokens (RFC 6750 refusals; the per-VM cache, whose saving
//! is measured in fuel: a deterministic count, not a timing).
mod common;

use common::*;
use host_tests::{Host, Request};
use serde_json::{json, Value};

/// A full login whose ID token has `extra` claims: the callback's reply.
fn login_claims(host: &mut Host, extra: Value) -> host_tests::Reply {
    let (_, out) = login_with_response(host, "/app", 200, |l, now| {
        let mut c = claims(now, &l.nonce);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        token_response(&id_token(key(0), &c))
    });
    out.expect_reply()
}

fn session_of(r: &host_tests::Reply) -> String {
    assert_eq!(r.status, 302, "{r:#?}");
    set_cookies(&r.headers)
        .into_iter()
        .find(|c| c.name == COOKIE)
        .expect("session cookie")
        .value
}

fn api(path: &str) -> Request {
    Request::get(path).header("accept", "application/json")
}

#[test]
fn groups_and_claims_decide_at_login_and_feed_headers() {
    let mut host = ready_host(json!({
        "allowed_groups": ["admins"], "pass_groups": true, "set_xauthrequest": true,
        "claim_headers": {"X-Roles": "realm_access.roles"},
        "claim_rules": [{"claim": "realm_access.roles", "contains": ["viewer"]}],
    }));
    let r = login_claims(
        &mut host,
        json!({"groups": ["admins", "staff"], "realm_access": {"roles": ["viewer"]}}),
    );
    let cookie = session_of(&r);
    let up = host
        .request(
            api("/x")
                .cookie(COOKIE, &cookie)
                .header("X-Forwarded-Groups", "root")
                .header_raw("x_roles", "root"),
        )
        .expect_continued();
    assert_eq!(up.get_all("x-forwarded-groups"), ["admins,staff"]);
    assert_eq!(up.get_all("x-auth-request-groups"), ["admins,staff"]);
    assert_eq!(up.get_all("x-roles"), ["viewer"]);
    assert!(up.get("x_roles").is_none(), "{up:#?}");
    // Not in admins: 403 at the callback, and no session.
    let r = login_claims(
        &mut host,
        json!({"groups": ["staff"], "realm_access": {"roles": ["viewer"]}}),
    );
    assert_eq!(
        (r.status, r.header("x-oidc-filter-reason")),
        (403, Some("group_not_allowed"))
    );
    assert!(set_cookies(&r.headers).iter().all(|c| c.name != COOKIE));
    // In admins but without the role: the claim rule refuses.
    let r = login_claims(
        &mut host,
        json!({"groups": ["admins"], "realm_access": {"roles": ["guest"]}}),
    );
    assert_eq!(r.header("x-oidc-filter-reason"), Some("claim_not_allowed"));
}

#[test]
fn skip_routes_pass_without_identity_and_refuse_bypasses() {
    let mut host = ready_host(json!({"skip_auth_routes": ["GET=^/health$", "^/public/"]}));
    let up = host
        .request(api("/health").header("x-forwarded-user", "admin"))
        .expect_continued();
    assert!(up.get("x-forwarded-user").is_none(), "{up:#?}");
    host.request(api("/public/a.css")).expect_continued();
    for (method, path) in [
        ("POST", "/health"),
        ("GET", "/healthz"),
        ("GET", "/public%2F..%2Fadmin"),
        ("GET", "/public/..;/admin"),
        ("GET", "/public/../admin"),
        ("GET", "/oauth2/auth"),
    ] {
        let mut req = api(path);
        if method == "POST" {
            req = Request::post(path).header("accept", "application/json");
        }
        let o = host.request(req);
        assert_eq!(o.status(), Some(401), "{method} {path}: {o:#?}");
    }
}

/// An RFC 9068 access token of the provider's issuer for the API audience.
fn access_token(now: u64, sub: &str, extra: Value) -> String {
    let mut c = json!({"iss": ISSUER, "aud": "urn:api", "sub": sub, "exp": now + 300,
        "iat": now, "client_id": "ci", "groups": ["robots"]});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    let k = key(0);
    sign(
        k,
        &json!({"alg": "RS256", "typ": "at+jwt", "kid": k.kid}),
        &c,
    )
}

fn bearer(token: &str) -> Request {
    api("/api/orders").header("authorization", &format!("Bearer {token}"))
}

#[test]
fn bearer_tokens_pass_are_refused_per_rfc6750_and_are_cached() {
    let mut host = ready_host(json!({
        "skip_jwt_bearer_tokens": true,
        "extra_jwt_issuers": [{"issuer": ISSUER, "audiences": ["urn:api"], "typ": "at+jwt",
                               "idp_cluster": IDP_CLUSTER}],
        "allowed_groups": ["robots"], "pass_groups": true,
    }));
    assert!(
        host.pending_callouts().is_empty(),
        "the provider's issuer is not fetched twice"
    );
    let now = host.now_secs();
    let t = access_token(now, "client-7", json!({}));
    let before = host.fuel_consumed();
    let up = host
        .request(bearer(&t).header("x-forwarded-user", "admin"))
        .expect_continued();
    let first = host.fuel_consumed() - before;
    assert_eq!(up.get_all("x-forwarded-user"), ["client-7"]);
    assert_eq!(up.get_all("x-forwarded-groups"), ["robots"]);
    assert_eq!(
        up.get("authorization"),
        Some(format!("Bearer {t}").as_str())
    );
    let before = host.fuel_consumed();
    let up = host.request(bearer(&t)).expect_continued();
    let cached = host.fuel_consumed() - before;
    assert_eq!(up.get_all("x-forwarded-user"), ["client-7"]);
    // The cache skips the RSA verification: a hit costs a fraction of first sight.
    assert!(
        cached * 5 < first,
        "cached {cached} fuel vs first sight {first}"
    );
    // Refusals: 401 invalid_token, never a redirect, for a browser too.
    let parts: Vec<&str> = t.split('.').collect();
    let other = access_token(now, "admin", json!({}));
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    let expired = access_token(now, "c", json!({"exp": now - 120}));
    let no_typ = {
        let k = key(0);
        let c = json!({"iss": ISSUER, "aud": "urn:api", "sub": "c", "exp": now + 300});
        sign(k, &json!({"alg": "RS256", "kid": k.kid}), &c)
    };
    for bad in [forged, expired, no_typ] {
        for req in [
            bearer(&bad),
            browser("/app").header("authorization", &format!("Bearer {bad}")),
        ] {
            let r = assert_reply(host.request(req), 401, "bearer_invalid");
            assert!(
                r.header("www-authenticate").is_some_and(
                    |w| w.starts_with("Bearer realm=\"oidc-filter\", error=\"invalid_token\"")
                ),
                "{r:#?}"
            );
            assert!(r.header("location").is_none());
        }
    }
    // A valid token the policy refuses: 403 insufficient_scope.
    let t = access_token(now, "c", json!({"groups": ["humans"]}));
    let r = assert_reply(host.request(bearer(&t)), 403, "group_not_allowed");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"oidc-filter\", error=\"insufficient_scope\"")
    );
}

#[test]
fn routes_deny_skip_and_narrow_through_the_wasm() {
    let mut host = ready_host(json!({"routes": [
        {"path": "/admin/", "allowed_groups": ["admins"]},
        {"path": "/blocked", "action": "deny"},
        {"path": "/metrics", "methods": ["GET"], "action": "skip"},
    ]}));
    let r = login_claims(&mut host, json!({"groups": ["staff"]}));
    let cookie = session_of(&r);
    host.request(api("/x").cookie(COOKIE, &cookie))
        .expect_continued();
    assert_reply(
        host.request(api("/admin/users").cookie(COOKIE, &cookie)),
        403,
        "group_not_allowed",
    );
    for p in ["/blocked", "//blocked/x", "/metrics/../blocked"] {
        assert_reply(
            host.request(api(p).cookie(COOKIE, &cookie)),
            403,
            "route_denied",
        );
    }
    assert_reply(host.request(api("/blocked;x")), 400, "path_ambiguous");
    let up = host
        .request(api("/metrics").header("x-forwarded-user", "root"))
        .expect_continued();
    assert!(up.get("x-forwarded-user").is_none());
    assert_eq!(
        host.request(Request::post("/metrics").header("accept", "application/json"))
            .status(),
        Some(401)
    );
}
