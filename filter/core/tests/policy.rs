//! Who may pass: groups, addresses and claim rules at login and on every request, the
//! headers they feed, `/oauth2/auth`'s `allowed_*` query, and what a session carries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use oidc_filter_core::flow::{Decision, LocalReply, TokenOutcome};
use oidc_filter_core::http::Request;
use serde_json::{json, Value};

/// A login whose ID token has `extra` claims: the callback's reply.
fn login_with(w: &mut World, extra: Value) -> LocalReply {
    let (auth, flow) = start_login(w, "/app");
    let nonce = param(&query(&auth), "nonce");
    let Decision::ExchangeCode { pending, .. } = w.request(&callback_request(&auth, &flow)) else {
        panic!("no code exchange");
    };
    let mut c = claims(&nonce);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    let k = rsa_key(0);
    let token = sign_rs256(k, &json!({"alg": "RS256", "kid": k.kid}), &c);
    match w.token_response(&pending, Some(200), &token_body(&token), true) {
        TokenOutcome::Reply(r) => r,
        other => panic!("{other:?}"),
    }
}

fn session_of(r: &LocalReply) -> (String, String) {
    assert_eq!(
        (r.status, r.reason.code()),
        (302, "login_complete"),
        "{r:?}"
    );
    cookie_pair(set_cookies(r)[0])
}

fn api(path: &str, s: &(String, String)) -> Request<'static> {
    with_header(
        with_cookies(get(path), std::slice::from_ref(s)),
        "accept",
        "application/json",
    )
}

#[test]
fn allowed_groups_at_login_and_on_every_request() {
    let mut w = World::new(config_with(json!({"allowed_groups": ["admins", "ops"]})));
    let r = login_with(&mut w, json!({"groups": ["staff"]}));
    assert_eq!((r.status, r.reason.code()), (403, "group_not_allowed"));
    assert!(
        set_cookies(&r)
            .iter()
            .all(|c| !c.starts_with("_oauth2_proxy=")),
        "no session for a refused user"
    );
    let s = session_of(&login_with(&mut w, json!({"groups": ["staff", "admins"]})));
    let h = upstream(&mut w, &api("/x", &s));
    assert_eq!(values(&h, "x-forwarded-email"), ["alice@example.com"]);
    // Without pass_groups no groups header, and the session keeps only the groups a rule
    // names: "staff" is not in it.
    assert!(values(&h, "x-forwarded-groups").is_empty());
    // The policy narrowed since: a 403 with its reason, for a browser too (no login loop).
    w.config = config_with(json!({"allowed_groups": ["ops"]}));
    for req in [
        api("/x", &s),
        with_cookies(get("/x"), std::slice::from_ref(&s)),
    ] {
        let r = reply(w.request(&req));
        assert_eq!((r.status, r.reason.code()), (403, "group_not_allowed"));
        assert!(r.body.contains("Sign out"), "{}", r.body);
    }
    // "staff" was never carried: allowing it later does not let this session in.
    w.config = config_with(json!({"allowed_groups": ["staff"]}));
    let r = reply(w.request(&api("/x", &s)));
    assert_eq!(r.reason.code(), "group_not_allowed");
}

#[test]
fn pass_groups_carries_and_sends_every_group() {
    let mut w = World::new(config_with(json!({"pass_groups": true})));
    let s = session_of(&login_with(&mut w, json!({"groups": ["staff", "admins"]})));
    let forged = with_header(api("/x", &s), "X-Forwarded-Groups", "root");
    let forged = with_header(forged, "x_auth_request_groups", "root");
    let h = upstream(&mut w, &forged);
    assert_eq!(values(&h, "x-forwarded-groups"), ["staff,admins"]);
    // set_xauthrequest is on in the fixture config.
    assert_eq!(values(&h, "x-auth-request-groups"), ["staff,admins"]);
    assert!(values(&h, "x_auth_request_groups").is_empty());
    // No groups at all: no header (and no forged one).
    let s = session_of(&login_with(&mut w, json!({})));
    let h = upstream(
        &mut w,
        &with_header(api("/x", &s), "x-forwarded-groups", "root"),
    );
    assert!(values(&h, "x-forwarded-groups").is_empty(), "{h:?}");
}

#[test]
fn a_nested_roles_claim_and_an_equals_rule() {
    let mut w = World::new(config_with(json!({
        "claim_rules": [
            {"claim": "realm_access.roles", "contains": ["grafana-admin"]},
            {"claim": "tenant", "equals": ["acme"]},
        ],
    })));
    let ok = json!({"realm_access": {"roles": ["viewer", "grafana-admin"]}, "tenant": "acme"});
    let s = session_of(&login_with(&mut w, ok));
    upstream(&mut w, &api("/x", &s));
    for bad in [
        json!({"realm_access": {"roles": ["viewer"]}, "tenant": "acme"}),
        json!({"realm_access": {"roles": ["grafana-admin"]}, "tenant": "globex"}),
        json!({"realm_access": {"roles": ["grafana-admin"]}, "tenant": ["acme", "globex"]}),
        json!({"tenant": "acme"}),
    ] {
        let r = login_with(&mut w, bad.clone());
        assert_eq!(
            (r.status, r.reason.code()),
            (403, "claim_not_allowed"),
            "{bad}"
        );
    }
}

#[test]
fn claim_headers_are_set_and_a_clients_copies_dropped() {
    let mut w = World::new(config_with(
        json!({"claim_headers": {"X-Tenant": "tenant"}}),
    ));
    let s = session_of(&login_with(&mut w, json!({"tenant": "acme"})));
    let req = with_header(api("/x", &s), "x_tenant", "evil");
    let req = with_header(req, "X-TENANT", "evil");
    let h = upstream(&mut w, &req);
    assert_eq!(values(&h, "x-tenant"), ["acme"]);
    assert!(values(&h, "x_tenant").is_empty() && values(&h, "X-TENANT").is_empty());
    // Without the claim, no header, and still no forged one.
    let s = session_of(&login_with(&mut w, json!({})));
    let h = upstream(&mut w, &with_header(api("/x", &s), "x-tenant", "evil"));
    assert!(values(&h, "x-tenant").is_empty(), "{h:?}");
    // /oauth2/auth replies carry it too (for nginx's auth_request_set).
    let t = session_of(&login_with(&mut w, json!({"tenant": "t"})));
    let r = reply(w.request(&api("/oauth2/auth", &t)));
    assert_eq!(header(&r, "x-tenant"), Some("t"));
}

#[test]
fn allowed_emails_pass_besides_the_domains() {
    let mut w = World::new(config_with(json!({
        "email_domains": ["corp.example"], "allowed_emails": ["alice@example.com"],
    })));
    session_of(&login_with(&mut w, json!({})));
    let r = login_with(&mut w, json!({"email": "bob@example.com"}));
    assert_eq!(r.reason.code(), "email_not_allowed");
    session_of(&login_with(&mut w, json!({"email": "bob@corp.example"})));
}

#[test]
fn oauth2_auth_takes_oauth2_proxys_query() {
    let mut w = World::new(config_with(json!({"pass_groups": true})));
    let s = session_of(&login_with(&mut w, json!({"groups": ["staff"]})));
    let auth = |w: &mut World, q: &str| {
        let r = reply(w.request(&api(&format!("/oauth2/auth{q}"), &s)));
        (r.status, r.reason.code())
    };
    assert_eq!(auth(&mut w, ""), (202, "authenticated"));
    assert_eq!(
        auth(&mut w, "?allowed_groups=admins,staff"),
        (202, "authenticated")
    );
    assert_eq!(
        auth(&mut w, "?allowed_groups=admins"),
        (403, "group_not_allowed")
    );
    assert_eq!(
        auth(&mut w, "?allowed_emails=bob@example.com"),
        (403, "email_not_allowed")
    );
    assert_eq!(
        auth(&mut w, "?allowed_email_domains=example.com"),
        (202, "authenticated")
    );
    let r = reply(w.request(&api(
        "/oauth2/auth?allowed_groups=staff",
        &("x".into(), "y".into()),
    )));
    assert_eq!((r.status, r.reason.code()), (401, "unauthenticated"));
    let r = reply(w.request(&api("/oauth2/auth", &s)));
    assert_eq!(header(&r, "x-auth-request-groups"), Some("staff"));
}

#[test]
fn a_session_too_large_is_a_clear_error() {
    let mut w = World::new(config_with(json!({"pass_groups": true})));
    let groups: Vec<String> = (0..300)
        .map(|i| format!("a-long-group-name-{i:04}"))
        .collect();
    let r = login_with(&mut w, json!({ "groups": groups }));
    assert_eq!((r.status, r.reason.code()), (500, "session_too_large"));
    assert!(set_cookies(&r)
        .iter()
        .all(|c| !c.starts_with("_oauth2_proxy=")));
    // Only the groups a rule names: the same user fits.
    let mut w = World::new(config_with(
        json!({"allowed_groups": ["a-long-group-name-0007"]}),
    ));
    let s = session_of(&login_with(&mut w, json!({ "groups": groups })));
    assert!(s.1.len() < 400, "{}", s.1.len());
}

#[test]
fn config_errors_name_each_field() {
    let bad = json!({
        "oidc_issuer_url": ISSUER, "client_id": CLIENT_ID, "client_secret": "x",
        "cookie_secret": SECRET_A, "idp_cluster": "idp",
        "allowed_emails": ["not-an-address"],
        "allowed_groups": [],
        "oidc_groups_claim": "a..b",
        "claim_rules": [{"claim": "x"}, {"claim": "y", "equals": ["a"], "contains": ["b"]},
                        {"claim": "", "equals": []}, {"claim": "z", "contains": "v", "extra": 1}],
        "claim_headers": {"Cookie": "x", "x-forwarded-email": "email", "x-ok": 3, "x-fine": "tenant"},
    });
    let errs =
        oidc_filter_core::config::Config::parse(bad.to_string().as_bytes(), &|_| None).unwrap_err();
    let mut got: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    got.sort();
    got.dedup();
    assert_eq!(
        got,
        [
            "allowed_emails",
            "allowed_groups",
            "claim_headers.Cookie",
            "claim_headers.x-forwarded-email",
            "claim_headers.x-ok",
            "claim_rules[0].equals",
            "claim_rules[1].equals",
            "claim_rules[2].claim",
            "claim_rules[2].equals",
            "claim_rules[3].extra",
            "oidc_groups_claim",
        ],
        "{errs:#?}"
    );
}

#[test]
fn skip_auth_routes_pass_without_a_session_and_cannot_be_bypassed() {
    let mut w = World::new(config_with(json!({
        "skip_auth_routes": ["GET=^/health$", "^/public/"],
        "skip_auth_regex": ["^/metrics$"],
    })));
    let anon = |path: &str, method: &str| {
        let mut r = get(path);
        r.headers = vec![("accept".into(), "application/json".into())];
        r.method = method.to_string().into();
        r
    };
    for (m, p) in [
        ("GET", "/health"),
        ("POST", "/public/a.css"),
        ("GET", "//public/x"),
        ("PUT", "/metrics"),
    ] {
        let req = with_header(anon(p, m), "x-forwarded-email", "forged@evil.example");
        let h = upstream(&mut w, &req);
        assert!(
            values(&h, "x-forwarded-email").is_empty(),
            "{m} {p}: no identity, none forged"
        );
    }
    for (m, p) in [
        ("POST", "/health"),
        ("GET", "/healthz"),
        ("GET", "/public/../admin"),
        ("GET", "/public/%2e%2e/admin"),
        ("GET", "/public%2F..%2Fadmin"),
        ("GET", "/public/..;/admin"),
        ("GET", "/admin?x=/public/"),
    ] {
        let r = reply(w.request(&anon(p, m)));
        assert_eq!(
            (r.status, r.reason.code()),
            (401, "unauthenticated"),
            "{m} {p}"
        );
    }
    // Our endpoints are never skipped.
    let mut w = World::new(config_with(json!({"skip_auth_routes": ["^/"]})));
    let r = reply(w.request(&anon("/oauth2/auth", "GET")));
    assert_eq!(r.reason.code(), "unauthenticated");
    // An unanchored pattern is refused, naming the field.
    let v = json!({"oidc_issuer_url": ISSUER, "client_id": CLIENT_ID, "client_secret": "x",
        "cookie_secret": SECRET_A, "idp_cluster": "idp", "skip_auth_routes": ["GET=/health"],
        "skip_auth_regex": ["^/(x"]});
    let errs =
        oidc_filter_core::config::Config::parse(v.to_string().as_bytes(), &|_| None).unwrap_err();
    let f: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(f, ["skip_auth_routes", "skip_auth_regex"], "{errs:?}");
}
