//! Which cluster and authority each callout uses, and what happens when Envoy refuses one.
mod common;

use std::time::Duration;

use common::*;
use host_tests::Host;
use serde_json::json;

fn discovery_with(jwks_uri: &str, token_endpoint: &str) -> String {
    let mut d: serde_json::Value = serde_json::from_str(&discovery()).unwrap();
    d["jwks_uri"] = json!(jwks_uri);
    d["token_endpoint"] = json!(token_endpoint);
    d.to_string()
}

#[test]
fn endpoints_on_other_hosts_use_idp_clusters() {
    let cfg = config(
        json!({"idp_clusters": {"keys.example.net": "keys", "login.example.net:8443": "login"}}),
    );
    let mut host = Host::builder()
        .clusters(&["idp", "keys", "login"])
        .start(&cfg)
        .expect("starts");
    let d = only_callout(&host, "/.well-known/openid-configuration");
    host.respond(
        d.token,
        200,
        &[],
        discovery_with(
            "https://keys.example.net/k.json?v=2",
            "https://login.example.net:8443/oauth/token",
        ),
    );
    let j = &host.pending_callouts()[0];
    assert_eq!(
        (j.cluster.as_str(), j.authority(), j.path()),
        ("keys", "keys.example.net", "/k.json?v=2")
    );
    host.respond(j.token, 200, &[], jwks(&[key(0)]));
    let login = begin_login(&mut host, browser("/app"));
    let c = callback_paused(&mut host, &login, "c");
    assert_eq!(
        (c[0].cluster.as_str(), c[0].authority(), c[0].path()),
        ("login", "login.example.net:8443", "/oauth/token")
    );
}

#[test]
fn jwks_on_an_unmapped_host_is_reported_and_never_ready() {
    let mut host = builder().start(&config(json!({}))).expect("starts");
    let d = only_callout(&host, "/.well-known/openid-configuration");
    host.respond(
        d.token,
        200,
        &[],
        discovery_with("https://keys.example.net/jwks", &format!("{ISSUER}/token")),
    );
    host.advance(Duration::from_secs(5));
    let pending = host.pending_callouts();
    assert!(
        pending.iter().all(|c| c.authority() != "keys.example.net"),
        "{pending:#?}"
    );
    let o = host.request(browser("/"));
    assert_eq!(o.status(), Some(503), "{o:#?}");
    assert!(
        host.log_text().contains("keys.example.net") || host.log_text().contains("idp_clusters"),
        "the log tells the operator what is missing:\n{}",
        host.log_text()
    );
}

#[test]
fn envoy_refusing_the_discovery_callout_is_survived() {
    // Envoy answers BadArgument for a cluster it does not have.
    let mut host = Host::builder()
        .clusters(&["some-other-cluster"])
        .start(&config(json!({})))
        .expect("starts");
    assert!(host.pending_callouts().is_empty());
    assert!(host.log_text().contains("idp"), "{}", host.log_text());
    host.advance(Duration::from_secs(120));
    assert_eq!(host.request(browser("/")).status(), Some(503));
    assert_eq!(
        host.request(browser("/oauth2/callback?code=a&state=b"))
            .status(),
        Some(403)
    );
}

#[test]
fn envoy_refusing_the_token_callout_is_a_502() {
    let cfg = config(json!({"idp_clusters": {"login.example.net": "missing"}}));
    let mut host = builder().start(&cfg).expect("starts");
    let d = only_callout(&host, "/.well-known/openid-configuration");
    host.respond(
        d.token,
        200,
        &[],
        discovery_with(&format!("{ISSUER}/jwks"), "https://login.example.net/token"),
    );
    let j = only_callout(&host, "/jwks");
    host.respond(j.token, 200, &[], jwks(&[key(0)]));
    let login = begin_login(&mut host, browser("/app"));
    assert_reply(
        host.request(callback_request(&login, "c")),
        502,
        "token_request_failed",
    );
}

#[test]
fn empty_or_unusable_jwks_is_not_ready() {
    let mut host = builder().start(&config(json!({}))).expect("starts");
    let d = only_callout(&host, "/.well-known/openid-configuration");
    host.respond(d.token, 200, &[], discovery());
    let j = only_callout(&host, "/jwks");
    host.respond(j.token, 200, &[], r#"{"keys":[]}"#);
    assert_eq!(host.request(browser("/")).status(), Some(503));
    host.advance(Duration::from_secs(3));
    let j = only_callout(&host, "/jwks");
    host.respond(
        j.token,
        200,
        &[],
        r#"{"keys":[{"kty":"oct","k":"AAAA"},{"kty":"RSA","n":"x"}]}"#,
    );
    assert_eq!(host.request(browser("/")).status(), Some(503));
    host.advance(Duration::from_secs(5));
    let j = only_callout(&host, "/jwks");
    host.respond(j.token, 200, &[], jwks(&[key(0)]));
    assert_eq!(host.request(browser("/")).status(), Some(302));
}
