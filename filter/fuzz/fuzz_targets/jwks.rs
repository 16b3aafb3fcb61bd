//! `oidc::KeySet::parse` on any JWKS document.
//!
//! Invariants: every key kept is a signing key we can use (RSA of at least `MIN_RSA_BITS`
//! bits, or P-256), `has_kid` finds every kid kept, and a document that is a JSON object
//! whose `keys` is an array of non-objects yields no key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter_core::oidc::{KeyMaterial, KeySet, MIN_RSA_BITS};

fuzz_target!(|data: &[u8]| {
    let Ok(ks) = KeySet::parse(data) else {
        return;
    };
    for k in &ks.keys {
        if let KeyMaterial::Rsa(pk) = &k.material {
            assert!(
                pk.bits() >= MIN_RSA_BITS,
                "a {}-bit RSA key kept",
                pk.bits()
            );
        }
        if let Some(kid) = &k.kid {
            assert!(ks.has_kid(kid));
        }
    }
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Some(serde_json::Value::Array(a)) = m.get("keys") {
            assert!(ks.keys.len() <= a.len());
            if a.iter().all(|k| !k.is_object()) {
                assert!(ks.keys.is_empty());
            }
        }
    }
});
