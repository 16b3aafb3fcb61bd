//! oauth2-proxy's other endpoints: `/oauth2/userinfo`, and the probes `ping_path` and
//! `ready_path`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use oidc_filter_core::flow::Decision;
use serde_json::{json, Value};

fn api(path: &str) -> oidc_filter_core::http::Request<'static> {
    let mut r = get(path);
    r.headers.retain(|(k, _)| k != "accept");
    with_header(r, "accept", "application/json")
}

#[test]
fn userinfo_is_the_sessions_identity_as_json() {
    let mut w = World::new(config_with(json!({"pass_groups": true})));
    let s = login(&mut w, "/");
    let r = reply(w.request(&with_cookies(api("/oauth2/userinfo"), &[s])));
    assert_eq!((r.status, r.reason.code()), (200, "userinfo"), "{r:?}");
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v,
        json!({"user": "user-1", "email": "alice@example.com", "preferredUsername": "alice"})
    );
    // Without a session: 401, for a browser too (it is an API).
    let r = reply(w.request(&api("/oauth2/userinfo")));
    assert_eq!(r.status, 401);
    let r = reply(w.request(&get("/oauth2/userinfo")));
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn ping_and_ready_under_the_prefix_on_any_host() {
    let mut w = World::new(config_with(json!({
        "hosts": [{"host": "app.example.com"}], "unmatched_hosts": "deny",
    })));
    let r = reply(w.request(&get("/oauth2/ping")));
    assert_eq!(
        (r.status, r.reason.code(), r.body.as_str()),
        (200, "ping", "OK\n")
    );
    let mut other = get("/oauth2/ready");
    other.authority = "elsewhere.example.org".into();
    let r = reply(w.request(&other));
    assert_eq!((r.status, r.reason.code()), (200, "ready"));
    // Not loaded yet: 503, ping still 200.
    w.ready = false;
    let r = reply(w.request(&get("/oauth2/ready")));
    assert_eq!((r.status, r.reason.code()), (503, "idp_not_ready"));
    assert!(r.detail.unwrap().contains("default"));
    assert_eq!(reply(w.request(&get("/oauth2/ping"))).status, 200);
}

#[test]
fn probe_paths_move_or_turn_off() {
    let mut w = World::new(config_with(json!({"ping_path": "/ping", "ready_path": ""})));
    assert_eq!(reply(w.request(&get("/ping"))).reason.code(), "ping");
    // Off, or moved: those paths are the upstream's like any other (here: sign in first).
    for p in ["/oauth2/ready", "/oauth2/ping"] {
        let r = reply(w.request(&get(p)));
        assert_eq!(r.status, 302, "{p}: {r:?}");
    }
    let s = login(&mut w, "/");
    assert!(matches!(
        w.request(&with_cookies(get("/ready"), &[s])),
        Decision::Continue(_)
    ));
    let errs = oidc_filter_core::config::Config::parse(
        json!({
            "oidc_issuer_url": ISSUER, "client_id": "c", "client_secret": "s",
            "cookie_secret": SECRET_A, "idp_cluster": "idp", "ping_path": "health",
        })
        .to_string()
        .as_bytes(),
        &|_| None,
    )
    .unwrap_err();
    assert!(
        errs.iter().any(|e| e.to_string().contains("ping_path")),
        "{errs:?}"
    );
}
