//! `Session::verify` on any cookie value.
//!
//! Input: byte 0 picks the mode, the rest is the data.
//! - even: the rest is the cookie value as the browser sends it (mostly refused before or at
//!   the MAC: parsing, base64url, the version, the MAC check);
//! - odd: the rest is a session *payload*, sealed here with the configured key exactly as
//!   `Session::encode` seals one, so that the payload reader past the MAC is reached too.
//!
//! Invariants: a cookie accepted is one we would mint byte for byte (no second spelling of a
//! session passes: padding, trailing bits, a MAC from the other cookie kind, another name or
//! deployment), it is within both lifetimes, and encoding it again verifies to the same session.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oidc_filter_core::config::{Config, KeySet};
use oidc_filter_core::session::{Scope, Session};
use oidc_filter_core::util::b64url;

const NOW: u64 = 1_800_000_000;
const MAX_AGE: u64 = 7 * 86_400;
const NAME: &str = "_oauth2_proxy";
/// Must match `SESSION_LABEL` in filter/src/session.rs; `fixture` checks it does.
const LABEL: &[u8] = b"oidc-filter session v2\0";

struct Fixture {
    cfg: Config,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Two secrets: the first signs, both verify (rotation).
        let json = br#"{
            "oidc_issuer_url": "https://issuer.example.com",
            "client_id": "app", "client_secret": "x", "idp_cluster": "idp",
            "cookie_secret": ["q83vEjRWeJCrze8SNFZ4kA==", "BjsqLqI3hVQyzn3bvtp9kg=="]
        }"#;
        let cfg = Config::parse(json, &|_| None).expect("fixed config parses");
        let f = Fixture { cfg };
        // The sealer below must be the filter's: else the odd mode tests nothing.
        let s = Session {
            expires_at: NOW + 3600,
            issued_at: NOW - 60,
            claims: ["u1".into(), "alice@example.com".into(), "alice".into()],
            groups: vec![],
            attrs: vec![],
            tokens: None,
        };
        let minted = s.encode(&f.cfg.keys[0], &f.scope()).expect("encodes");
        let (_, p, _) = split3(&minted).expect("three parts");
        let payload = oidc_filter_core::util::b64url_decode(p).expect("b64url");
        assert_eq!(
            seal(&f.cfg.keys[0], &f.scope(), &payload),
            minted,
            "fuzz sealer disagrees with Session::encode: update LABEL / seal in this target"
        );
        f
    })
}

impl Fixture {
    fn scope(&self) -> Scope<'_> {
        self.cfg.providers[0].scope(NAME)
    }
}

fn split3(v: &str) -> Option<(&str, &str, &str)> {
    let mut it = v.split('.');
    Some((it.next()?, it.next()?, it.next()?))
}

/// `session.rs`'s `mac_of` + `seal`, rebuilt from public pieces.
fn seal(key: &KeySet, scope: &Scope<'_>, payload: &[u8]) -> String {
    let nl = |s: &str| u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes();
    let mac = key.session.mac(&[
        LABEL,
        &nl(scope.name),
        scope.name.as_bytes(),
        &nl(scope.binding),
        scope.binding.as_bytes(),
        payload,
    ]);
    format!("2.{}.{}", b64url(payload), b64url(&mac))
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let value = if mode & 1 == 1 {
        seal(&f.cfg.keys[(mode as usize >> 1) % 2], &f.scope(), rest)
    } else {
        match std::str::from_utf8(rest) {
            Ok(s) => s.to_string(),
            Err(_) => return,
        }
    };
    let scope = f.scope();
    let Ok(s) = Session::verify(&f.cfg.keys, &scope, &value, NOW, MAX_AGE) else {
        return;
    };
    assert!(NOW < s.expires_at, "expired session accepted: {s:?}");
    assert!(
        NOW < s.issued_at.saturating_add(MAX_AGE),
        "session older than max_age accepted: {s:?}"
    );
    // Exactly one spelling: the value is what one of our keys mints for this session.
    let minted: Vec<Option<String>> = f.cfg.keys.iter().map(|k| s.encode(k, &scope)).collect();
    if minted.iter().all(Option::is_some) {
        assert!(
            minted.iter().any(|m| m.as_deref() == Some(value.as_str())),
            "accepted a cookie we would not mint: {value:?} for {s:?}"
        );
        let again = minted[0].as_deref().unwrap_or_default();
        assert_eq!(
            Session::verify(&f.cfg.keys, &scope, again, NOW, MAX_AGE).as_ref(),
            Ok(&s)
        );
    }
    // Bound to its name: the same value under another cookie name never verifies.
    let other = f.cfg.providers[0].scope("_other");
    assert!(Session::verify(&f.cfg.keys, &other, &value, NOW, MAX_AGE).is_err());
});
