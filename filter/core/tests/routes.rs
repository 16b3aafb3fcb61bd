//! Per-route policy (`routes`): a path prefix or an anchored regex, with methods, → allow with
//! its own rules, skip, or deny. The first entry decides, before `skip_auth_routes`; matched
//! on the normalised path, so no spelling of a path reaches another entry's upstream path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use oidc_filter_core::config::Config;
use oidc_filter_core::flow::{Decision, LocalReply, TokenOutcome};
use oidc_filter_core::http::Request;
use serde_json::{json, Value};

/// A login at `path` whose ID token has `extra` claims: the callback's reply.
fn login_at(w: &mut World, path: &str, extra: Value) -> LocalReply {
    let (auth, flow) = start_login(w, path);
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

fn session(w: &mut World, path: &str, groups: &[&str]) -> (String, String) {
    let r = login_at(w, path, json!({ "groups": groups }));
    assert_eq!(
        (r.status, r.reason.code()),
        (302, "login_complete"),
        "{r:?}"
    );
    cookie_pair(set_cookies(&r)[0])
}

fn req(method: &str, path: &str, s: Option<&(String, String)>) -> Request<'static> {
    let mut r = get(path);
    r.method = method.to_string().into();
    r.headers = vec![("accept".into(), "application/json".into())];
    match s {
        Some(s) => with_cookies(r, std::slice::from_ref(s)),
        None => r,
    }
}

/// The outcome of a request as (status, reason): 200 "forwarded" when it goes upstream, with
/// whether it carries an identity.
fn outcome(w: &mut World, r: &Request<'static>) -> (u32, String) {
    match w.request(r) {
        Decision::Continue(f) => {
            let who = forwarded(&w.config, r, &f)
                .iter()
                .any(|(k, _)| k == "x-forwarded-user");
            (200, if who { "user" } else { "anonymous" }.into())
        }
        Decision::Reply(r) => (r.status, r.reason.code().into()),
        other => panic!("{other:?}"),
    }
}

fn routes_config(routes: Value, extra: Value) -> Config {
    let mut base = json!({ "routes": routes });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    config_with(base)
}

#[test]
fn deny_skip_and_allow_with_rules() {
    let mut w = World::new(routes_config(
        json!([
            {"path": "/admin", "allowed_groups": ["admins"]},
            {"regex": "^/internal/.*\\.json$", "action": "deny"},
            {"path": "/metrics", "methods": ["GET"], "action": "skip"},
            {"path": "/api/", "methods": ["delete"], "action": "deny"},
        ]),
        json!({}),
    ));
    let admin = session(&mut w, "/", &["admins"]);
    let staff = session(&mut w, "/", &["staff"]);
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a (String, String)>,
        (u32, &'a str),
    );
    let cases: &[Case] = &[
        // allow with rules: the route's group rule on top of the host's (none).
        ("GET", "/admin", Some(&admin), (200, "user")),
        ("GET", "/admin/users", Some(&admin), (200, "user")),
        (
            "GET",
            "/admin/users",
            Some(&staff),
            (403, "group_not_allowed"),
        ),
        ("GET", "/admin", None, (401, "unauthenticated")),
        // a prefix without / matches at a segment boundary only.
        ("GET", "/administrator", Some(&staff), (200, "user")),
        ("GET", "/x", Some(&staff), (200, "user")),
        // deny, for everyone, with or without a session.
        (
            "GET",
            "/internal/a/b.json",
            Some(&admin),
            (403, "route_denied"),
        ),
        ("GET", "/internal/x.json", None, (403, "route_denied")),
        ("GET", "/internal/x.html", Some(&staff), (200, "user")),
        // skip: no session needed, no identity sent; other methods are not skipped.
        ("GET", "/metrics", None, (200, "anonymous")),
        ("GET", "/metrics", Some(&admin), (200, "anonymous")),
        ("POST", "/metrics", None, (401, "unauthenticated")),
        ("GET", "/metricsx", None, (401, "unauthenticated")),
        // methods compare in any case.
        (
            "DELETE",
            "/api/orders/1",
            Some(&admin),
            (403, "route_denied"),
        ),
        ("GET", "/api/orders/1", Some(&staff), (200, "user")),
    ];
    for (m, p, s, want) in cases {
        let got = outcome(&mut w, &req(m, p, *s));
        assert_eq!((got.0, got.1.as_str()), *want, "{m} {p}");
    }
}

#[test]
fn no_spelling_of_a_path_escapes_its_route() {
    let mut w = World::new(routes_config(
        json!([
            {"path": "/admin/", "action": "deny"},
            {"regex": "^/secret$", "action": "deny", "ignore_case": true},
        ]),
        json!({"skip_auth_routes": ["^/public/"]}),
    ));
    let s = session(&mut w, "/", &[]);
    for p in [
        "/admin/",
        "//admin/x",
        "/./admin/x",
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/%61dmin/x",
        "/SECRET",
        "/Secret?x=1",
    ] {
        assert_eq!(
            outcome(&mut w, &req("GET", p, Some(&s))).1,
            "route_denied",
            "{p}"
        );
    }
    // Spellings whose meaning an upstream could read otherwise are refused outright.
    for p in [
        "/admin;x/",
        "/public/..;/admin/x",
        "/admin%2Fx",
        "/a\\admin/",
        "/..",
    ] {
        assert_eq!(
            outcome(&mut w, &req("GET", p, Some(&s))),
            (400, "path_ambiguous".into()),
            "{p}"
        );
    }
    // routes come before skip_auth_routes: a deny under a skipped prefix holds.
    let mut w = World::new(routes_config(
        json!([{"path": "/public/secret", "action": "deny"}]),
        json!({"skip_auth_routes": ["^/public/"]}),
    ));
    assert_eq!(
        outcome(&mut w, &req("GET", "/public/secret", None)).1,
        "route_denied"
    );
    assert_eq!(
        outcome(&mut w, &req("GET", "/public/a", None)).1,
        "anonymous"
    );
    // Case matters unless ignore_case: /ADMIN/ is another path (and protected as the host).
    let mut w = World::new(routes_config(
        json!([{"path": "/admin/", "action": "skip"}]),
        json!({}),
    ));
    assert_eq!(
        outcome(&mut w, &req("GET", "/ADMIN/x", None)).1,
        "unauthenticated"
    );
    // A host with skip entries only: an ambiguous path is simply not skipped.
    assert_eq!(
        outcome(&mut w, &req("GET", "/admin;x/", None)).1,
        "unauthenticated"
    );
}

#[test]
fn a_route_wider_than_its_host_lets_its_users_sign_in() {
    let mut w = World::new(routes_config(
        json!([{"path": "/status", "allowed_groups": []},
               {"path": "/ops/", "allowed_groups": ["ops"]}]),
        json!({"allowed_groups": ["admins"]}),
    ));
    // bob (staff) is refused by the host but signs in for /status.
    let bob = session(&mut w, "/status", &["staff"]);
    assert_eq!(
        outcome(&mut w, &req("GET", "/status", Some(&bob))).1,
        "user"
    );
    assert_eq!(
        outcome(&mut w, &req("GET", "/", Some(&bob))).1,
        "group_not_allowed"
    );
    // Starting anywhere else, the host's rule refuses him at the callback.
    let r = login_at(&mut w, "/", json!({"groups": ["staff"]}));
    assert_eq!((r.status, r.reason.code()), (403, "group_not_allowed"));
    // A group only a route names is carried by the session.
    let ops = session(&mut w, "/", &["admins", "ops", "unrelated"]);
    assert_eq!(outcome(&mut w, &req("GET", "/ops/x", Some(&ops))).1, "user");
    let admin = session(&mut w, "/", &["admins"]);
    assert_eq!(
        outcome(&mut w, &req("GET", "/ops/x", Some(&admin))).1,
        "group_not_allowed"
    );
}

#[test]
fn routes_per_host() {
    let mut w = World::new(config_with(json!({"hosts": [
        {"host": "app.example.com", "routes": [{"path": "/x", "action": "deny"}]},
        {"host": "other.example.com"},
    ]})));
    let s = session(&mut w, "/", &[]);
    assert_eq!(
        outcome(&mut w, &req("GET", "/x", Some(&s))).1,
        "route_denied"
    );
    let mut r = req("GET", "/x", None);
    r.authority = "other.example.com".into();
    assert_eq!(outcome(&mut w, &r).1, "unauthenticated");
}

#[test]
fn route_config_errors_name_each_field() {
    let errs = |routes: Value| -> Vec<String> {
        let v = json!({"oidc_issuer_url": ISSUER, "client_id": "c", "client_secret": "s",
            "cookie_secret": SECRET_A, "idp_cluster": "idp", "routes": routes});
        Config::parse(v.to_string().as_bytes(), &|_| None)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    };
    let e = errs(json!([
        {"regex": "/admin", "action": "deny"},
        {"path": "/a", "regex": "^/a"},
        {"path": "/a", "action": "block"},
        {"path": "/a", "action": "deny", "allowed_groups": ["x"]},
        {"path": "/a", "colour": "red"},
        {"path": "/a//b"},
        {"path": "/a", "routes": []},
        {"regex": "^/(unclosed"},
        {"path": "/a", "methods": ["GET", "no such"]},
        "not an object",
    ]));
    for want in [
        "routes[0].regex: must start with ^",
        "routes[1].path: exactly one of path and regex",
        "routes[2].action: must be allow, skip or deny",
        "routes[3].allowed_groups: has no effect with \"action\": \"deny\"",
        "routes[4].colour: unknown option in a route",
        "routes[5].path: must be a normalised path prefix",
        "routes[6].routes: unknown option in a route",
        "routes[7].regex: ",
        "routes[8].methods: must list HTTP methods",
        "routes[9]: must be an object",
    ] {
        assert!(
            e.iter().any(|x| x.contains(want)),
            "missing {want:?} in {e:#?}"
        );
    }
    assert!(errs(json!([{"path": "/ok/"}])).is_empty());
}
