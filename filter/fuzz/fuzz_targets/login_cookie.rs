//! `LoginFlow::verify` on any login (flow) cookie value.
//!
//! Input: byte 0 picks the mode, the rest is the data.
//! - even: the rest is the cookie value as sent;
//! - odd: the rest is a flow *payload*, sealed here with key `(byte0 >> 1) % 2` exactly as
//!   `LoginFlow::encode` seals one, so the payload reader past the MAC is reached too.
//!
//! Invariants: an accepted flow is not expired, the key index returned is the key that mints
//! exactly this value (one spelling only), and a session-cookie MAC never opens a flow.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oidc_filter_core::config::{Config, KeySet};
use oidc_filter_core::session::{flow_cookie_name, LoginFlow, Scope, Session};
use oidc_filter_core::util::{b64url, b64url_decode};

const NOW: u64 = 1_800_000_000;
/// Must match `FLOW_LABEL` in filter/src/session.rs; `fixture` checks it does.
const LABEL: &[u8] = b"oidc-filter login v2\0";
const STATE: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

struct Fixture {
    cfg: Config,
    name: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let json = br#"{
            "oidc_issuer_url": "https://issuer.example.com",
            "client_id": "app", "client_secret": "x", "idp_cluster": "idp",
            "cookie_secret": ["q83vEjRWeJCrze8SNFZ4kA==", "BjsqLqI3hVQyzn3bvtp9kg=="]
        }"#;
        let cfg = Config::parse(json, &|_| None).expect("fixed config parses");
        let name =
            flow_cookie_name(&cfg.providers[0].cookie_name, STATE).expect("state is long enough");
        let f = Fixture { cfg, name };
        let flow = LoginFlow {
            expires_at: NOW + 600,
            state: STATE.into(),
            return_url: "/after?x=1".into(),
        };
        let minted = flow.encode(&f.cfg.keys[0], &f.scope()).expect("encodes");
        let p = minted.split('.').nth(1).expect("three parts");
        let payload = b64url_decode(p).expect("b64url");
        assert_eq!(
            seal(&f.cfg.keys[0], &f.scope(), &payload),
            minted,
            "fuzz sealer disagrees with LoginFlow::encode: update LABEL / seal in this target"
        );
        f
    })
}

impl Fixture {
    fn scope(&self) -> Scope<'_> {
        self.cfg.providers[0].scope(&self.name)
    }
}

/// `session.rs`'s `mac_of` + `seal` for the flow key, rebuilt from public pieces.
fn seal(key: &KeySet, scope: &Scope<'_>, payload: &[u8]) -> String {
    let nl = |s: &str| u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes();
    let mac = key.flow.mac(&[
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
    let as_session = Session::verify(&f.cfg.keys, &scope, &value, NOW, u64::MAX).is_ok();
    let Ok((flow, idx)) = LoginFlow::verify(&f.cfg.keys, &scope, &value, NOW) else {
        return;
    };
    // No value is both: the session and login MACs use other labels and keys.
    assert!(!as_session, "accepted as a session and as a login cookie");
    assert!(idx < f.cfg.keys.len());
    assert!(NOW < flow.expires_at, "expired flow accepted: {flow:?}");
    if let Some(minted) = flow.encode(&f.cfg.keys[idx], &scope) {
        assert_eq!(minted, value, "accepted a flow cookie we would not mint");
    }
    let other = f.cfg.providers[0].scope("_oauth2_proxy_csrf_BBBBBBBBBBBBBBBB");
    assert!(LoginFlow::verify(&f.cfg.keys, &other, &value, NOW).is_err());
});
