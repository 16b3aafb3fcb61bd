//! `oidc::Provider::from_discovery` on any discovery document.
//!
//! Input: the body of `/.well-known/openid-configuration`; the issuer expected is fixed.
//!
//! Invariants on an accepted document: its `issuer` is exactly the one configured, and the
//! three endpoints are http(s) URLs taken from the document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter_core::oidc::Provider;

const ISSUER: &str = "https://issuer.example.com";

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Provider::from_discovery(data, ISSUER) else {
        return;
    };
    assert_eq!(p.issuer, ISSUER);
    let doc: serde_json::Value = serde_json::from_slice(data).expect("accepted, so JSON");
    assert_eq!(doc.get("issuer").and_then(|v| v.as_str()), Some(ISSUER));
    for u in [&p.authorization_endpoint, &p.token_endpoint, &p.jwks_uri] {
        assert!(u.scheme() == "https" || u.scheme() == "http", "{u}");
    }
});
